"""The two ways a request leaves: the package's own urllib3 pool, and a user's session.

Both over real loopback HTTP: the own pool honours the proxies (``HTTPS_PROXY`` through a real
CONNECT tunnel, ``HTTP_PROXY`` as absolute-form requests, ``NO_PROXY``) and the CA bundle
(``REQUESTS_CA_BUNDLE``) from the environment, as ``requests`` would; a user's session is
used exactly as given (its hooks and headers run, the environment is its own business).
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from faultserver import FaultServer, retry_later, tls_context, tls_files
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import T0_NS, finished_spans
from support import FAKE_API_KEY, MakeExporter, Spans, tagged_spans

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy
from opentelemetry_exporter_altertable._pool import GivenSession, OwnPool, own_pool, proxy_for

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy", "NO_PROXY", "no_proxy")  # fmt: skip


class _Tunnel(socketserver.BaseRequestHandler):
    """``CONNECT host:port``: connect there, answer 200, then copy bytes both ways."""

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        line = head.split(b"\r\n", 1)[0].decode()
        self.server.lines.append(line)  # type: ignore[attr-defined]
        method, target, _ = line.split(" ", 2)
        if method != "CONNECT":
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5) as upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            ends = [self.request, upstream]
            while True:
                readable, _, _ = select.select(ends, [], [], 5)
                if not readable:
                    return
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.request else self.request).sendall(data)


class TunnelProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> TunnelProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tls_files(tmp_path_factory.mktemp("pool-tls"), "IP:127.0.0.1")


@pytest.fixture
def tunnel() -> Iterator[TunnelProxy]:
    with TunnelProxy() as proxy:
        yield proxy


def _export(endpoint: str, **kwargs: Any) -> tuple[SpanExportResult, dict[str, object]]:
    exporter = AltertableSpanExporter(
        api_key=FAKE_API_KEY, endpoint=endpoint, timeout=5, max_batch_size=2, **kwargs
    )
    try:
        return exporter.export(tagged_spans(3)), exporter.stats()
    finally:
        exporter.shutdown()


def test_the_own_pool_is_urllib3_and_a_user_session_is_not_replaced(
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    with FaultServer() as server:
        own = AltertableSpanExporter(api_key=FAKE_API_KEY, endpoint=server.endpoint)
        session = requests.Session()
        given = AltertableSpanExporter(
            api_key=FAKE_API_KEY, endpoint=server.endpoint, session=session
        )
        try:
            assert isinstance(own._core._transport._sender, OwnPool)
            assert isinstance(given._core._transport._sender, GivenSession)
            assert given._core._transport._sender.session is session
        finally:
            own.shutdown()
            given.shutdown()
            session.close()


@pytest.mark.parametrize("path", ["own pool", "user session"])
def test_both_paths_deliver_retry_after_and_keep_alive(
    clean_proxy_env: pytest.MonkeyPatch, path: str
) -> None:
    seen: list[int] = []
    session: requests.Session | None = None
    if path == "user session":
        session = requests.Session()
        session.hooks["response"].append(lambda r, *a, **k: seen.append(r.status_code))
    with FaultServer() as server:
        server.script("/track", [retry_later(503, retry_after="0")])
        result, stats = _export(server.endpoint, session=session)
        items = server.accepted_items("/track")
        connections = server.connections_accepted
        headers = server.requests[0].headers
    assert result is SpanExportResult.SUCCESS
    assert len(items) == 3
    assert stats["retries"] == 1
    assert stats["requests"] == 3  # 503, then two chunks of at most 2
    assert connections == 1  # one kept-alive connection for all of them
    assert headers["x-api-key"] == FAKE_API_KEY
    assert headers["user-agent"].startswith("opentelemetry-exporter-altertable/")
    if session is not None:
        assert seen == [503, 200, 200]  # the user's hooks ran on every answer
        session.close()


def test_the_own_pool_tunnels_through_https_proxy_trusting_the_ca_bundle(
    clean_proxy_env: pytest.MonkeyPatch, certificate: tuple[Path, Path], tunnel: TunnelProxy
) -> None:
    cert, key = certificate
    clean_proxy_env.setenv("HTTPS_PROXY", tunnel.url)
    clean_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with FaultServer(tls=tls_context(cert, key)) as server:
        endpoint = f"https://127.0.0.1:{server.port}"
        assert proxy_for(endpoint) == tunnel.url
        result, stats = _export(endpoint)
        items = server.accepted_items("/track")
    assert result is SpanExportResult.SUCCESS
    assert len(items) == 3
    assert stats["calls_exported"] == 3
    assert [line.rsplit(" ", 1)[0] for line in tunnel.lines] == [f"CONNECT 127.0.0.1:{server.port}"]


def test_without_the_ca_bundle_the_tunnelled_certificate_is_refused_as_tls(
    clean_proxy_env: pytest.MonkeyPatch,
    certificate: tuple[Path, Path],
    tunnel: TunnelProxy,
    tmp_path: Path,
) -> None:
    cert, key = certificate
    clean_proxy_env.setenv("HTTPS_PROXY", tunnel.url)
    with FaultServer(tls=tls_context(cert, key)) as server:
        result, stats = _export(f"https://127.0.0.1:{server.port}", spool_dir=tmp_path / "s")
        assert server.requests == []
    assert result is SpanExportResult.FAILURE
    assert stats["calls_spooled"] == 3
    assert len(tunnel.lines) == 1  # a TLS failure is a setting: not retried


def test_plain_http_through_http_proxy_sends_absolute_form(
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    """The proxy is the loopback server itself: it receives ``POST http://host/track``."""
    with FaultServer() as proxy:
        clean_proxy_env.setenv("HTTP_PROXY", proxy.endpoint)
        result, _ = _export("http://api.example.invalid:8080")
        requests_seen = proxy.requests
    assert result is SpanExportResult.SUCCESS
    assert [r.path for r in requests_seen] == ["/track", "/track"]
    assert requests_seen[0].headers["host"] == "api.example.invalid:8080"


def test_no_proxy_bypasses_the_proxy(clean_proxy_env: pytest.MonkeyPatch) -> None:
    with FaultServer() as server:
        clean_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nobody listens there
        clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        assert proxy_for(server.endpoint) is None
        result, _ = _export(server.endpoint)
        assert len(server.accepted_items("/track")) == 3
    assert result is SpanExportResult.SUCCESS


def test_a_socks_proxy_is_left_to_requests(clean_proxy_env: pytest.MonkeyPatch) -> None:
    clean_proxy_env.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    assert own_pool("https://api.altertable.ai") is None


# ---------------------------------------------------- proxies and the CA bundle through an exporter


@pytest.mark.usefixtures("clean_proxy_env")
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


@pytest.mark.usefixtures("clean_proxy_env")
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


def _tagged(count: int) -> list[ReadableSpan]:
    return finished_spans(
        [(f"s{n}", {"analytics.event": "Paid", "user.id": "u1", "seq": n}, (), T0_NS, T0_NS)
         for n in range(count)]
    )  # fmt: skip


# --------------------------------------------------------------- a user's session is left as it was


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
