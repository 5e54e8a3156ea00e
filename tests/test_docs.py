"""Every code block of the documentation runs here, so no page can drift from the code.

The pages are ``docs/*.md``, ``README.md``, ``CONTRIBUTING.md`` and ``examples/README.md``.
Each fenced block is handled by its language, and a language with no rule fails the test (add
one):

- ``python``: executed. A page's blocks run in order in one namespace (as a reader pastes
  them), in a fresh interpreter whose only settings are ``OTEL_EXPORTER_ALTERTABLE_ENDPOINT``
  and ``OTEL_EXPORTER_ALTERTABLE_API_KEY`` pointing at a :class:`LocalReceiver` started here, in
  a scratch directory. A ``text`` block right after a python block is that block's output and
  must match what it printed, and the package must log no error (unless the page shows one on
  purpose: then it must). A python block that only includes a file section
  (``--8<-- "examples/x.py:name"``) shows an example that ``tests/test_examples.py`` runs: the
  file and the section must exist.
- ``bash`` (or ``sh``): validated, and executed where that is safe. Every command is split as
  the shell would (continuations joined, comments dropped) and checked against the project:
  ``altertable-otel`` command lines are parsed by the real argument parser (and run when they
  only ask for ``--help`` or ``--version``), ``make`` targets exist in the Makefile,
  ``pip install`` extras exist in ``pyproject.toml``, files named exist, and every
  ``OTEL_EXPORTER_ALTERTABLE_*`` variable set is one the package reads.
- ``yaml``: parsed; a Collector configuration's pipelines name only components it defines,
  and its exporters point at the bridge's default port.
- ``text``: output or a file listing shown to the reader (compared when it follows python).

Besides the blocks: every exporter argument, environment variable, CLI flag and ``stats()``
counter is named in the docs, the defaults the settings page spells out are the code's, every
repository path a page names exists, and the README stays one screen with ``make demo`` and
``make test`` as its set-up commands.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import metadata
from pathlib import Path

import pytest
import yaml

from opentelemetry_exporter_altertable import (
    AltertableLogExporter,
    AltertableSpanExporter,
    RetryPolicy,
    environment_variables,
)
from opentelemetry_exporter_altertable.cli import build_parser
from opentelemetry_exporter_altertable.receiver import LocalReceiver

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(
    [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "examples/README.md"]
)
API_KEY = "pk_test_docs"
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$')
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)([^`]*)$")
#: Environment variables the docs may set besides the package's own: the SDK's and the
#: instrumentations' (any ``OTEL_`` name outside the package's prefix), and these.
OTHER_VARIABLES = {
    "ALTERTABLE_BRIDGE_TOKEN",
    "ALTERTABLE_LAKEHOUSE_USERNAME",
    "ALTERTABLE_LAKEHOUSE_PASSWORD",
    "REQUESTS_CA_BUNDLE",
    "HTTPS_PROXY",
    "NO_PROXY",
    "MUTMUT_ARGS",
    "DEMO_ARGS",
    "ALTERTABLE_RECEIVER_API_KEYS",
}
#: Commands a bash block may run besides those checked in detail below.
PLAIN_COMMANDS = {"curl", "cd", "git", "export", "opentelemetry-instrument", "gunicorn", "uvicorn"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the first line of code, 1-based
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, in order (indented fences included)."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent, fence, language = match.group(1), match.group(2), match.group(3)
        start = index + 1
        end = start
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line.removeprefix(indent) for line in lines[start:end]]
        language = {"sh": "bash", "shell": "bash"}.get(language, language)
        found.append(Block(page, start + 1, language, "\n".join(body) + "\n"))
        index = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES if page.exists() for block in blocks(page)]
KNOWN = {"python", "bash", "yaml", "text"}


def test_every_block_has_a_known_language() -> None:
    unknown = [f"{b.where} ```{b.language}" for b in ALL_BLOCKS if b.language not in KNOWN]
    assert not unknown, f"a block with no rule in tests/test_docs.py: {unknown}"


# -- python ----------------------------------------------------------------------------------

# Runs a page's blocks in one namespace, each with its own captured output; prints the outputs
# and the package's ERROR log lines as JSON on the last line. Line numbers in a traceback are
# the page's own.
DRIVER = r"""
import contextlib, io, json, logging, sys, traceback
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
outputs = []
errors = []
class Errors(logging.Handler):
    def emit(self, record):
        errors.append(record.getMessage()[:300])
