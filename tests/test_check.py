"""``altertable-otel check``: each kind of answer is explained in words, over real HTTP."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, refusing_endpoint

from opentelemetry_exporter_altertable.cli import main
from opentelemetry_exporter_altertable.receiver import LocalReceiver

KEY = "pk_test_check_0123456789"


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver(api_keys=[KEY]) as local:
        yield local


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["check", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_ok_sends_one_event_with_sync(
    receiver: LocalReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--endpoint", receiver.endpoint, "--api-key", KEY)
    assert code == 0
    assert out.startswith("OK")
    assert "production" in out
    rows = receiver.query("SELECT event, distinct_id FROM altertable.analytics.events")
    assert rows == [("altertable-otel check", "altertable-otel-check")]


def test_wrong_key_names_the_variable_and_not_the_key(
    receiver: LocalReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--endpoint", receiver.endpoint, "--api-key", "pk_wrong_secret_42")
    assert code == 1
    assert "wrong API key" in out
    assert "OTEL_EXPORTER_ALTERTABLE_API_KEY" in out
    assert "pk_wrong_secret_42" not in out


def test_unknown_environment_is_named(
    receiver: LocalReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(
        capsys, "--endpoint", receiver.endpoint, "--api-key", KEY, "--environment", "qa-7"
    )
    assert code == 1
    assert "unknown environment 'qa-7'" in out
    assert "OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT" in out


def test_settings_come_from_the_environment(
    receiver: LocalReceiver, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_ALTERTABLE_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("ALTERTABLE_API_KEY", KEY)
    monkeypatch.setenv("OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT", "staging")
    code, out = run(capsys)
    assert code == 0, out
    assert "'staging'" in out


def test_missing_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_ALTERTABLE_API_KEY", raising=False)
    monkeypatch.delenv("ALTERTABLE_API_KEY", raising=False)
    code, out = run(capsys, "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "no API key" in out


def test_unreachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with refusing_endpoint() as down:
        code, out = run(capsys, "--endpoint", down, "--api-key", KEY, "--timeout", "2")
    assert code == 1
    assert "unreachable" in out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_error_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"https://127.0.0.1:{server.server_address[1]}"
        code, out = run(capsys, "--endpoint", endpoint, "--api-key", KEY, "--timeout", "5")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert "TLS error" in out
    assert "REQUESTS_CA_BUNDLE" in out
