# Everything the project needs installs from its own files: `make test` on a fresh clone works.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := dev,local,otlp

# The OpenTelemetry JS SDK, for the bridge's non-Python sender test (pinned in tests/node).
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: docs docs-serve bench-instructions node-otel install test test-oldest test-py310 test-py313 lint typecheck pytest demo bench soak clean browser mutation

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check opentelemetry_exporter_altertable tests examples benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy --strict opentelemetry_exporter_altertable

# The page's test drives a real headless Chromium: Debian's package, installed when missing
# (as root, which CI is; elsewhere run the apt-get line with sudo once).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# The bridge's non-Python sender: the OpenTelemetry JS SDK at the versions tests/node pins.
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node-otel: $(NODE_STAMP)

pytest: $(STAMP) browser node-otel
	$(PY) -m pytest -q

test: lint typecheck pytest

# The oldest and newest supported Pythons (pyenv's builds on these machines, else PATH). Their
# suites leave out the tests marked `once` (real servers under attack, outage or every process
# model, which depend on neither the Python nor the SDK version): `make test` runs those.
PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)
PYTHON313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3.13)

# The same suite against the oldest supported opentelemetry-sdk on the oldest supported Python
# (the oldest of both together, as users pinned to old releases run them), in a venv of its own.
OLD_VENV := .venv-oldest-sdk
OLD_STAMP := $(OLD_VENV)/.installed
$(OLD_STAMP): pyproject.toml .ci/constraints-oldest-sdk.txt
	test -x $(OLD_VENV)/bin/python || $(PYTHON310) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT= $(OLD_VENV)/bin/python -m pip install --quiet -c .ci/constraints-oldest-sdk.txt -e '.[$(EXTRAS)]'
	touch $(OLD_STAMP)

test-oldest: $(OLD_STAMP) browser node-otel
	$(OLD_VENV)/bin/python -m mypy --strict opentelemetry_exporter_altertable
	$(OLD_VENV)/bin/python -m pytest -q -p no:cacheprovider -m 'not once'

define python_suite
.venv-py$(1)/.installed: pyproject.toml
	test -x .venv-py$(1)/bin/python || $$(PYTHON$(1)) -m venv .venv-py$(1)
	.venv-py$(1)/bin/python -m pip install --quiet --upgrade pip
	.venv-py$(1)/bin/python -m pip install --quiet -e '.[$$(EXTRAS)]'
	touch $$@

test-py$(1): .venv-py$(1)/.installed browser node-otel
	.venv-py$(1)/bin/python -m mypy --strict opentelemetry_exporter_altertable
	.venv-py$(1)/bin/python -m pytest -q -p no:cacheprovider -m 'not once'
endef
$(eval $(call python_suite,310))
$(eval $(call python_suite,313))

# The documentation site (mkdocs.yml, pages in docs/) into site/, warnings as errors: a dead
# link, a missing anchor, a page left out of the nav or a docstring mkdocstrings cannot read
# fails the build. Every code block in docs/ is run by tests/test_docs.py (part of `make test`).
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS),docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

demo: $(STAMP)
	$(PY) examples/demo.py $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_export.py

# The same ratios in instructions counted by callgrind, which load on the machine cannot move
# (Debian's valgrind, installed when missing, as for the browser). About 2-3 minutes.
bench-instructions: $(STAMP)
	@command -v valgrind >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
	$(PY) benchmarks/instructions.py

# Mutation testing of delivery, retry, spool and mapping ([tool.mutmut] in pyproject.toml):
# not part of `make test` (2,533 mutants: over an hour on 2 cores). MUTMUT_ARGS picks the
# mutants, e.g. `make mutation MUTMUT_ARGS='opentelemetry_exporter_altertable._retry*'`.
MUTMUT_ARGS ?=
mutation: $(STAMP)
	$(VENV)/bin/mutmut run --max-children 2 $(MUTMUT_ARGS)
	$(VENV)/bin/mutmut export-cicd-stats
	@cat mutants/mutmut-cicd-stats.json; echo

soak: $(STAMP)
	$(PY) benchmarks/soak.py --events 1000000

clean:
	rm -rf site mutants tests/node/node_modules $(VENV) $(OLD_VENV) .venv-py310 .venv-py313 .mypy_cache .ruff_cache .pytest_cache artifacts altertable-local.duckdb*