logging.getLogger("opentelemetry_exporter_altertable").addHandler(Errors(logging.ERROR))
for block in blocks:
    code = compile("\n" * (block["line"] - 1) + block["code"], block["page"], "exec")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
    except BaseException:
        sys.stderr.write(out.getvalue())
        traceback.print_exc()
        sys.exit(1)
    outputs.append(out.getvalue())
print(json.dumps({"outputs": outputs, "errors": errors}))
"""
#: Pages whose examples show an error on purpose (the exporter logs it at ERROR).
SHOWS_ERRORS = {"troubleshooting.md"}


def python_pages() -> list[Path]:
    return sorted({b.page for b in ALL_BLOCKS if b.language == "python"})


@pytest.fixture(scope="module")
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as running:
        yield running


def expected_outputs(page: Path) -> dict[int, str]:
    """The ``text`` block right after a python block, by that python block's line."""
    expected: dict[int, str] = {}
    page_blocks = blocks(page)
    text = page.read_text(encoding="utf-8").splitlines()
    for first, second in itertools.pairwise(page_blocks):
        if first.language != "python" or second.language != "text":
            continue
        between = text[first.line + first.code.count("\n") : second.line - 2]
        if all(not line.strip() for line in between):
            expected[first.line] = second.code
    return expected


@pytest.mark.parametrize("page", python_pages(), ids=lambda p: p.name)
def test_python_blocks_run(page: Path, receiver: LocalReceiver, tmp_path: Path) -> None:
    runnable: list[dict[str, object]] = []
    for block in blocks(page):
        if block.language != "python":
            continue
        include = SNIPPET.match(block.code.strip())
        if include is not None:
            check_include(block, include)
            continue
        runnable.append({"page": str(block.page), "line": block.line, "code": block.code})
    if not runnable:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ALTERTABLE_"))}
    env.update(
        OTEL_EXPORTER_ALTERTABLE_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_ALTERTABLE_API_KEY=API_KEY,
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(runnable),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{page.name}: a block failed\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outputs = result["outputs"]
    if page.name not in SHOWS_ERRORS:
        assert not result["errors"], f"{page.name}: the exporter logged {result['errors']}"
    else:
        assert result["errors"], f"{page.name} shows an error that no longer happens"
    printed = {int(str(block["line"])): out for block, out in zip(runnable, outputs, strict=True)}
    for line, text in expected_outputs(page).items():
        assert printed[line].strip() == text.strip(), f"{page.name}:{line}: output differs"


def check_include(block: Block, include: re.Match[str]) -> None:
    path, section = ROOT / include.group(1), include.group(2)
    assert path.is_file(), f"{block.where}: includes a missing file {path}"
    assert path.parent.name == "examples", f"{block.where}: include only tested examples"
    if section:
        source = path.read_text(encoding="utf-8")
        assert f"--8<-- [start:{section}]" in source, f"{block.where}: no section {section}"
        assert f"--8<-- [end:{section}]" in source, f"{block.where}: section {section} unended"


def test_an_output_block_is_compared(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1)\n```\n\n```text\n1\n```\n\n```text\nfree\n```\n")
    assert expected_outputs(page) == {2: "1\n"}


# -- bash ------------------------------------------------------------------------------------


def commands(code: str) -> Iterator[list[str]]:
    """Each command of a bash block as the shell would split it (``&&``, ``;``, ``|`` too)."""
    joined = re.sub(r"\\\n", " ", code)
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words:
            if word in {"&&", "||", ";", "|"}:
                if current:
                    yield current
                current = []
            else:
                current.append(word)
        if current:
            yield current


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, re.MULTILINE)) | {"test-py310", "test-py313"}


def package_variables() -> set[str]:
    return {name for name in vars(environment_variables) if name.isupper()}


def check_variable(name: str, where: str) -> None:
    if name.startswith("OTEL_EXPORTER_ALTERTABLE_") or name == "ALTERTABLE_API_KEY":
        assert name in package_variables(), f"{where}: the package reads no {name}"
    else:
        assert name.startswith("OTEL_") or name in OTHER_VARIABLES, f"{where}: unknown {name}"


def check_altertable_otel(arguments: list[str], where: str) -> None:
    parser = build_parser()
    # A secret given as @FILE names a file on the reader's machine: parse it against a stand-in.
    if any(a.startswith("@") and not a.startswith("@@") for a in arguments):
        stand_in = Path(tempfile.mkdtemp()) / "secret"
        stand_in.write_text("a-secret\n", encoding="utf-8")
        arguments = [
            f"@{stand_in}" if a.startswith("@") and not a.startswith("@@") else a
            for a in arguments
        ]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(arguments)
        except SystemExit as exc:
            assert exc.code == 0, f"{where}: altertable-otel {arguments}: {stderr.getvalue()}"
    if arguments and arguments[-1] in {"--help", "--version"}:
        done = subprocess.run(
            [sys.executable, "-m", "opentelemetry_exporter_altertable.cli", *arguments],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{where}: {done.stderr}"


def check_pip(arguments: list[str], where: str) -> None:
    assert arguments[:1] == ["install"], f"{where}: pip {arguments}"
    extras = set(metadata("opentelemetry-exporter-altertable").get_all("Provides-Extra") or ())
    for requirement in arguments[1:]:
        if requirement.startswith("-"):
            continue
        name, _, wanted = requirement.partition("[")
        if name in {"opentelemetry-exporter-altertable", ".", "-e ."}:
            for extra in wanted.rstrip("]").split(","):
                if extra:
                    assert extra in extras, f"{where}: no extra [{extra}]"


def check_make(arguments: list[str], where: str) -> None:
    for argument in arguments:
        if "=" in argument:
            check_variable(argument.split("=", 1)[0], where)
        else:
            assert argument in makefile_targets(), f"{where}: no make target {argument}"


def check_python(arguments: list[str], where: str) -> None:
    if arguments[:2] == ["-m", "pip"]:
        check_pip(arguments[2:], where)
        return
    script = next((a for a in arguments if not a.startswith("-")), None)
    assert script is not None, f"{where}: python with no script"
    if "/" in script:
        assert (ROOT / script).is_file(), f"{where}: no file {script}"


def check_command(words: list[str], where: str) -> None:
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        check_variable(words[0].split("=", 1)[0], where)
        words = words[1:]
    if not words:
        return
    command, arguments = words[0], words[1:]
    if command == "export":
        for assignment in arguments:
            check_variable(assignment.split("=", 1)[0], where)
    elif command == "altertable-otel":
        check_altertable_otel(arguments, where)
    elif command == "make":
        check_make(arguments, where)
    elif command == "pip":
        check_pip(arguments, where)
    elif command in {"python", "python3", ".venv/bin/python"}:
        check_python(arguments, where)
    elif command == "opentelemetry-instrument":
        check_command(arguments, where)
    else:
        assert command in PLAIN_COMMANDS, f"{where}: no rule for `{command}` in tests/test_docs.py"


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.language == "bash"], ids=lambda b: b.where
)
def test_bash_blocks_name_what_exists(block: Block) -> None:
    found = list(commands(block.code))
    assert found, f"{block.where}: an empty bash block"
    for words in found:
        check_command(words, block.where)


def test_a_wrong_command_line_is_caught() -> None:
    with pytest.raises(AssertionError):
        check_command(["altertable-otel", "serve", "--no-such-flag"], "here")
    with pytest.raises(AssertionError):
        check_command(["make", "no-such-target"], "here")
    with pytest.raises(AssertionError):
        check_command(["OTEL_EXPORTER_ALTERTABLE_NO_SUCH=1", "python", "app.py"], "here")
    with pytest.raises(AssertionError):
        check_command(["pip", "install", "opentelemetry-exporter-altertable[nope]"], "here")


# -- yaml ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.language == "yaml"], ids=lambda b: b.where
)
def test_yaml_blocks_are_valid(block: Block) -> None:
    config = yaml.safe_load(block.code)
    assert isinstance(config, dict), block.where
    if "service" not in config:
        return
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config.get(kind, {}) or (
                    kind == "receivers" and component == "otlp"
                ), f"{block.where}: pipeline {name} uses undefined {component}"
    bridge = build_parser().parse_args(["bridge"])
    for name, exporter in config.get("exporters", {}).items():
        if name.startswith("otlphttp"):
            assert exporter["endpoint"].endswith(f":{bridge.port}"), block.where


# -- what the docs must name -----------------------------------------------------------------


def docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in sorted(DOCS.glob("*.md")))


def test_every_exporter_argument_is_documented() -> None:
    settings = (DOCS / "settings.md").read_text(encoding="utf-8")
    for exporter in (AltertableSpanExporter, AltertableLogExporter):
        for name in inspect.signature(exporter.__init__).parameters:
            if name != "self":
                assert f"`{name}`" in settings, f"settings.md does not name `{name}`"


def test_the_documented_defaults_are_the_code_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each default the settings table spells out (in backticks) is the one an exporter gets."""
    for name in package_variables():
        monkeypatch.delenv(name, raising=False)
    config = AltertableSpanExporter(api_key=API_KEY).config
    settings = (DOCS / "settings.md").read_text(encoding="utf-8")
    checked = []
    for row in re.findall(r"^\| `(\w+)` \|[^|]*\| `([^`]+)`", settings, re.MULTILINE):
        name, documented = row
        actual = getattr(config, name)
        if isinstance(actual, bool):
            assert documented == str(actual).lower(), name
        elif isinstance(actual, int | float):
            assert float(documented) == actual, name
        elif isinstance(actual, tuple):
            assert documented == ",".join(actual), name
        elif isinstance(actual, RetryPolicy):
            assert eval(documented, {"RetryPolicy": RetryPolicy}) == actual, name
        else:
            assert documented == actual, name
        checked.append(name)
    assert {"endpoint", "timeout", "max_batch_size", "retry"} <= set(checked), checked


def test_every_environment_variable_is_documented() -> None:
    settings = (DOCS / "settings.md").read_text(encoding="utf-8")
    for name in package_variables():
        assert f"`{name}`" in settings, f"settings.md does not name `{name}`"


def cli_flags() -> Iterator[tuple[str, str]]:
    for command, sub in subcommand_parsers().items():
        for option in sub._actions:
            for flag in option.option_strings:
                if flag not in {"-h", "--help"}:
                    yield command, flag


def test_every_cli_flag_is_documented() -> None:
    text = docs_text()
    missing = [f"{command} {flag}" for command, flag in cli_flags() if f"`{flag}" not in text]
    assert not missing, f"flags no page names: {missing}"


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("altertable-otel has no subcommands")


def documented_value(text: str) -> object:
    number = re.fullmatch(r"(\d+(?:\.\d+)?)(?: (MiB))?", text)
    if number is None:
        return text.removeprefix("./")
    value = float(number.group(1))
    return value * 1024 * 1024 if number.group(2) else value


def test_the_documented_command_defaults_are_the_parser_s() -> None:
    """Each ``--flag`` (default X) in the settings page's command table is the parser's."""
    settings = (DOCS / "settings.md").read_text(encoding="utf-8")
    parsers = subcommand_parsers()
    checked = []
    for command, row in re.findall(r"^\| `(\w+)`[^|]*\|(.*)\|$", settings, re.MULTILINE):
        if command not in parsers:
            continue  # the exporter settings' table
        defaults = {
            action.option_strings[0]: action.default
            for action in parsers[command]._actions
            if action.option_strings
        }
        pattern = r"`(--[\w-]+)` \((?:seconds, )?default `?([^;),`]+)"
        for flag, documented in re.findall(pattern, row):
            actual = defaults[flag]
            expected = documented_value(documented)
            assert (float(actual) if isinstance(expected, float) else actual) == expected, flag
            checked.append(f"{command} {flag}")
    assert {"serve --port", "bridge --port", "query --endpoint"} <= set(checked), checked


def test_every_counter_is_documented(receiver: LocalReceiver, tmp_path: Path) -> None:
    counters = (DOCS / "counters.md").read_text(encoding="utf-8")
    exporter = AltertableSpanExporter(
        api_key=API_KEY, endpoint=receiver.endpoint, spool_dir=tmp_path / "spool"
    )
    try:
        keys = exporter.stats().keys()
    finally:
        exporter.shutdown()
    for key in keys:
        assert f"`{key}`" in counters, f"counters.md does not name `{key}`"


PATH = re.compile(
    r"`((?:examples|tests|benchmarks|docs|opentelemetry_exporter_altertable)/[\w./-]+)`"
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page: Path) -> None:
    if not page.exists():
        pytest.fail(f"{page.name} is missing")
    text = page.read_text(encoding="utf-8")
    missing = [path for path in PATH.findall(text) if not (ROOT / path).exists()]
    links = re.findall(r"\]\((?!https?:|#|mailto:)([^)#\s]+)", text)
    missing += [link for link in links if not (page.parent / link).exists()]
    assert not missing, f"{page.name} names what the repository does not have: {missing}"


def test_the_readme_is_one_screen() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 60
    assert "make demo" in readme
    assert "make test" in readme
