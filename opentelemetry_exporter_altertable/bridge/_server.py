"""The bridge's HTTP front: OTLP/HTTP on a port, bounded work, a clean stop.

Standard library only (``http.server``), in the local receiver's style: each answer goes out in
one write (status line, headers and body together, ``Content-Length`` always set), so keep-alive
senders never wait on Nagle's algorithm.

Memory and work are bounded: a body is read only while fewer than ``max_in_flight`` requests
are being handled, and never past ``max_body_bytes``; a request beyond the bound is answered
503 with ``Retry-After`` at once, never queued. ``stop()`` stops accepting, lets the requests
already read finish (their calls delivered or spooled, within the delivery timeout), then
shuts the delivery down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import urlsplit

from .._http_server import KeepAliveHandler, TrackingHTTPServer
from ..version import __version__
from ._app import PATHS, Answer, Bridge, error

_logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318
DEFAULT_MAX_IN_FLIGHT = 8
#: A body this many times the limit is still drained so the sender reads our 413.
_DRAIN_FACTOR = 4


class _TooLarge(Exception):
    pass


class _BadBody(Exception):
    pass


class _Handler(KeepAliveHandler):
    server_version = f"altertable-otel-bridge/{__version__}"

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path in PATHS:
            self._send(error(405, f"{path} only accepts POST"), allow="POST")
        else:
            self._send(error(404, f"no such endpoint: {path[:200]}"))

    def do_POST(self) -> None:
        server = self._server
        bridge = server.bridge
        path = urlsplit(self.path).path.rstrip("/")
        headers = {name.lower(): value for name, value in self.headers.items()}
        protobuf = bool(bridge.encoding(headers))
        if path not in PATHS:
            self.close_connection = True
            self._send(error(404, f"no such endpoint: {path[:200]}", protobuf))
            return
        if not bridge.authorized(headers):
            self.close_connection = True  # the body is not worth reading
            self._send(error(401, "missing or wrong bearer token", protobuf))
            return
        if server.stopping or not server.slots.acquire(blocking=False):
            self.close_connection = True
            why = "the bridge is stopping" if server.stopping else "the bridge is at capacity"
            self._send(error(503, f"{why}; retry later", protobuf, bridge.retry_after))
            return
        try:
            try:
                raw = self._read_body(bridge.max_body_bytes)
            except _TooLarge:
                self._send(error(413, f"body exceeds {bridge.max_body_bytes} bytes", protobuf))
                return
            except _BadBody as exc:
                self.close_connection = True
                self._send(error(400, str(exc), protobuf))
                return
            try:
                answer = bridge.handle(path, headers, raw)
            except Exception:  # a bug must not kill the connection's thread silently
                _logger.exception("bridge: internal error handling %s", path)
                answer = error(500, "internal error in the bridge", protobuf)
            self._send(answer, counted=True)
        finally:
            server.slots.release()

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            raise _BadBody("invalid Content-Length") from None
        if length > limit:
            if length <= limit * _DRAIN_FACTOR:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            else:
                self.close_connection = True
            raise _TooLarge
        data = self.rfile.read(length)
        if len(data) < length:
            raise _BadBody("body shorter than Content-Length")
        return data

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
                    raise _TooLarge
                body += self.rfile.read(size)
                self.rfile.readline(8)
        except ValueError:
            raise _BadBody("invalid chunked body") from None

    def _send(self, answer: Answer, allow: str | None = None, counted: bool = False) -> None:
        if not counted and self.command == "POST":
            path = urlsplit(self.path).path.rstrip("/")
            headers = {name.lower(): value for name, value in self.headers.items()}
            self._server.bridge.count(path[:200], headers, answer.status)
        lines = [
            f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
        ]
        if allow:
            lines.append(f"Allow: {allow}")
        lines.extend(f"{name}: {value}" for name, value in answer.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        _logger.debug("%s %s -> %d", self.command, self.path[:200], answer.status)
        with contextlib.suppress(OSError):  # the sender went away; nothing to tell it
            self.wfile.write(head + answer.body)


class _Server(TrackingHTTPServer):
    def __init__(
        self, address: tuple[str, int], bridge: Bridge, max_in_flight: int, idle_timeout: float
    ) -> None:
        self.bridge = bridge
        self.slots = threading.BoundedSemaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.stopping = False
        super().__init__(address, _Handler)

    def wait_handled(self, timeout: float) -> bool:
        """Wait until no request is being handled (every slot free)."""
        taken = 0
        try:
            for _ in range(self.max_in_flight):
                if not self.slots.acquire(timeout=timeout):
                    return False
                taken += 1
            return True
        finally:
            for _ in range(taken):
                self.slots.release()


class BridgeServer:
    """The bridge on a port: ``with BridgeServer(bridge) as s:`` gives ``s.endpoint``.

    ``port=0`` picks a free port (tests). ``stop()`` is idempotent and safe from a signal
    handler's thread.
    """

    def __init__(
        self,
        bridge: Bridge,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        idle_timeout: float = 60.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.bridge = bridge
        self.host = host
        self.port = port
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BridgeServer:
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the bridge is already running")
            server = _Server((self.host, self.port), self.bridge, self.max_in_flight,
                             self.idle_timeout)  # fmt: skip
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"altertable-bridge-{server.server_port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            self.port = server.server_port
            return self

    def stop(self, grace: float | None = None, *, shutdown_delivery: bool = True) -> None:
        """Stop accepting, finish the requests being handled, then shut delivery down.

        ``grace`` (default: the delivery timeout plus a second) bounds the wait for requests
        already read; each of them ends delivered, spooled, or answered 503. A delivery shared
        with another front (the gRPC one) is left running with ``shutdown_delivery=False``.
        """
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None or thread is None:
            return
        delivery = self.bridge.delivery
        wait = delivery.config.timeout + 1.0 if grace is None else grace
        server.stopping = True
        server.shutdown()
        thread.join(wait)
        server.server_close()
        server.end_idle_connections()
        if not server.wait_handled(wait):
            _logger.warning("bridge: requests still running after %.1fs; stopping anyway", wait)
        if shutdown_delivery:
            delivery.shutdown(timeout_millis=1000)

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:4318`` (append ``/v1/traces`` or ``/v1/logs``)."""
        if self._server is None:
            raise RuntimeError("the bridge is not running; call start() first")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"
