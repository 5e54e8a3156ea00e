"""TLS: a failure is named by its cause, is a setting error said once with the fix, not retried.

The classification (:func:`tls_problem`, :func:`is_tls_error`) on its own; then real exporters
against a :class:`faultserver.FaultServer` speaking TLS on loopback with self-signed
certificates: untrusted, for another host, plain HTTP behind ``https://``, and trusted.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import requests
from faultserver import FaultServer, tls_context, tls_files
from opentelemetry.sdk.trace.export import SpanExportResult
from support import FAKE_API_KEY, package_records, tagged_spans

from opentelemetry_exporter_altertable import AltertableSpanExporter
from opentelemetry_exporter_altertable._retry import is_tls_error, is_transient_error, tls_problem

# ---------------------------------------------------------------------------- naming the cause

NOT_TLS = "the endpoint does not speak TLS (a plain-HTTP port behind https://?)"
OTHER_HOST = "the certificate is for another host name"
UNTRUSTED = "the certificate is not trusted (self-signed, or a TLS-intercepting proxy's)"


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("[SSL: WRONG_VERSION_NUMBER] (_ssl.c:1000)", NOT_TLS),
        ("ssl.c:1000: Wrong Version Number", NOT_TLS),
        ("[SSL] record layer failure", NOT_TLS),
        ("Packet Length Too Long", NOT_TLS),
        ("SSL routines: unknown protocol", NOT_TLS),
        ("Hostname Mismatch", OTHER_HOST),
        ("hostname 'a' doesn't match 'b'", OTHER_HOST),
        ("certificate is NOT VALID FOR '127.0.0.1'", OTHER_HOST),
        ("IP address mismatch", OTHER_HOST),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] Certificate Verify Failed", UNTRUSTED),
        ("Self-Signed certificate in chain", UNTRUSTED),
        ("self signed certificate", UNTRUSTED),
        ("Unable to get local issuer certificate", UNTRUSTED),
        ("handshake failure", "the TLS handshake failed"),
    ],
)
def test_each_tls_failure_is_named_by_its_cause(message: str, problem: str) -> None:
    assert tls_problem(ssl.SSLError(message)) == problem


def _chain(depth: int, innermost: BaseException) -> BaseException:
    """``innermost`` as the cause of ``depth`` wrapping exceptions."""
    current = innermost
    for n in range(depth):
        wrapper = RuntimeError(f"wrapper {n}")
        wrapper.__cause__ = current
        current = wrapper
    return current


def test_a_tls_failure_is_found_up_to_eight_causes_deep() -> None:
    import urllib3.exceptions

    assert is_tls_error(_chain(7, ssl.SSLError("x")))  # the eighth exception looked at
    assert not is_tls_error(_chain(8, ssl.SSLError("x")))  # the ninth: not looked at
    assert not is_tls_error(_chain(7, OSError("x")))
    wrapped = urllib3.exceptions.MaxRetryError(None, "/track", ssl.SSLError("x"))  # type: ignore[arg-type]
    assert is_tls_error(wrapped)
    assert not is_tls_error(urllib3.exceptions.MaxRetryError(None, "/t", OSError("x")))  # type: ignore[arg-type]
    assert not is_transient_error(requests.exceptions.SSLError("x"))  # a ConnectionError too
    assert is_transient_error(requests.exceptions.ConnectionError("x"))


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """A certificate for 127.0.0.1 and one for another name, both self-signed."""
    right = tmp_path_factory.mktemp("tls-right")
    wrong = tmp_path_factory.mktemp("tls-wrong")
    return {
        "right": tls_files(right, "IP:127.0.0.1"),
        "wrong": tls_files(wrong, "DNS:elsewhere.example"),
    }


def _tls_export(endpoint: str, tmp_path: Path) -> tuple[SpanExportResult, dict[str, object]]:
    exporter = AltertableSpanExporter(
        api_key=FAKE_API_KEY, endpoint=endpoint, spool_dir=tmp_path / "spool", timeout=3
    )
    try:
        return exporter.export(tagged_spans(3)), exporter.stats()
    finally:
        exporter.shutdown()


TLS_CAUSES = {
    "self-signed": "not trusted",
    "wrong-host": "another host name",
    "plain-http": "does not speak TLS",
}


@pytest.mark.parametrize("case", list(TLS_CAUSES))
def test_a_tls_failure_is_a_setting_error_said_once_with_the_fix(
    certificates: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: Any,
    case: str,
) -> None:
    cause = TLS_CAUSES[case]
    if case == "plain-http":
        server = FaultServer()
    else:
        cert, key = certificates["right" if case == "self-signed" else "wrong"]
        server = FaultServer(tls=tls_context(cert, key))
        if case == "wrong-host":
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trusted, but not for this host
    with server:
        endpoint = f"https://127.0.0.1:{server.port}"
        result, stats = _tls_export(endpoint, tmp_path)
        connections = server.connections_accepted

    assert result is SpanExportResult.FAILURE
    assert connections == 1  # no retry storm
    assert stats["calls_spooled"] == 3
    assert stats["calls_dropped"] == 0
    errors = [r.getMessage() for r in package_records(logs, logging.ERROR)]
    assert len(errors) == 1, errors
    assert cause in errors[0]
    assert "REQUESTS_CA_BUNDLE" in errors[0]
    assert "OTEL_EXPORTER_ALTERTABLE_ENDPOINT" in errors[0]
    assert FAKE_API_KEY not in logs.text


def test_a_trusted_certificate_delivers(
    certificates: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cert, key = certificates["right"]
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with FaultServer(tls=tls_context(cert, key)) as server:
        result, stats = _tls_export(server.endpoint, tmp_path)
        assert len(server.accepted_items("/track")) == 3
    assert result is SpanExportResult.SUCCESS
    assert stats["calls_exported"] == 3
