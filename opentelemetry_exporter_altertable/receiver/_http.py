"""The HTTP front of the local receiver: auth, routing, item-by-item application, responses.

Standard library only (``http.server``). Each response goes out in one ``sendall`` (status
line, headers and body in one buffer, ``Content-Length`` always set): a response split over
several writes meets Nagle's algorithm and the client's delayed ACK, which costs ~40 ms per
request on keep-alive connections.

Order of checks, as the API does it: API key (``401``, empty body), then the body as a whole
(``400`` malformed JSON, ``422`` schema, ``400 unknown-built-in-property``: nothing stored),
then item by item, in order, the environment (``400 environment-not-found``). Items before the
first unknown environment are stored before the error is answered, like the official mock, so
a client that retries such a batch stores its first items twice (at-least-once delivery).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import math
import os
import re
import selectors
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from datetime import time as dt_time
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from ..version import __version__
from ._faults import Fault, FaultInjector, FaultPlan
from ._store import Store, StoreError, new_uuid7
from ._validation import (
    AliasItem,
    ApiError,
    IdentifyItem,
    TrackItem,
    decode_body,
    parse_alias,
    parse_identify,
    parse_track,
)

__all__ = ["DEFAULT_ENVIRONMENTS", "DEFAULT_MAX_BODY_BYTES", "LocalReceiver"]

logger = logging.getLogger("opentelemetry_exporter_altertable.receiver")

DEFAULT_ENVIRONMENTS = ("production", "staging", "development")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_INGEST_PATHS = ("/track", "/identify", "/alias")
_POST_PATHS = (*_INGEST_PATHS, "/query")
_FAILED_CODES = {
    "/track": "insert-failed",
    "/identify": "identify-failed",
    "/alias": "alias-failed",
}
_API_KEY_IN_URL = re.compile(r"(?i)(apikey=)[^&]*")
_DRAIN_LIMIT_FACTOR = 16
_ItemT = TypeVar("_ItemT", TrackItem, IdentifyItem, AliasItem)


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes = b""
    items: int | None = None
    close: bool = False
    headers: tuple[tuple[str, str], ...] = ()


def _json_response(status: int, payload: Any, items: int | None = None) -> _Response:
    return _Response(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"), items)


def _error_response(error: ApiError, items: int | None = None) -> _Response:
    return _json_response(error.status, error.body(), items)


def _fault_response(fault: Fault) -> _Response:
    error = ApiError(fault.status, fault.error_code, "fault injected by the local receiver")
    return _Response(fault.status, _error_response(error).body, headers=fault.headers)


def to_jsonable(value: Any) -> Any:
    """Make a DuckDB value JSON-safe: datetimes as ISO 8601, decimals as floats, etc."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date, dt_time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return to_jsonable(float(value))
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return str(value)


