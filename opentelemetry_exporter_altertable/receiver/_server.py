"""The receiver's HTTP server: sockets in, :class:`~._app.Request` out, answers written back.

Its one job is the wire: screening requests before reading them (a foreign ``Origin`` or
``Host`` is refused, and so is an ingestion request without an accepted key, its body
discarded unkept), bounding the requests in work, handing a :class:`~._app.Request` to the
application, writing the answer, counting answers by route, logging request lines. Reading
bodies, the request deadline, the connection cap and masking keys in logs are the shared
listener's (:mod:`.._http_server`). Standard library only (``http.server``).

At most ``max_in_work`` POSTs per kind (ingestion; every other path, such as ``/query``: apart,
so neither starves the other) read and handle their bodies at once; the next waits up
to ``queue_wait`` seconds for a place, then is answered ``503`` with ``Retry-After`` (its body
read and discarded, so the connection survives). With the body limits of ``_validation`` this
bounds the memory of the requests in work, whatever is sent.

Each response goes out in one ``sendall`` (status line, headers and body in one buffer,
``Content-Length`` always set): a response split over several writes meets Nagle's algorithm
and the client's delayed ACK, which costs ~40 ms per request on keep-alive connections.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qs, urlsplit

from .._http_server import (
    BodyError,
    KeepAliveHandler,
    ListenerBounds,
    RequestTimeout,
    TrackingHTTPServer,
    loggable_target,
)
from ..version import __version__
from ._app import INGEST_PATHS, Application, Method, Request, Response, error_response
from ._validation import ApiError

__all__ = ["DEFAULT_MAX_IN_WORK", "DEFAULT_QUEUE_WAIT", "Server"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_WORK = 4
DEFAULT_QUEUE_WAIT = 2.0
_RETRY_AFTER_SECONDS = 1


class _Places:
    """A bounded number of places in work, with a count others can wait on."""

    def __init__(self, size: int) -> None:
        self._free = threading.BoundedSemaphore(size)
        self._changed = threading.Condition()
        self.taken = 0

    def acquire(self, timeout: float) -> bool:
        if not self._free.acquire(timeout=timeout):
            return False
        with self._changed:
            self.taken += 1
            self._changed.notify_all()
        return True

    def release(self) -> None:
        with self._changed:
            self.taken -= 1
            self._changed.notify_all()
        self._free.release()

    def wait_taken(self, count: int, timeout: float) -> bool:
        """Wait until exactly ``count`` places are taken (for tests and diagnostics)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.taken == count, timeout)


