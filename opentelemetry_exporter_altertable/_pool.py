"""Senders: what puts one POST on the wire, behind one small interface.

One job: POST a body and hand back the streamed answer, unread. The transport decides
everything else (chunks, deadline, retries, what an answer means) and talks to one
:class:`Sender` without knowing which it is:

- :class:`OwnPool`, the default: urllib3's pool directly, configured as ``requests`` would be.
  ``requests.Session.post`` costs about three times urllib3's pool per request (hooks, cookies,
  header merging, URL re-parsing, environment lookups).
- :class:`OwnSession`: a ``requests`` session the package builds, where only ``requests`` can
  go (a SOCKS proxy needs its adapter).
- :class:`GivenSession`: a user's ``requests.Session``, used exactly as given: its hooks and
  headers run, its environment is its own business, its requests are never cut short, and
  its answer heads are not watched (:class:`HeadWatch` serves the package's own senders).

What ``requests`` would read from the environment on every POST is read once, when a sender is
made: proxies (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``, ``NO_PROXY``, credentials in
the proxy URL) and the CA bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, else the same
``certifi`` bundle ``requests`` trusts).

Nothing is retried or redirected here (``retries=False``, ``redirect=False``): the transport
decides. The package's own senders remember their connections, so exit can cut a read under
way short (:meth:`Sender.abort`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import requests
import requests.utils
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = [
    "Connections",
    "GivenSession",
    "OwnPool",
    "OwnSession",
    "Sender",
    "ca_bundle",
    "new_session",
    "own_pool",
    "proxy_for",
    "resolve_sender",
]

DEFAULT_POOL_SIZE = 16

#: A POST's answer, not read yet: urllib3's streamed response and its status.
Sent = tuple[Any, int]


class Sender(Protocol):
    """Puts a POST on the wire; the transport's only view of HTTP."""

    def request(
        self, url: str, target: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Sent:
        """POST ``body`` to ``url`` (``target``: its path and query); the answer is not read."""

    def abort(self) -> None:
        """End the requests under way at once (interpreter exit), where that is ours to do."""

    def close(self) -> None:
        """Close the idle connections this sender opened; a later request opens new ones."""

    def forked(self) -> Sender:
        """The sender a forked child uses: it must not share the parent's sockets."""


# ---------------------------------------------------------------------------- environment


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


# ---------------------------------------------------------------------------- tracked sockets


def _shut(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways: a read under way on it ends with an error at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class HeadWatch:
    """One thread that keeps every request on a sender's connections, from its first byte
    sent to the last line of its answer's head, within its request's timeout as a whole
    rather than per socket operation.

    Each send of the body and each line of the head is a separate socket operation, each with
    the socket's timeout: a server reading the body slowly, or sending one header line every
    half second, would hold an export for as long as it likes. A socket whose head has not
    arrived once the request's timeout (what is left of the export's deadline, as the
    transport passes it) has run out is shut down; the send or read then fails as a dropped
    connection would. The body's reads are bounded by :func:`._answers.read_stream`. One
    thread for all requests (started on demand, gone after a minute idle), because a timer
    per request costs a thread start per POST.
    """

    IDLE = 60.0

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heads: dict[int, tuple[float, socket.socket]] = {}
        self._next_key = 0
        self._wakes_at = float("inf")
        self._running = False

    def watch(self, sock: socket.socket, budget: float) -> int:
        """Shut ``sock`` down if :meth:`done` is not called within ``budget`` seconds."""
        deadline = time.monotonic() + budget
        with self._cond:
            self._next_key += 1
            key = self._next_key
            self._heads[key] = (deadline, sock)
            if not self._running:
                self._running = True
                watcher = threading.Thread(target=self._run, name="altertable-head-watch")
                watcher.daemon = True
                watcher.start()
            elif deadline < self._wakes_at:
                self._cond.notify()
        return key

    def done(self, key: int) -> None:
        with self._cond:
            self._heads.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, sock) in list(self._heads.items()):
                    if deadline <= now:
                        del self._heads[key]
                        _shut(sock)
                if self._heads:
                    self._wakes_at = min(deadline for deadline, _ in self._heads.values())
                    self._cond.wait(self._wakes_at - now)
                else:
                    self._wakes_at = now + self.IDLE
                    if not self._cond.wait(self.IDLE) and not self._heads:
                        self._running = False
                        return


def answer_within_deadline(base: type[Any], watch: HeadWatch) -> type[Any]:
    """``base`` (a urllib3 connection class) whose request is sent and whose answer head
    arrives within the request's timeout as a whole, kept so by ``watch``.

    urllib3 sets the connection's ``timeout`` to the connect timeout just before sending:
    with a total (:class:`urllib3.Timeout`, as :class:`OwnPool` passes it), that is what is
    left of the request's time, so the watch ends where the request's deadline does.
    """

    class DeadlineConnection(base):  # type: ignore[misc]
        _watch_key: int | None = None

        def request(self, *args: Any, **kwargs: Any) -> None:
            budget = self.timeout
            if not isinstance(budget, (int, float)):
                budget = None
            if budget is not None and self.sock is None:
                self.connect()  # what sending would do first: the socket must exist to watch it
            sock = self.sock
            if budget is None or sock is None:
                super().request(*args, **kwargs)
                return
            key = watch.watch(sock, float(budget))
            try:
                super().request(*args, **kwargs)
            except BaseException:
                watch.done(key)
                raise
            self._watch_key = key

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            key, self._watch_key = self._watch_key, None
            if key is None:  # not watched since the request began: watch the head alone
                budget, sock = self.timeout, self.sock
                if not isinstance(budget, (int, float)) or sock is None:
                    budget = sock.gettimeout() if sock is not None else None
                if budget is None or sock is None:
                    return super().getresponse(*args, **kwargs)
                key = watch.watch(sock, float(budget))
            try:
                return super().getresponse(*args, **kwargs)
            finally:
                watch.done(key)

    return DeadlineConnection


def tracked(base: type[HTTPConnectionPool], registry: Connections) -> type[HTTPConnectionPool]:
    """``base`` recording each connection it opens in ``registry`` (what an abort shuts down).
    Its connections read an answer's head within the request's timeout
    (:func:`answer_within_deadline`)."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        ConnectionCls = answer_within_deadline(base.ConnectionCls, registry.head_watch)

        def _new_conn(self) -> Any:
            conn = super()._new_conn()
            registry.add(conn)
            return conn

    return Tracked


class Connections(weakref.WeakSet[Any]):
    """The connections a pool opened: what :meth:`abort` shuts down.

    At interpreter exit an export blocked on a hung server must end within the exit bound, but
    a socket read already under way keeps the timeout it started with. Shutting the socket down
    ends that read at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.head_watch = HeadWatch()

    def pool_classes(self) -> dict[str, type[HTTPConnectionPool]]:
        """urllib3's pool classes by scheme, each recording its connections here."""
        return {
            "http": tracked(HTTPConnectionPool, self),
            "https": tracked(HTTPSConnectionPool, self),
        }

    def abort(self) -> None:
        """Shut every socket down (reads under way end with an error)."""
        for conn in list(self):
            # Equivalent if mutated: urllib3's connections always have .sock (None once closed).
            sock = getattr(conn, "sock", None)  # pragma: no mutate
            if sock is not None:
                _shut(sock)


# ---------------------------------------------------------------------------- the own pool


class OwnPool:
    """Keep-alive connections to one endpoint (through its proxy, if any), urllib3 only."""

    def __init__(
        self, endpoint: str, proxy: str | None, pool_size: int = DEFAULT_POOL_SIZE
    ) -> None:
        bundle = ca_bundle()
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        if bundle and os.path.isdir(bundle):
            tls["ca_cert_dir"] = bundle
        else:
            tls["ca_certs"] = bundle or requests.utils.DEFAULT_CA_BUNDLE_PATH
        self.proxy = proxy
        self._connections = Connections()
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
        manager.pool_classes_by_scheme = self._connections.pool_classes()
        self._manager = manager
        self._endpoint = endpoint
        # Without a proxy (or through a CONNECT tunnel) every request goes to one pool whose
        # target never changes: look it up once instead of re-parsing the URL per request.
        tunnel_or_direct = proxy is None or urlsplit(endpoint).scheme == "https"
        self._direct = manager.connection_from_url(endpoint) if tunnel_or_direct else None

    def request(
        self, url: str, target: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Sent:
        if self._direct is not None:
            raw = self._direct.urlopen(
                "POST",
                target,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
            )
        else:
            raw = self._manager.urlopen(  # plain HTTP through a proxy: absolute-form requests
                "POST",
                url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                redirect=False,
                preload_content=False,
                decode_content=False,
            )
        return raw, raw.status

    def abort(self) -> None:
        self._connections.abort()

    def close(self) -> None:
        """Close the idle pooled connections; a later request opens a new one.

        ``PoolManager.clear`` only forgets its pools (urllib3 2 closes a pool when it is
        collected), and the direct pool kept here would outlive it: close that one too.
        """
        self._manager.clear()
        if self._direct is not None:
            self._direct.close()
            self._direct = self._manager.connection_from_url(self._endpoint)

    def forked(self) -> Sender:
        return resolve_sender(self._endpoint)


def own_pool(endpoint: str, pool_size: int = DEFAULT_POOL_SIZE) -> OwnPool | None:
    """The urllib3 pool for ``endpoint``, or ``None`` when only ``requests`` can reach it
    (a SOCKS proxy)."""
    try:
        proxy = proxy_for(endpoint)
        if proxy is not None and proxy.lower().startswith("socks"):
            return None
        return OwnPool(endpoint, proxy, pool_size)
    except ValueError:  # an unusable endpoint (the exporter refuses to send anyway)
        return None


# ---------------------------------------------------------------------------- sessions


class _TrackingAdapter(HTTPAdapter):
    """An adapter that remembers its connections, so exit can cut one short."""

    def __init__(self, **kwargs: Any) -> None:
        self._connections = Connections()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        # Equivalent if mutated: requests passes only block=False here, urllib3's default.
        super().init_poolmanager(*args, **kwargs)  # pragma: no mutate
        self.poolmanager.pool_classes_by_scheme = self._connections.pool_classes()

    def abort(self) -> None:
        """Shut every socket of this adapter down (reads under way end with an error)."""
        self._connections.abort()


def new_session(endpoint: str, pool_size: int = DEFAULT_POOL_SIZE) -> requests.Session:
    """A pooled session that does no retrying of its own (the transport decides).

    Proxy and CA settings (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) are read from
    the environment once, here, rather than by ``requests`` on every POST, where reading them
    cost about a quarter of each request's client-side time.
    """
    session = requests.Session()
    adapter = _TrackingAdapter(
        pool_connections=2,
        pool_maxsize=pool_size,
        max_retries=0,  # pragma: no mutate (requests' default too: said to be read, equivalent)
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.proxies.update(requests.utils.get_environ_proxies(endpoint))
    bundle = ca_bundle()
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session


class GivenSession:
    """A user's ``requests.Session``: used as given, never aborted nor closed here."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session

    def request(
        self, url: str, target: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Sent:
        response = self.session.post(
            url,
            data=body,
            headers=headers,
            timeout=timeout,
            stream=True,
            allow_redirects=False,
        )
        return response.raw, response.status_code

    def abort(self) -> None:
        """Nothing: a user's session is used as given, and its requests are its own.

        They do not all end by the export's deadline: ``requests`` applies the timeout to
        each socket operation (connect, each send, each line of the answer's head), so a server
        that drips its head can hold a request longer. Only the answer's body is read within
        the deadline (:func:`._answers.read_stream`); :class:`HeadWatch` watches the package's
        own senders alone.
        """

    def close(self) -> None:
        """Nothing: the session is the user's to close."""

    def forked(self) -> Sender:
        """The same session, its pooled connections (the parent's sockets) closed."""
        for adapter in self.session.adapters.values():
            adapter.close()
        return self


class OwnSession(GivenSession):
    """A session of the package's own (:func:`new_session`), where only ``requests`` can go."""

    def __init__(self, endpoint: str, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        super().__init__(new_session(endpoint, pool_size))
        self._endpoint = endpoint

    def abort(self) -> None:
        for adapter in self.session.adapters.values():
            if isinstance(adapter, _TrackingAdapter):
                adapter.abort()

    def close(self) -> None:
        self.session.close()

    def forked(self) -> Sender:
        return resolve_sender(self._endpoint)


def resolve_sender(endpoint: str, session: requests.Session | None = None) -> Sender:
    """The sender for ``endpoint``: a user's ``session`` as given; else urllib3's pool, or an
    own session where only ``requests`` can go."""
    if session is not None:
        return GivenSession(session)
    pool = own_pool(endpoint)
    return pool if pool is not None else OwnSession(endpoint)
