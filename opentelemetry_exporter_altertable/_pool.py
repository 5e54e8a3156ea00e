"""The package's own connection pool: urllib3 directly, configured as ``requests`` would be.

One job: POST a body and hand back the streamed answer, over pooled keep-alive connections.
``requests.Session.post`` costs about three times urllib3's pool per request (hooks, cookies,
header merging, URL re-parsing, environment lookups), so when the user passes no session the
transport posts through urllib3 itself. What ``requests`` would read from the environment is
read here once: proxies (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, ``NO_PROXY``,
credentials in the proxy URL) and the CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``,
else the same ``certifi`` bundle ``requests`` trusts). A SOCKS proxy needs ``requests``' own
adapter: :func:`own_pool` returns ``None`` and the transport falls back to a session.

Nothing is retried or redirected here (``retries=False``, ``redirect=False``): the transport
decides. Connections are remembered so exit can cut a read under way short (:meth:`abort`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import requests.utils
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse

__all__ = ["OwnPool", "ca_bundle", "own_pool", "proxy_for"]


def proxy_for(endpoint: str) -> str | None:
    """The proxy URL ``requests`` would use for ``endpoint`` (``NO_PROXY`` honoured)."""
    proxies = requests.utils.get_environ_proxies(endpoint)
    proxy = requests.utils.select_proxy(endpoint, proxies)
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"  # requests reads host:port as http


def ca_bundle() -> str | None:
    """The CA bundle (file or directory) the environment names, as ``requests`` reads it."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def answer_within_deadline(base: type[Any]) -> type[Any]:
    """``base`` (a urllib3 connection class) whose answer head arrives within the request's
    timeout as a whole, not per read.

    The status line and each header line are separate reads, each with the socket's timeout:
    a server sending one header line every half second would hold an export for as long as
    it likes. Here a timer shuts the socket down once the timeout (what is left of the
    export's deadline, as the transport passes it) has run out while the head is read; the
    read then fails as a dropped connection would. The body's reads are bounded by
    :func:`._answers.read_stream`.
    """

    class DeadlineConnection(base):  # type: ignore[misc]
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            budget = self.timeout  # the read timeout urllib3 set for this request
            sock = self.sock
            if not isinstance(budget, (int, float)) or sock is None:
                budget = sock.gettimeout() if sock is not None else None
            if budget is None or sock is None:
                return super().getresponse(*args, **kwargs)
            timer = threading.Timer(float(budget), _shut, (sock,))
            timer.daemon = True
            timer.start()
            try:
                return super().getresponse(*args, **kwargs)
            finally:
                timer.cancel()

    return DeadlineConnection


def tracked(
    base: type[HTTPConnectionPool], registry: weakref.WeakSet[Any]
) -> type[HTTPConnectionPool]:
    """``base`` recording each connection it opens in ``registry``: what an abort shuts down,
    for the own pool and for the sessions of ``_transport.new_session`` alike. Its
    connections read an answer's head within the request's timeout
    (:func:`answer_within_deadline`)."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        ConnectionCls = answer_within_deadline(base.ConnectionCls)

        def _new_conn(self) -> Any:
            conn = super()._new_conn()
            registry.add(conn)
            return conn

    return Tracked


class OwnPool:
    """Keep-alive connections to one endpoint (through its proxy, if any), urllib3 only."""

    def __init__(self, endpoint: str, proxy: str | None, pool_size: int = 16) -> None:
        bundle = ca_bundle()
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        if bundle and os.path.isdir(bundle):
            tls["ca_cert_dir"] = bundle
        else:
            tls["ca_certs"] = bundle or requests.utils.DEFAULT_CA_BUNDLE_PATH
        self.proxy = proxy
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        manager: urllib3.PoolManager
        if proxy is not None:
            parts = urlsplit(proxy)
            proxy_headers: dict[str, str] = {}
            if parts.username is not None:  # credentials in the URL, as requests sends them
                auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                proxy_headers = urllib3.util.make_headers(proxy_basic_auth=auth)
            manager = urllib3.ProxyManager(
                proxy, num_pools=2, maxsize=pool_size, proxy_headers=proxy_headers, **tls
            )
        else:
            manager = urllib3.PoolManager(num_pools=2, maxsize=pool_size, **tls)
        manager.pool_classes_by_scheme = {
            "http": tracked(HTTPConnectionPool, self._connections),
            "https": tracked(HTTPSConnectionPool, self._connections),
        }
        self._manager = manager
        self._endpoint = endpoint
        # Without a proxy (or through a CONNECT tunnel) every request goes to one pool whose
        # target never changes: look it up once instead of re-parsing the URL per request.
        tunnel_or_direct = proxy is None or urlsplit(endpoint).scheme == "https"
        self._direct = manager.connection_from_url(endpoint) if tunnel_or_direct else None

    def post(
        self, url: str, path: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> BaseHTTPResponse:
        """POST ``body``; the answer is not read yet (``preload_content=False``)."""
        if self._direct is not None:
            return self._direct.urlopen(
                "POST",
                path,
                body=body,
                headers=headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
            )
        return self._manager.urlopen(  # plain HTTP through a proxy: absolute-form requests
            "POST",
            url,
            body=body,
            headers=headers,
            timeout=timeout,
            retries=False,
            redirect=False,
            preload_content=False,
            decode_content=False,
        )

    def abort(self) -> None:
        """Shut every socket of this pool down (reads under way end with an error)."""
        for conn in list(self._connections):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the idle pooled connections; a later request opens a new one.

        ``PoolManager.clear`` only forgets its pools (urllib3 2 closes a pool when it is
        collected), and the direct pool kept here would outlive it: close that one too.
        """
        self._manager.clear()
        if self._direct is not None:
            self._direct.close()
            self._direct = self._manager.connection_from_url(self._endpoint)


def own_pool(endpoint: str, pool_size: int = 16) -> OwnPool | None:
    """The urllib3 pool for ``endpoint``, or ``None`` when only ``requests`` can reach it
    (a SOCKS proxy)."""
    try:
        proxy = proxy_for(endpoint)
        if proxy is not None and proxy.lower().startswith("socks"):
            return None
        return OwnPool(endpoint, proxy, pool_size)
    except ValueError:  # an unusable endpoint (the exporter refuses to send anyway)
        return None