class _Handler(KeepAliveHandler):
    server_version = f"altertable-otel-receiver/{__version__}"
    logger = logger

    @property
    def _server(self) -> Server:
        return cast(Server, self.server)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: Method) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        path = _route(url.path)
        app = self._server.app
        headers = {name.lower(): value for name, value in self.headers.items()}
        query = parse_qs(url.query)
        # Screened and keys checked before a body is read: a refused request costs nothing.
        refusal = app.screen(headers)
        if refusal is None and app.faults is None:
            refusal = app.refuse_unkeyed(method, path, headers, query)
        if refusal is not None:
            self.discard_body(app.max_body_bytes)
            self._finish(path, refusal, started)
            return
        if method == "GET":
            request = Request(method, path, headers, query, b"", self._watch_disconnect)
            self._answer(request, started)
            return
        slots = self._server.slots(path)
        if not slots.acquire(timeout=self._server.queue_wait):
            self.discard_body(app.max_body_bytes)
            self._finish(path, _busy(), started)
            return
        try:
            try:
                body = self.read_body(app.max_body_bytes)
            except BodyError as exc:
                self._finish(path, _body_refusal(exc), started)
                return
            except RequestTimeout:
                self.close_connection = True
                timeout = ApiError(408, "request-timeout", "the request was not sent in time")
                self._finish(path, error_response(timeout, close=True), started)
                return
            self._answer(
                Request(method, path, headers, query, body, self._watch_disconnect), started
            )
        finally:
            slots.release()

    def _answer(self, request: Request, started: float) -> None:
        response = self._server.app.handle(request)
        if response.drop:
            self.close_connection = True  # no answer at all: the client sees the socket close
            return
        self._finish(request.path, response, started)

    def _finish(self, path: str, response: Response, started: float) -> None:
        if response.close:
            self.close_connection = True
        lines = [
            f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
        ]
        if response.body or response.stream is not None:
            lines.append(f"Content-Type: {response.content_type}")
        if response.stream is None:
            lines.append(f"Content-Length: {len(response.body)}")
        else:
            lines.append("Transfer-Encoding: chunked")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if self.closing():
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Counted and logged before the write, so a client that has its answer sees them.
        self._server.record(self._server.app.route_of(path), response.status)
        if logger.isEnabledFor(self._server.request_log_level):
            logger.log(
                self._server.request_log_level,
                '%s "%s %s" %d %dB%s %.1fms',
                self.client_address[0] if self.client_address else "-",
                self.command,
                loggable_target(self.path),
                response.status,
                len(response.body),
                "" if response.items is None else f" items={response.items}",
                (time.perf_counter() - started) * 1000,
            )
        self.prepare_write()
        if response.stream is None:
            self.wfile.write(head + response.body)
        else:
            self._write_stream(head, response)

    def _write_stream(self, head: bytes, response: Response) -> None:
        """Chunked transfer; a client that leaves ends (closes) the stream, which cancels it."""
        stream = response.stream
        assert stream is not None
        try:
            pending = head + (_chunk(response.body) if response.body else b"")
            for data in stream:
                if data:
                    self.wfile.write(pending + _chunk(data))
                    pending = b""
            self.wfile.write(pending + b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
            logger.debug("client left during a streamed answer")
        finally:
            stream.close()

    @contextlib.contextmanager
    def _watch_disconnect(self, cancel: Callable[[], None]) -> Iterator[None]:
        """Call ``cancel`` if the client closes its end while the block runs."""
        done = threading.Event()
        sock = self.connection

        def watch() -> None:
            while not done.is_set():
                try:
                    readable, _, _ = select.select([sock], [], [], 0.1)
                    if not readable:
                        continue
                    if sock.recv(1, socket.MSG_PEEK) == b"" and not done.is_set():
                        cancel()
                    return  # closed, or the next request already arrived: stop watching
                except (OSError, ValueError):
                    if not done.is_set():
                        cancel()
                    return

        watcher = threading.Thread(target=watch, name="altertable-receiver-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()  # the watcher notices within 0.1 s; not joined, so no query waits on it


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _body_refusal(exc: BodyError) -> Response:
    code = "payload-too-large" if exc.status == 413 else "invalid-body"
    return error_response(ApiError(exc.status, code, str(exc)), close=True)


def _busy() -> Response:
    error = ApiError(503, "busy", "too many requests in progress; retry shortly")
    response = error_response(error)
    return Response(503, response.body, headers=(("Retry-After", str(_RETRY_AFTER_SECONDS)),))


def _route(path: str) -> str:
    path = urlsplit(path).path
    return path.rstrip("/") or "/"


class Server(TrackingHTTPServer):
    """Tracks its open connections so ``stop()`` can end idle keep-alive ones at once."""

    def __init__(
        self,
        address: tuple[str, int],
        app: Application,
        request_log_level: int,
        bounds: ListenerBounds,
        *,
        max_in_work: int = DEFAULT_MAX_IN_WORK,
        queue_wait: float = DEFAULT_QUEUE_WAIT,
    ) -> None:
        self.app = app
        self.max_in_work = max_in_work
        self.queue_wait = queue_wait
        self._ingest_slots = _Places(max_in_work)
        self._other_slots = _Places(max_in_work)
        self.request_log_level = request_log_level
        self._counts: Counter[tuple[str, int]] = Counter()
        self._counts_lock = threading.Lock()
        self._stopping = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        try:
            super().__init__(address, _Handler, bounds)
        except BaseException:
            self._wake_reader.close()
            self._wake_writer.close()
            raise

    def slots(self, path: str) -> _Places:
        """The places in work for a POST to ``path``: ingestion shares one set, the rest
        another, so a slow query never holds up ingestion."""
        return self._ingest_slots if path in INGEST_PATHS else self._other_slots

    def record(self, path: str, status: int) -> None:
        with self._counts_lock:
            self._counts[(path, status)] += 1

    def counts(self) -> Counter[tuple[str, int]]:
        with self._counts_lock:
            return Counter(self._counts)

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

