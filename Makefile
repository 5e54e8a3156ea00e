# Everything the project needs installs from its own files: `make test` on a fresh clone works.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-oldest lint typecheck pytest demo bench soak clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,local]'
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

pytest: $(STAMP) browser
	$(PY) -m pytest -q

test: lint typecheck pytest

# The same suite against the oldest supported opentelemetry-sdk, in a venv of its own.
OLD_VENV := .venv-oldest-sdk
OLD_STAMP := $(OLD_VENV)/.installed
$(OLD_STAMP): pyproject.toml ci/constraints-oldest-sdk.txt
	test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT= $(OLD_VENV)/bin/python -m pip install --quiet -c ci/constraints-oldest-sdk.txt -e '.[dev,local]'
	touch $(OLD_STAMP)

test-oldest: $(OLD_STAMP) browser
	$(OLD_VENV)/bin/python -m mypy --strict opentelemetry_exporter_altertable
	$(OLD_VENV)/bin/python -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(PY) examples/demo.py $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_export.py

soak: $(STAMP)
	$(PY) benchmarks/soak.py --events 1000000

clean:
	rm -rf $(VENV) $(OLD_VENV) .mypy_cache .ruff_cache .pytest_cache artifacts altertable-local.duckdb*
