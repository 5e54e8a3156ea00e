"""Promises of the contract that need a test of their own, and classifications in words.

Proxy and CA settings from the environment, exponential backoff with jitter inside its bounds,
the identify cache's bound, a user's session left as it was, and one warning per key for the
life of an exporter. Each is checked over real HTTP on loopback where it is about delivery.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from faultserver import FaultServer, tls_context, tls_files
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import T0_NS, finished_spans
from support import PACKAGE, MakeExporter, Spans

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy
from opentelemetry_exporter_altertable._backlog import spool_reason
from opentelemetry_exporter_altertable._retry import is_tls_error, is_transient_error, tls_problem

#: Names ``requests`` reads proxies from, in both cases.
PROXY_VARIABLES = ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"]


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable at all (the suite's NO_PROXY for loopback included)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# ---------------------------------------------------------------------------- proxy and CA


@pytest.mark.usefixtures("no_proxy_settings")
def test_https_proxy_from_the_environment_sees_the_connect(
    monkeypatch: pytest.MonkeyPatch, api_key: str
) -> None:
    # The proxy is a FaultServer: it records the CONNECT and answers it with a JSON body, so
    # the TLS handshake inside the "tunnel" fails: nothing leaves the machine, the host need
    # not resolve, and the key is never sent.
    with FaultServer() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.endpoint)
        exporter = AltertableSpanExporter(
            api_key=api_key, endpoint="https://api.example.invalid", timeout=2.0,
            retry=RetryPolicy(total=0),
        )  # fmt: skip
        try:
            assert exporter.export(_tagged(1)) is SpanExportResult.FAILURE
        finally:
            exporter.shutdown()
        assert proxy.wait_for_requests(1)
        assert [(r.method, r.target) for r in proxy.requests] == [
            ("CONNECT", "api.example.invalid:443")
        ]
        assert "x-api-key" not in proxy.requests[0].headers
        assert exporter.stats()["dropped_by_reason"] == {"undelivered-tls": 1}


@pytest.mark.usefixtures("no_proxy_settings")
@pytest.mark.parametrize("bypass", [False, True], ids=["through-proxy", "no-proxy"])
def test_http_proxy_and_no_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, server: FaultServer, api_key: str, *, bypass: bool
) -> None:
    with FaultServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
        if bypass:
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        exporter = AltertableSpanExporter(api_key=api_key, endpoint=server.endpoint, timeout=2.0)
        try:
            assert exporter.export(_tagged(3)) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        direct, proxied = server.requests, proxy.requests
    if bypass:
        assert proxied == []
        assert [len(r.items) for r in direct] == [3]
    else:
        assert direct == []
        assert [(r.method, r.target, len(r.items)) for r in proxied] == [
            ("POST", f"{server.endpoint}/track", 3)  # an absolute URL: meant for the API
        ]


@pytest.mark.parametrize("trusted", [True, False])
def test_requests_ca_bundle_from_the_environment_is_trusted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, api_key: str, *, trusted: bool
) -> None:
    cert, key = tls_files(tmp_path, "IP:127.0.0.1")
    if trusted:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    else:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with FaultServer(tls=tls_context(cert, key)) as server:
        exporter = AltertableSpanExporter(api_key=api_key, endpoint=server.endpoint, timeout=2.0)
        try:
            result = exporter.export(_tagged(2))
            stats = exporter.stats()
        finally:
            exporter.shutdown()
        accepted = len(server.accepted_items("/track"))
    if trusted:
        assert (result, accepted, stats["calls_exported"]) == (SpanExportResult.SUCCESS, 2, 2)
    else:
        assert (result, accepted, stats["calls_exported"]) == (SpanExportResult.FAILURE, 0, 0)
        assert stats["dropped_by_reason"] == {"undelivered-tls": 2}


# ---------------------------------------------------------------------------- identify cache


def identity_spans(users: range | list[int]) -> list[ReadableSpan]:
    """Untagged spans that each carry one identity with a trait: one identify call each."""
    return finished_spans(
        [("login", {"user.id": f"u{n}", "user.email": f"u{n}@example.com"}, (), T0_NS, T0_NS)
         for n in users]
    )  # fmt: skip


def test_the_identify_cache_keeps_the_newest_ten_thousand(
    server: FaultServer, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter(max_batch_size=1000, timeout=10.0)
    assert exporter.export(identity_spans(range(10_001))) is SpanExportResult.SUCCESS
    assert len(server.items("/identify")) == 10_001

    # u0, the oldest, was evicted; u1, the next oldest, is still known; so is u10000.
    assert exporter.export(identity_spans([1, 10_000])) is SpanExportResult.SUCCESS
    assert len(server.items("/identify")) == 10_001
    assert exporter.export(identity_spans([0])) is SpanExportResult.SUCCESS
    assert [i["distinct_id"] for i in server.items("/identify")[10_001:]] == ["u0"]
    assert exporter.stats()["calls_exported"] == 10_002


# ---------------------------------------------------------------------------- user session


def _snapshot(session: requests.Session) -> dict[str, Any]:
    return {
        "verify": session.verify,
        "trust_env": session.trust_env,
        "proxies": dict(session.proxies),
        "adapters": list(session.adapters.items()),
        "headers": dict(session.headers),
        "hooks": {k: list(v) for k, v in session.hooks.items()},
        "auth": session.auth,
        "cert": session.cert,
        "params": dict(session.params),  # type: ignore[arg-type]
        "max_redirects": session.max_redirects,
        "stream": session.stream,
        "cookies": session.cookies.get_dict(),
    }


@pytest.mark.parametrize("trust_env", [True, False])
def test_a_user_session_is_left_exactly_as_it_was(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    trust_env: bool,
) -> None:
    # Environment settings the exporter's own sessions would pick up: a user's is not touched.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "nowhere.pem"))
    session = requests.Session()
    session.trust_env = trust_env
    session.verify = True
    session.proxies = {"ftp": "http://127.0.0.1:1"}
    session.headers["X-Tenant"] = "acme"
    session.hooks["response"].append(lambda response, **_: None)
    before = _snapshot(session)
    try:
        exporter = make_exporter(session=session, max_batch_size=2)
        assert exporter.export(spans(5)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert _snapshot(session) == before
    finally:
        session.close()
    assert len(server.accepted_items("/track")) == 5


# ---------------------------------------------------------------------------- warnings


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[str], list[str]]]:
    with caplog.at_level(logging.WARNING):
        yield lambda text: [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith(PACKAGE) and r.levelno == logging.WARNING
            and text in r.getMessage()
        ]  # fmt: skip


def test_one_warning_per_key_for_the_life_of_an_exporter(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    warnings_logged: Callable[[str], list[str]],
) -> None:
    exporter = make_exporter()
    for n in range(3):
        batch = spans(2, start=2 * n, **{"$plan": "pro"})
        assert exporter.export(batch) is SpanExportResult.SUCCESS
    assert len(warnings_logged("plan")) == 1
    assert exporter.export(spans(2, start=6, **{"$seats": 3})) is SpanExportResult.SUCCESS
    assert len(warnings_logged("plan")) == 1
    assert len(warnings_logged("seats")) == 1
    # Another exporter has its own memory: it says it once more.
    other = make_exporter()
    assert other.export(spans(1, start=8, **{"$plan": "pro"})) is SpanExportResult.SUCCESS
    assert len(warnings_logged("plan")) == 2
    assert len(server.accepted_items("/track")) == 9


def _tagged(count: int) -> list[ReadableSpan]:
    return finished_spans(
        [(f"s{n}", {"analytics.event": "Paid", "user.id": "u1", "seq": n}, (), T0_NS, T0_NS)
         for n in range(count)]
    )  # fmt: skip


# ---------------------------------------------------------------------------- classifications

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


@pytest.mark.parametrize(
    ("reason", "kept_as"),
    [("auth", "auth"), ("environment-not-found", "auth"), ("endpoint-not-found", "auth"),
     ("tls", "auth"), ("retryable", "retryable"), ("invalid-event", "retryable")],
)  # fmt: skip
def test_calls_owed_for_a_setting_are_spooled_as_auth_parcels(reason: str, kept_as: str) -> None:
    assert spool_reason(reason) == kept_as


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
