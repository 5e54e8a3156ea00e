"""The bridge's HTTP front: OTLP/HTTP on a port, bounded work, a clean stop.

Standard library only (``http.server``), in the local receiver's style: each answer goes out in
one write (status line, headers and body together, ``Content-Length`` always set), so keep-alive
senders never wait on Nagle's algorithm.

Memory and work are bounded: connections, the time to send a request, body sizes and the
bytes of all bodies held at once by the listener's :class:`~.._http_server.ListenerBounds`.
A body is read first (never past ``max_body_bytes``), then a place in work is taken: at most
``max_in_flight`` requests are decoded and delivered at once, so slow senders hold bytes,
never places. A request beyond either bound is answered 503 with ``Retry-After`` at once,
never queued.

Browsers and DNS rebinding are screened before a body is read: a request carrying an
``Origin`` not listed in ``allow_origins`` gets 403, and so does, when bound to loopback, a
``Host`` that is not a loopback name. Bound beyond loopback it does not start without a token.

``stop()`` stops accepting, lets the requests already read finish (their calls delivered or
spooled, within the delivery timeout), then shuts the delivery down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import replace
from http import HTTPStatus
from typing import cast
from urllib.parse import urlsplit

from .._http_server import (
    BodyError,
    ByteBudget,
    KeepAliveHandler,
    ListenerBounds,
    RequestTimeout,
    TrackingHTTPServer,
    cut,
    endpoint_url,
    host_name,
    is_loopback_host,
    loggable_target,
)
from ..version import __version__
from ._app import PATHS, Answer, Bridge, error

_logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318
DEFAULT_MAX_IN_FLIGHT = 8


class _Handler(KeepAliveHandler):
    server_version = f"altertable-otel-bridge/{__version__}"
    logger = _logger

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        headers = {name.lower(): value for name, value in self.headers.items()}
        refusal = self._server.screen(headers)
        if refusal is not None:
            self._send(refusal)
        elif path in PATHS:
            self._send(error(405, f"{path} only accepts POST"), allow="POST")
        else:
            self._send(error(404, f"no such endpoint: {cut(path)}"))

    def do_POST(self) -> None:
        server = self._server
        bridge = server.bridge
        path = urlsplit(self.path).path.rstrip("/")
        headers = {name.lower(): value for name, value in self.headers.items()}
        protobuf = bool(bridge.encoding(headers))
        refusal = server.screen(headers, protobuf)
        if refusal is not None:
            self.discard_body(bridge.max_body_bytes)
            self._send(refusal)
            return
        if path not in PATHS:
            self.close_connection = True
            self._send(error(404, f"no such endpoint: {cut(path)}", protobuf))
            return
        if not bridge.authorized(headers):
            self.close_connection = True  # the body is not worth reading
            self._send(error(401, "missing or wrong bearer token", protobuf))
            return
        if server.stopping or not server.has_place():
            self._busy(protobuf)
            return
        # The body is read before a place in work is taken: a slow sender holds the bytes it
        # sent (from the listener's budget), never one of the places.
        raw = self._read(protobuf)
        if raw is None:
            return
        if server.stopping or not server.slots.acquire(blocking=False):
            self._busy(protobuf)
            return
        try:
            try:
                answer = bridge.handle(path, headers, raw)
            except Exception:  # a bug must not kill the connection's thread silently
                _logger.exception("bridge: internal error handling %s", path)
                answer = error(500, "internal error in the bridge", protobuf)
            self._send(answer, counted=True)
        finally:
            server.slots.release()

    def _read(self, protobuf: bool) -> bytes | None:
        """The body, or ``None`` once the answer saying why not is sent."""
        bridge = self._server.bridge
        try:
            return self.read_body(bridge.max_body_bytes)
        except BodyError as exc:
            retry = bridge.retry_after if exc.status == 503 else 0
            self._send(error(exc.status, str(exc), protobuf, retry))
        except RequestTimeout:
            self.close_connection = True
            self._send(error(408, "the request was not sent in time", protobuf))
        return None

    def _busy(self, protobuf: bool) -> None:
        server = self._server
        self.close_connection = True
        why = "the bridge is stopping" if server.stopping else "the bridge is at capacity"
        self._send(error(503, f"{why}; retry later", protobuf, server.bridge.retry_after))

    def _send(self, answer: Answer, allow: str | None = None, counted: bool = False) -> None:
        if not counted and self.command == "POST":
            path = urlsplit(self.path).path.rstrip("/")
            headers = {name.lower(): value for name, value in self.headers.items()}
            self._server.bridge.count(path, headers, answer.status)
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
        if self.closing():
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        _logger.debug("%s %s -> %d", self.command, loggable_target(self.path), answer.status)
        self.prepare_write()
        with contextlib.suppress(OSError):  # the sender went away; nothing to tell it
            self.wfile.write(head + answer.body)


class _Server(TrackingHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        bridge: Bridge,
        max_in_flight: int,
        bounds: ListenerBounds,
        allow_origins: frozenset[str],
    ) -> None:
        self.bridge = bridge
        self.slots = threading.BoundedSemaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self.allow_origins = allow_origins
        self.screen_host = is_loopback_host(address[0])
        self.stopping = False
        super().__init__(address, _Handler, bounds)
        self.budget = ByteBudget(bounds.max_buffered_bytes)

    def has_place(self) -> bool:
        """Whether a place in work is free now (checked before a body is read, so a bridge
        at capacity answers 503 at once; taken only once the body is read)."""
        if not self.slots.acquire(blocking=False):
            return False
        self.slots.release()
        return True

    def screen(self, headers: dict[str, str], protobuf: bool = False) -> Answer | None:
        """403 for a browser's request from an origin not listed, or (bound to loopback) a
        ``Host`` that is not a loopback name: a rebinding page cannot use the bridge's key."""
        origin = headers.get("origin")
        if origin is not None and origin.strip().rstrip("/").lower() not in self.allow_origins:
            return error(403, "requests from web origins not allowed are refused", protobuf)
        host = headers.get("host")
        if self.screen_host and host is not None and not is_loopback_host(host_name(host)):
            return error(403, "Host is not a loopback name", protobuf)
        return None

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
        idle_timeout: float | None = None,
        bounds: ListenerBounds | None = None,
        allow_origins: Iterable[str] = (),
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.bridge = bridge
        self.host = host
        self.port = port
        self.max_in_flight = max_in_flight
        bounds = bounds or bridge.bounds
        if idle_timeout is not None:
            bounds = replace(bounds, idle_timeout=idle_timeout)
        self.bounds = bounds
        self.allow_origins = frozenset(o.strip().rstrip("/").lower() for o in allow_origins)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BridgeServer:
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the bridge is already running")
            self.bridge.check_host(self.host)
            server = _Server(
                (self.host, self.port),
                self.bridge,
                self.max_in_flight,
                self.bounds,
                self.allow_origins,
            )
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
        return endpoint_url(self.host, self.port)
