"""``altertable-otel serve`` in a real subprocess, and ``query`` against it or its file."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from guide import GUIDE_EVENTS_BY_CURRENCY
from support import free_port

from opentelemetry_exporter_altertable.cli import PROG, main
from opentelemetry_exporter_altertable.receiver._cli import (
    DEFAULT_ENDPOINT,
    _print_table,
    _query_hint,
)


@dataclass
class Served:
    process: subprocess.Popen[str]
    endpoint: str
    db: Path
    stderr_path: Path

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM, then wait: returns (exit status, rest of stdout, all of stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
            raise
        return self.process.returncode, out, self.stderr_path.read_text()


def _first_line(process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError("the receiver printed nothing")
    return process.stdout.readline()


def start_serve(tmp_path: Path, *extra: str) -> Served:
    db = tmp_path / "served.duckdb"
    stderr_path = tmp_path / "serve.stderr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "opentelemetry_exporter_altertable.cli", "serve"]
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [*command, "--port", "0", "--db", str(db), "--no-otlp-ports", *extra],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    line = _first_line(process)
    if "listening on " not in line:
        process.kill()
        process.communicate()
        raise AssertionError(f"unexpected first line {line!r}: {stderr_path.read_text()}")
    return Served(process, line.rsplit(" ", 1)[1].strip(), db, stderr_path)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = start_serve(tmp_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.stop()


def send_purchases(endpoint: str, key: str = "local") -> None:
    events = [
        {
            "environment": "production",
            "event": "Purchase Completed",
            "properties": {"amount": 10 * i, "currency": currency},
            "distinct_id": f"u{i}",
        }
        for i, currency in enumerate(["USD", "USD", "EUR"])
    ]
    response = requests.post(
        endpoint + "/track", json=events, headers={"X-API-Key": key}, timeout=10
    )
    assert response.status_code == 200, response.text


def test_serve_then_query_as_table_and_json(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    send_purchases(served.endpoint)

    assert main(["query", "--endpoint", served.endpoint, GUIDE_EVENTS_BY_CURRENCY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["event", "currency", "total"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["Purchase", "Completed", "USD", "2"]
    assert lines[3].split() == ["Purchase", "Completed", "EUR", "1"]
    assert lines[4] == "(2 rows)"
    # Columns line up: every value starts under its header.
    assert lines[2].index("USD") == lines[0].index("currency")

    assert main(["query", "--endpoint", served.endpoint, "--json", GUIDE_EVENTS_BY_CURRENCY]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "columns": ["event", "currency", "total"],
        "rows": [["Purchase Completed", "USD", 2], ["Purchase Completed", "EUR", 1]],
    }


def test_serve_logs_each_request_and_stops_cleanly_on_sigterm(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    send_purchases(served.endpoint)
    status, out, err = served.stop()
    assert status == 0
    assert "Receiver stopped." in out
    request_lines = [line for line in err.splitlines() if '"POST /track' in line]
    assert len(request_lines) == 1
    assert " 200 " in request_lines[0] and "items=3" in request_lines[0]

    # The file outlives the process and can be read directly.
    sql = "SELECT count(*) AS n FROM altertable.analytics.events"
    assert main(["query", "--db", str(served.db), "--json", sql]) == 0
    assert json.loads(capsys.readouterr().out) == {"columns": ["n"], "rows": [[3]]}


def test_serve_stops_on_ctrl_c(served: Served) -> None:
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(15) == 0
    status, out, _ = served.stop()
    assert status == 0
    assert "Receiver stopped." in out


def test_query_db_refuses_a_file_a_receiver_holds(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "--db", str(served.db), "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert "in use by a running receiver" in err
    assert len(err.strip().splitlines()) == 1


def test_serve_with_api_keys_and_environments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = start_serve(tmp_path, "--api-key", "pk_a", "--api-key", "pk_b", "--environment", "qa")
    try:
        url = running.endpoint + "/track"
        event = {"environment": "qa", "event": "E", "properties": {}}
        for key in ("pk_a", "pk_b"):
            response = requests.post(url, json=event, headers={"X-API-Key": key}, timeout=10)
            assert response.status_code == 200
        response = requests.post(url, json=event, headers={"X-API-Key": "local"}, timeout=10)
        assert response.status_code == 401
        production = {**event, "environment": "production"}
        response = requests.post(url, json=production, headers={"X-API-Key": "pk_a"}, timeout=10)
        assert response.json()["error_code"] == "environment-not-found"

        # Ingestion keys do not open /query; without configured query credentials any pair does.
        sql = "SELECT count(*) FROM altertable.analytics.events"
        args = ["query", "--endpoint", running.endpoint]
        assert main([*args, "--user", "pk_b", "--password", "pk_b", sql]) == 1
        assert "refused the query credentials" in capsys.readouterr().err
        assert main([*args, sql]) == 0
        assert capsys.readouterr().out.splitlines()[2].strip() == "2"
    finally:
        status, out, _ = running.stop()
    assert status == 0
    assert "pk_a" not in out  # keys are never printed


def test_query_bad_sql_is_one_line(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--endpoint", served.endpoint, "SELEC 1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("altertable-otel: query failed:")


def test_query_without_a_receiver_says_how_to_start_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    assert main(["query", "--endpoint", endpoint, "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "altertable-otel serve" in err and endpoint in err


def test_query_db_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--db", str(tmp_path / "nope.duckdb"), "SELECT 1"]) == 1
    assert "no database file" in capsys.readouterr().err


def test_serve_on_a_busy_port_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--db", ":memory:"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "--port" in err


def test_query_credentials_from_flags_or_the_lakehouse_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    running = start_serve(tmp_path, "--query-user", "ana", "--query-password", "s3cret")
    try:
        args = ["query", "--endpoint", running.endpoint]
        # The placeholder pair is refused by a receiver with configured credentials.
        assert main([*args, "SELECT 42 AS answer"]) == 1
        assert "refused the query credentials" in capsys.readouterr().err
        assert main([*args, "--user", "ana", "--password", "nope", "SELECT 1"]) == 1
        capsys.readouterr()
        assert main([*args, "--user", "ana", "--password", "s3cret", "SELECT 42 AS a"]) == 0
        assert capsys.readouterr().out.splitlines()[2].strip() == "42"
        monkeypatch.setenv("ALTERTABLE_LAKEHOUSE_USERNAME", "ana")
        monkeypatch.setenv("ALTERTABLE_LAKEHOUSE_PASSWORD", "s3cret")
        assert main([*args, "--json", "SELECT 42 AS answer"]) == 0
        assert json.loads(capsys.readouterr().out) == {"columns": ["answer"], "rows": [[42]]}
    finally:
        running.stop()


def test_query_streams_a_large_result(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT i, repeat('x', 50) AS pad FROM range(200000) t(i)"
    assert main(["query", "--endpoint", served.endpoint, "--json", sql]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 200000
    assert rows[-1] == [199999, "x" * 50]


def test_the_command_line_loads_the_receiver_only_for_its_own_commands() -> None:
    """``check``, ``replay`` and ``bridge`` build the same parser as ``serve``: building it
    must not import the receiver's server, store and query engine (about 35 ms each run)."""
    script = (
        "import sys\n"
        "from opentelemetry_exporter_altertable.cli import build_parser\n"
        "build_parser().parse_args(['check'])\n"
        "print(sorted(m for m in sys.modules if '.receiver.' in m))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = done.stdout.strip()
    for heavy in ("_local", "_store", "_app", "_query", "_server", "_validation"):
        assert f"receiver.{heavy}'" not in loaded, loaded


def test_no_command_prints_help() -> None:
    assert main([]) == 2


def test_table_alignment(capsys: pytest.CaptureFixture[str]) -> None:
    _print_table(["name", "n", "tags"], [["a", 5, ["x"]], ["longer", 123, None]], sys.stdout)
    assert capsys.readouterr().out.splitlines() == [
        "name      n  tags",
        "------  ---  -----",
        'a         5  ["x"]',
        "longer  123  NULL",
        "(2 rows)",
    ]


# -- safe on a developer's machine ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "devbox.example"])
def test_serve_beyond_loopback_without_a_key_refuses_to_start(tmp_path: Path, host: str) -> None:
    command = [sys.executable, "-m", "opentelemetry_exporter_altertable.cli", "serve"]
    try:
        finished = subprocess.run(
            [*command, "--host", host, "--port", "0", "--db", str(tmp_path / "x.duckdb")],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"serve --host {host} started without a key") from exc
    assert finished.returncode == 2
    assert finished.stdout == ""
    assert f"--host {host}" in finished.stderr and "--api-key" in finished.stderr
    assert len(finished.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.duckdb").exists()


def test_serve_on_every_interface_with_a_key_prints_the_bound_address(tmp_path: Path) -> None:
    running = start_serve(tmp_path, "--host", "0.0.0.0", "--api-key", "secret-key")
    try:
        port = running.endpoint.rsplit(":", 1)[1]
        assert running.endpoint == f"http://0.0.0.0:{port}"
        assert running.process.stdout is not None
        banner = [running.process.stdout.readline() for _ in range(9)]
        assert banner[0].split() == ["from", "here:", f"http://127.0.0.1:{port}"]
        hint = next(line for line in banner if "query with:" in line)
        assert f"--endpoint http://127.0.0.1:{port} --api-key KEY" in hint
        assert "secret-key" not in "".join(banner)
        response = requests.post(
            f"http://127.0.0.1:{port}/track",
            json={"environment": "production", "event": "E", "properties": {}},
            headers={"X-API-Key": "secret-key"},
            timeout=10,
        )
        assert response.status_code == 200
    finally:
        running.stop()


def test_serve_banner_query_hint_names_a_non_default_endpoint(served: Served) -> None:
    assert served.process.stdout is not None
    banner = [served.process.stdout.readline() for _ in range(8)]
    hint = next(line for line in banner if "query with:" in line)
    assert f"{PROG} query --endpoint {served.endpoint} " in hint
    assert "--api-key" not in hint
    page = next(line for line in banner if "page:" in line)
    assert f"open {served.endpoint}/ in a browser" in page
    assert requests.get(served.endpoint + "/", timeout=10).headers["Content-Type"].startswith(
        "text/html"
    )


def test_query_hint_omits_the_default_endpoint() -> None:
    assert _query_hint(DEFAULT_ENDPOINT, keyed=False) == (
        f'{PROG} query "SELECT * FROM altertable.analytics.events"'
    )