class _Application:
    """Everything between a read request body and the response; no sockets here."""

    def __init__(
        self,
        store: Store,
        api_keys: tuple[str, ...] | None,
        environments: frozenset[str] | None,
        max_body_bytes: int,
    ) -> None:
        self.store = store
        self._api_keys = None if api_keys is None else tuple(k.encode("utf-8") for k in api_keys)
        self.environments = environments
        self.max_body_bytes = max_body_bytes

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool:
        """``X-API-Key``, else ``Authorization: Bearer``, else ``?apiKey=``, as the API reads them.

        ``headers`` is keyed in lower case.
        """
        key: str | None
        if "x-api-key" in headers:
            key = headers["x-api-key"].strip()
        elif "authorization" in headers:
            scheme, _, token = headers["authorization"].strip().partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        else:
            key = next(iter(query.get("apiKey", ())), None)
        if not key:
            return False
        if self._api_keys is None:
            return True
        candidate = key.encode("utf-8", "surrogateescape")
        return any(hmac.compare_digest(candidate, allowed) for allowed in self._api_keys)

    def post(
        self, path: str, headers: Mapping[str, str], query: Mapping[str, list[str]], raw: bytes
    ) -> _Response:
        if not self.authorized(headers, query):
            return _Response(401)
        try:
            doc = decode_body(raw, headers.get("content-encoding"), self.max_body_bytes)
            if path == "/query":
                return self._query(doc)
            return self._ingest(path, doc)
        except ApiError as error:
            return _error_response(error)

    def _ingest(self, path: str, doc: Any) -> _Response:
        now = datetime.now(timezone.utc)
        if path == "/track":
            return self._apply(path, parse_track(doc, now), self.store.insert_events)
        if path == "/identify":
            return self._apply(path, parse_identify(doc, now), self.store.apply_identify)
        return self._apply(path, parse_alias(doc, now), self.store.apply_alias)

    def _apply(
        self, path: str, items: list[_ItemT], store: Callable[[Sequence[_ItemT]], None]
    ) -> _Response:
        """Store the items up to the first unknown environment, then answer for all of them."""
        allowed = self.environments
        accepted = len(items)
        if allowed is not None:
            unknown = (i for i, item in enumerate(items) if item.environment not in allowed)
            accepted = next(unknown, accepted)
        try:
            store(items[:accepted])
        except StoreError as exc:
            logger.warning("%s: %s", path, exc)
            error = ApiError(400, _FAILED_CODES[path], str(exc))
            return _error_response(error, items=exc.stored)
        if accepted < len(items):
            environment = items[accepted].environment
            known = ", ".join(sorted(allowed or ()))
            error = ApiError(
                400,
                "environment-not-found",
                f"environment {environment!r} does not exist (known: {known})",
            )
            return _error_response(error, items=accepted)
        body = {"ok": True, "task_id": new_uuid7(), "error_code": None}
        return _json_response(200, body, items=accepted)

    def _query(self, doc: Any) -> _Response:
        statement = doc.get("statement") if isinstance(doc, dict) else None
        if not isinstance(statement, str) or not statement.strip():
            raise ApiError(422, "invalid-payload", 'query: expected {"statement": "SQL"}')
        try:
            columns, rows = self.store.query(statement)
        except Exception as exc:  # any DuckDB error is the caller's SQL
            raise ApiError(400, "query-failed", str(exc)) from None
        return _json_response(200, {"columns": columns, "rows": to_jsonable(rows)}, items=len(rows))


class _BodyError(Exception):
    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error = ApiError(status, error_code, message)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"altertable-otel-receiver/{__version__}"
    sys_version = ""

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self._server.idle_timeout)
        with contextlib.suppress(OSError):  # not TCP, e.g. a Unix socket
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's own complaints (bad request lines, timeouts); request lines are ours.
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        started = time.perf_counter()
        path = _route(self.path)
        if path == "/health":
            response = _json_response(200, {"ok": True})
        elif path in _POST_PATHS:
            response = _json_response(405, _not_allowed(path, "POST"))
        else:
            response = _json_response(404, _not_found(path))
        self._finish(path, response, started)

    def do_POST(self) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        path = _route(url.path)
        app = self._server.app
        try:
            raw = self._read_body(app.max_body_bytes)
        except _BodyError as exc:
            body = _error_response(exc.error).body
            self._finish(path, _Response(exc.error.status, body, close=True), started)
            return
        faults = self._server.faults
        fault = faults.decide(path) if faults is not None and path in _INGEST_PATHS else None
        if fault is not None and fault.drop:
            self.close_connection = True  # no answer at all: the client sees the socket close
            return
        if fault is not None:
            response = _fault_response(fault)
        elif path == "/health":
            response = _json_response(405, _not_allowed(path, "GET"))
        elif path not in _POST_PATHS:
            response = _json_response(404, _not_found(path))
        else:
            try:
                headers = {name.lower(): value for name, value in self.headers.items()}
                response = app.post(path, headers, parse_qs(url.query), raw)
            except Exception:
                logger.exception("internal error while handling %s", path)
                error = ApiError(500, "internal-error", "internal error in the local receiver")
                response = _error_response(error)
        self._finish(path, response, started)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            raise _BodyError(400, "invalid-headers", "invalid Content-Length") from None
        if length > limit:
            if length <= limit * _DRAIN_LIMIT_FACTOR:
                self._drain(length)  # so the client reads our 413 instead of a reset
            else:
                self.close_connection = True
            raise _BodyError(413, "payload-too-large", f"body exceeds {limit} bytes")
        data = self.rfile.read(length)
        if len(data) < length:
            self.close_connection = True
            raise _BodyError(400, "invalid-json", "body shorter than Content-Length")
        return data

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)

    def _read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        try:
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return bytes(body)
                if len(body) + size > limit:
                    self.close_connection = True
                    raise _BodyError(413, "payload-too-large", f"body exceeds {limit} bytes")
                body += self.rfile.read(size)
                self.rfile.readline(8)
        except ValueError:
            self.close_connection = True
            raise _BodyError(400, "invalid-headers", "invalid chunked body") from None

    def _finish(self, path: str, response: _Response, started: float) -> None:
        if response.close:
            self.close_connection = True
        lines = [
            f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
        ]
        if response.body:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(response.body)}")
        if response.status == 405:
            lines.append("Allow: GET" if path == "/health" else "Allow: POST")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Counted and logged before the write, so a client that has its answer sees them.
        self._server.record(path, response.status)
        if logger.isEnabledFor(self._server.request_log_level):
            logger.log(
                self._server.request_log_level,
                '%s "%s %s" %d %dB%s %.1fms',
                self.client_address[0] if self.client_address else "-",
                self.command,
                _API_KEY_IN_URL.sub(r"\1***", self.path),
                response.status,
                len(response.body),
                "" if response.items is None else f" items={response.items}",
                (time.perf_counter() - started) * 1000,
            )
        self.wfile.write(head + response.body)


