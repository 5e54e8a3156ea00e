"""``LocalReceiver``: the receiver's lifecycle, for tests, examples and ``altertable-otel serve``.

Its one job is owning the parts: it opens the :class:`~._store.Store`, builds the
:class:`~._app.Application` over it, binds the :class:`~._server.Server` and serves in a
background thread; ``stop()`` ends connections and closes the database. No HTTP or SQL here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .._http_server import ListenerBounds, endpoint_url, is_loopback_host
from ._app import DEFAULT_ENVIRONMENTS, DEFAULT_MAX_BODY_BYTES, Application, Method, Route
from ._faults import FaultInjector, FaultPlan
from ._page import add_page_routes
from ._query import DEFAULT_QUERY_TIMEOUT, QueryEndpoint, SafeQueries
from ._server import DEFAULT_MAX_IN_WORK, DEFAULT_QUEUE_WAIT, Server
from ._store import Store

__all__ = [
    "DEFAULT_ENVIRONMENTS",
    "DEFAULT_MAX_BODY_BYTES",
    "LocalReceiver",
    "is_loopback_host",
    "require_key_beyond_loopback",
]

logger = logging.getLogger(__name__)


class LocalReceiver:
    """An Altertable-compatible ingestion API on a local port, storing into DuckDB.

    ``with LocalReceiver() as r:`` starts it on an ephemeral port with an in-memory database;
    ``r.endpoint`` is its base URL, ``r.query(sql)`` runs SQL against
    ``altertable.analytics.events`` / ``identities``. ``api_keys=None`` accepts any non-empty
    key; ``environments=None`` accepts any environment. Request lines are logged on the
    ``opentelemetry_exporter_altertable.receiver`` loggers at ``request_log_level``.
    ``faults`` (a ``FaultPlan``) makes ingestion requests fail on purpose, for delivery tests.
    ``POST /query`` speaks the Lakehouse API (Basic auth with ``query_user``/``query_password``,
    else any non-empty pair; read-only; ``query_timeout`` seconds at most) and ``GET /`` is a
    page over it (``r.page_url``). ``r.query(sql)`` is the trusted path: any SQL, in process.

    ``bounds`` caps connections, the time to send one request and the idle time between
    requests (see :class:`~.._http_server.ListenerBounds`). A ``host`` other than loopback
    needs ``api_keys`` (``ValueError`` otherwise): anyone who
    can reach the port could write otherwise. At most ``max_in_work`` requests of a kind are
    read and handled at once; the next waits up to ``queue_wait`` seconds, then gets ``503``.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        api_keys: Iterable[str] | None = None,
        environments: Iterable[str] | None = DEFAULT_ENVIRONMENTS,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_log_level: int = logging.DEBUG,
        idle_timeout: float | None = None,
        bounds: ListenerBounds | None = None,
        faults: FaultPlan | FaultInjector | None = None,
        max_in_work: int = DEFAULT_MAX_IN_WORK,
        queue_wait: float = DEFAULT_QUEUE_WAIT,
        query_user: str | None = None,
        query_password: str | None = None,
        query_timeout: float = DEFAULT_QUERY_TIMEOUT,
    ) -> None:
        if max_in_work < 1:
            raise ValueError("max_in_work must be at least 1")
        self.db_path = db_path
        self.api_keys = _as_tuple(api_keys, "api_keys")
        environment_names = _as_tuple(environments, "environments")
        self.environments = None if environment_names is None else frozenset(environment_names)
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.request_log_level = request_log_level
        bounds = bounds or ListenerBounds(max_body_bytes=max_body_bytes)
        if idle_timeout is not None:
            bounds = replace(bounds, idle_timeout=idle_timeout)
        self.bounds = bounds
        """Connections, request deadline and idle time of the listener."""
        self.max_in_work = max_in_work
        self.queue_wait = queue_wait
        self.faults = FaultInjector(faults) if isinstance(faults, FaultPlan) else faults
        """Injects the given :class:`FaultPlan` into ingestion requests (see ``_faults``)."""
        pair = (query_user, query_password)
        if (query_user is None) != (query_password is None) or "" in pair:
            raise ValueError("query_user and query_password go together, both non-empty")
        self.query_credentials = (
            None if query_user is None or query_password is None else (query_user, query_password)
        )
        """``POST /query``'s Basic credentials; ``None`` accepts any non-empty pair."""
        if not query_timeout > 0:
            raise ValueError("query_timeout must be positive")
        self.query_timeout = query_timeout
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._extra_routes: list[tuple[Method, str, Route]] = []

    def route(self, method: Method, path: str, handler: Route) -> None:
        """Serve ``method path`` with ``handler`` too (before or after ``start``): how other
        front ends, such as the OTLP bridge's ``/v1/traces``, share the receiver's port."""
        with self._lock:
            self._extra_routes.append((method, path, handler))
            if self._server is not None:
                self._server.app.route(method, path, handler)

    def start(self) -> LocalReceiver:
        """Open the database, bind the port and serve in a background thread."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the receiver is already running")
            require_key_beyond_loopback(self.host, self.api_keys)
            store = Store(self.db_path)
            try:
                app = Application(
                    store,
                    self.api_keys,
                    self.environments,
                    self.max_body_bytes,
                    self.faults,
                    host=self.host,
                )
                queries = SafeQueries(store, self.query_timeout)
                app.route(
                    "POST",
                    "/query",
                    QueryEndpoint(queries, self.query_credentials, self.api_keys, app.decode),
                )
                add_page_routes(app)
                for method, path, handler in self._extra_routes:
                    app.route(method, path, handler)
                server = Server(
                    (self.host, self.port),
                    app,
                    self.request_log_level,
                    self.bounds,
                    max_in_work=self.max_in_work,
                    queue_wait=self.queue_wait,
                )
            except BaseException:
                store.close()
                raise
            if self.faults is not None:
                self.faults.begin()
            thread = threading.Thread(
                target=server.serve,
                name=f"altertable-receiver-{server.server_port}",
                daemon=True,
            )
            thread.start()
            self._store, self._server, self._thread = store, server, thread
            self.port = server.server_port
            logger.debug("local receiver listening on %s", self.endpoint)
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, end open connections, then close the database. Idempotent."""
        with self._lock:
            server, store, thread = self._server, self._store, self._thread
            self._server = self._store = self._thread = None
        if server is None or store is None or thread is None:
            return
        try:
            server.stop_serving()
            thread.join(timeout)
            server.server_close()
            server.end_idle_connections()
            if not server.wait_idle(timeout):
                logger.warning("requests still running after %.1fs; interrupting them", timeout)
                store.interrupt()
        finally:
            store.close()

    def __enter__(self) -> LocalReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:15001`` (a wildcard host is reached via loopback)."""
        if self._server is None:
            raise RuntimeError("the receiver is not running; call start() first")
        return endpoint_url(self.host, self.port)

    @property
    def bound_address(self) -> str:
        """The address the socket is bound to, as a URL: ``http://0.0.0.0:15001`` when every
        interface listens (unlike :attr:`endpoint`, which is how to reach it from here)."""
        if self._server is None:
            raise RuntimeError("the receiver is not running; call start() first")
        host = str(self._server.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._server.server_port}"

    @property
    def page_url(self) -> str:
        """The page: live events, identities, a chart and a read-only SQL box."""
        return self.endpoint + "/"

    @property
    def queries_running(self) -> int:
        """``POST /query`` statements holding a database connection now."""
        store = self._store
        return 0 if store is None else store.readers_open()

    @property
    def requests(self) -> Counter[tuple[str, int]]:
        """Requests answered so far, by ``(path, status)``, e.g. ``r.requests[("/track", 200)]``."""
        server = self._server
        return Counter() if server is None else server.counts()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run SQL against the receiver's database (``altertable.analytics.*``); rows as tuples."""
        store = self._store
        if store is None:
            raise RuntimeError("the receiver is not running; call start() first")
        return store.query(sql)[1]


def _as_tuple(values: Iterable[str] | None, name: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    result = (values,) if isinstance(values, str) else tuple(values)
    if not all(isinstance(v, str) and v for v in result):
        raise ValueError(f"{name} must be non-empty strings")
    return result


def require_key_beyond_loopback(host: str, api_keys: tuple[str, ...] | None) -> None:
    """Refuse to listen beyond loopback while any key is accepted."""
    if api_keys is None and not is_loopback_host(host):
        raise ValueError(
            f"host {host!r} is reachable from other machines: give the API keys to accept "
            "(--api-key KEY) or listen on 127.0.0.1"
        )