def _route(path: str) -> str:
    path = urlsplit(path).path
    return path.rstrip("/") or "/"


def _not_found(path: str) -> dict[str, Any]:
    return ApiError(404, "not-found", f"no such endpoint: {path}").body()


def _not_allowed(path: str, method: str) -> dict[str, Any]:
    return ApiError(405, "method-not-allowed", f"{path} only accepts {method}").body()


class _Server(ThreadingHTTPServer):
    """Tracks its open connections so ``stop()`` can end idle keep-alive ones at once."""

    daemon_threads = True
    request_queue_size = 128
    faults: FaultInjector | None = None

    def __init__(
        self,
        address: tuple[str, int],
        app: _Application,
        request_log_level: int,
        idle_timeout: float,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.request_log_level = request_log_level
        self.idle_timeout = idle_timeout
        self._active: set[socket.socket] = set()
        self._idle = threading.Condition()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._counts_lock = threading.Lock()
        self._stopping = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._wake_reader.close()
            self._wake_writer.close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): slow and useless here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle:
            self._active.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._idle:
                self._active.discard(request)
                self._idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)

    def record(self, path: str, status: int) -> None:
        with self._counts_lock:
            self._counts[(path, status)] += 1

    def counts(self) -> Counter[tuple[str, int]]:
        with self._counts_lock:
            return Counter(self._counts)

    def end_idle_connections(self) -> None:
        """Wake handler threads blocked reading the next request (their reads see EOF)."""
        with self._idle:
            for sock in self._active:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)

    def serve(self) -> None:
        """Accept connections until :meth:`stop_serving`; unlike ``serve_forever`` it wakes at
        once on stop instead of at the next poll, which keeps ``stop()`` instant."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping:
                ready = selector.select()
                if self._stopping:
                    break
                if any(key.fileobj is self.socket for key, _ in ready):
                    self._accept()

    def _accept(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def stop_serving(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._active, timeout)


class LocalReceiver:
    """An Altertable-compatible ingestion API on a local port, storing into DuckDB.

    ``with LocalReceiver() as r:`` starts it on an ephemeral port with an in-memory database;
    ``r.endpoint`` is its base URL, ``r.query(sql)`` runs SQL against
    ``altertable.analytics.events`` / ``identities``. ``api_keys=None`` accepts any non-empty
    key; ``environments=None`` accepts any environment. Request lines are logged on the
    ``opentelemetry_exporter_altertable.receiver`` logger at ``request_log_level``.
    ``faults`` (a ``FaultPlan``) makes ingestion requests fail on purpose, for delivery tests.
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
        idle_timeout: float = 60.0,
        faults: FaultPlan | FaultInjector | None = None,
    ) -> None:
        self.db_path = db_path
        self.api_keys = _as_tuple(api_keys, "api_keys")
        environment_names = _as_tuple(environments, "environments")
        self.environments = None if environment_names is None else frozenset(environment_names)
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.request_log_level = request_log_level
        self.idle_timeout = idle_timeout
        self.faults = FaultInjector(faults) if isinstance(faults, FaultPlan) else faults
        """Injects the given :class:`FaultPlan` into ingestion requests (see ``_faults``)."""
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LocalReceiver:
        """Open the database, bind the port and serve in a background thread."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the receiver is already running")
            store = Store(self.db_path)
            try:
                app = _Application(store, self.api_keys, self.environments, self.max_body_bytes)
                server = _Server(
                    (self.host, self.port), app, self.request_log_level, self.idle_timeout
                )
            except BaseException:
                store.close()
                raise
            server.faults = self.faults
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
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

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
