"""The listener both HTTP front ends (the local receiver, the OTLP bridge) stand on.

One job: accept connections and read requests within fixed bounds, whatever a client sends,
and keep track of the open connections so a server can stop promptly.

- **Connections** are capped (:attr:`ListenerBounds.max_connections`, never above what the
  process's file limit leaves free): one more is answered ``503`` with ``Retry-After`` and
  closed at once, without a thread. An ``accept`` that fails for want of file descriptors
  (``EMFILE``) waits a little before the next try instead of spinning.
- **Time**: a request has :attr:`ListenerBounds.request_deadline` seconds from its first byte
  to its last (request line, headers and body together), however slowly it trickles; a
  keep-alive connection may wait :attr:`ListenerBounds.idle_timeout` for its next request.
- **Bodies**: ``Content-Length`` or chunked, never past the limit; a chunk size that is not a
  plain hexadecimal number (``-1`` included) is refused, so nothing is read "to the end".
  A front end that reads bodies before taking a place in work gives the server a
  :class:`ByteBudget`: bytes are taken from it 64 KiB at a time as they are read, and given
  back once the request is answered.
- **Logs and counters**: a logged request target is cut to 200 characters with its key or
  token masked however the query spells the name; answers are counted by route, and any path
  that is not a route is counted as :data:`OTHER_ROUTE`.

Each connection has one thread (the standard library's model): with the cap, threads are
bounded too, and a blocked read costs a thread and no CPU. Requests in work (bodies being
read and handled) are bounded separately by each front end.

It also binds without ``HTTPServer``'s reverse DNS lookup (``getfqdn``), which is slow and
tells us nothing. Shared pieces of the two front ends live here too: the base URL a client
uses to reach a bound address (:func:`endpoint_url`), reading a ``Host`` header
(:func:`host_name`) and telling loopback names (:func:`is_loopback_host`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote_plus

_logger = logging.getLogger(__name__)

#: The counter key of every path that is not a route (so a client cannot grow the counters).
OTHER_ROUTE = "(other)"
#: Query parameter names (compared case-insensitively, percent-decoded) whose value is masked.
SECRET_NAMES = frozenset({"apikey", "api_key", "api-key", "token", "access_token", "key"})
LOG_CUT = 200
_FD_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 0.05
#: File descriptors left for everything else (database, spool, outgoing connections).
_FD_RESERVE = 64


@dataclass(frozen=True)
class ListenerBounds:
    """What one listener accepts at most; every front end (HTTP, gRPC) reads the same figures.

    Figures are per request unless said otherwise.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    """Body bytes on the wire, and again once decompressed."""
    max_records: int = 65_536
    """Spans plus log records (8 times the OpenTelemetry Collector's default batch)."""
    max_elements: int = 1_000_000
    """Every message inside a request: records, events, links, attributes, values."""
    max_connections: int = 256
    """Open connections (each has a thread); clamped below the process's file limit."""
    request_deadline: float = 10.0
    """Seconds from a request's first byte to its last (headers and body)."""
    max_buffered_bytes: int = 128 * 1024 * 1024
    """Body bytes held at once by all requests together, being read or in work (where a
    front end reads bodies before taking a place in work, as the bridge does)."""
    idle_timeout: float = 60.0
    """Seconds a keep-alive connection may wait for its next request."""

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_records",
            "max_elements",
            "max_connections",
            "max_buffered_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not (self.request_deadline > 0 and self.idle_timeout > 0):
            raise ValueError("request_deadline and idle_timeout must be positive")


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered so that many connections cannot exhaust the file limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, int(soft) - _FD_RESERVE))


# --------------------------------------------------------------------------- what is logged


def cut(text: str, limit: int = LOG_CUT) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis says it was)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def loggable_target(target: str) -> str:
    """A request target fit for a log line: secrets in its query masked, cut to 200 chars.

    A parameter is secret when its name, percent-decoded and in lower case, is one of
    :data:`SECRET_NAMES` (``apiKey``, ``api%4Bey``, ``%61piKey`` and ``APIKEY`` alike).
    """
    path, mark, query = target.partition("?")
    if not mark:
        return cut(target)
    parts = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        secret = equals and unquote_plus(name).strip().lower() in SECRET_NAMES
        parts.append(f"{name}=***" if secret else pair)
    return cut(f"{path}?{'&'.join(parts)}")


# --------------------------------------------------------------------------- Host and Origin


def host_name(host: str) -> str:
    """``Host`` without its port, lower case: ``[::1]:80`` -> ``::1``, ``a:80`` -> ``a``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, colon, _ = host.rpartition(":")
    return name if colon and ":" not in name else host


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (``127.x.x.x``, ``::1``): reachable from here only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def endpoint_url(host: str, port: int) -> str:
    """The base URL a client here uses for a server bound to ``host`` (a wildcard via
    loopback), e.g. ``http://127.0.0.1:4318``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --------------------------------------------------------------------------- reading


class RequestTimeout(TimeoutError):
    """The request was not read within its deadline."""


class BodyError(Exception):
    """The body cannot be read: ``status`` 400 (malformed framing) or 413 (too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _DeadlineSocketReader(io.RawIOBase):
    """Socket reads bounded by the request's deadline rather than a per-read timeout.

    Between requests a read may wait ``idle`` seconds; the first byte of a request starts its
    deadline, and every read after that waits only for what is left of it.
    """

    def __init__(self, sock: socket.socket, idle: float, deadline: float) -> None:
        self._sock = sock
        self._idle = idle
        self._allowed = deadline
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        deadline = self.deadline
        if deadline is None:
            self._sock.settimeout(self._idle)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout("the request was not read within its deadline")
            self._sock.settimeout(left)
        try:
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            if deadline is None:
                raise
            raise RequestTimeout("the request was not read within its deadline") from None
        if deadline is None and count:
            self.deadline = time.monotonic() + self._allowed
        return count


def _announces_body(headers: Any) -> bool:
    """True when a request's head says a body follows: any ``Transfer-Encoding``, or a
    ``Content-Length`` that is not zero (an unreadable one included)."""
    if headers.get("Transfer-Encoding", "").strip():
        return True
    length = headers.get("Content-Length")
    return length is not None and length.strip() != "0"


def parse_chunk_size(line: bytes) -> int:
    """The size on a chunk-size line: plain hexadecimal digits only (``-1``, ``+5``, ``0x5``
    and blanks inside are refused), extensions after ``;`` ignored."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        raise BodyError(400, "invalid chunked body")
    return int(digits, 16)


class ByteBudget:
    """A number of bytes that requests take from and give back (thread-safe, never waits)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()

    def take(self, count: int) -> bool:
        with self._lock:
            if count > self._free:
                return False
            self._free -= count
            return True

    def give(self, count: int) -> None:
        with self._lock:
            self._free += count


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive within the listener's bounds, and no Nagle delay.

    Answers go out in one write; with Nagle's algorithm on, a keep-alive client's delayed ACK
    would still cost about 40 ms per request. Bodies are read with :meth:`read_body` (or
    skipped with :meth:`discard_body`), both within the request's deadline. A request that
    announced a body (``Content-Length`` or ``Transfer-Encoding``) which was neither read nor
    discarded closes its connection after the answer: read as the next request, that body
    would be a request smuggled past any proxy in front (a GET with a body, say).
    """

    protocol_version = "HTTP/1.1"
    sys_version = ""
    #: The logger a front end's handler lines go to.
    logger = _logger

    def setup(self) -> None:
        super().setup()
        bounds = cast(TrackingHTTPServer, self.server).bounds
        self._reader = _DeadlineSocketReader(
            self.connection, bounds.idle_timeout, bounds.request_deadline
        )
        self.rfile = io.BufferedReader(self._reader, 65536)
        with contextlib.suppress(OSError):  # not TCP, e.g. a Unix socket
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        self._reader.deadline = None  # idle until the next request's first byte
        self._body_unread = False
        try:
            super().handle_one_request()
        finally:
            self._give_back()
            if self._body_unread:  # whatever the handler did: never parse a body as a request
                self.close_connection = True

    _body_unread = False

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._body_unread = ok and _announces_body(self.headers)
        return ok

    def closing(self) -> bool:
        """Whether the connection closes after this answer (its ``Connection: close``): asked
        for, or a body announced and left unread. A handler calls it as it writes the head."""
        if self._body_unread:
            self.close_connection = True
        return bool(self.close_connection)

    _held = 0

    def _take(self, count: int) -> None:
        budget = cast(TrackingHTTPServer, self.server).budget
        if budget is None:
            return
        if not budget.take(count):
            self.close_connection = True
            raise BodyError(503, "the server holds as many bodies as it may; retry shortly")
        self._held += count

    def _give_back(self) -> None:
        budget = cast(TrackingHTTPServer, self.server).budget
        if self._held and budget is not None:
            budget.give(self._held)
        self._held = 0

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's own complaints (bad request lines, timeouts): cut, secrets masked.
        self.logger.debug("%s %s", self.address_string(), loggable_target(format % args))

    def prepare_write(self) -> None:
        """Give the answer's write its own time (the request's deadline may be spent)."""
        with contextlib.suppress(OSError):
            self.connection.settimeout(cast(TrackingHTTPServer, self.server).bounds.idle_timeout)

    # -- bodies -----------------------------------------------------------------------------

    def read_body(self, limit: int) -> bytes:
        """The body (``Content-Length`` or chunked), never more than ``limit`` bytes.

        Raises :class:`BodyError` (400 bad framing or short body, 413 too large; the
        connection is then closed unless a small excess was drained; 503 when the handler's
        server's ``budget`` of buffered bytes is spent) and :class:`RequestTimeout`. With a
        budget, bytes are counted as they are read, 64 KiB at a time, and given back when
        the request is answered: a slow sender holds what it sent, not what it announced.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked(limit)
            self._body_unread = False
            return body
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            raise BodyError(400, "invalid Content-Length") from None
        if length > limit:
            if length <= limit * 4:
                self._drain(length)  # so the client reads our 413 instead of a reset
            else:
                self.close_connection = True
            raise BodyError(413, f"body exceeds {limit} bytes")
        try:
            body = bytes(self._read_counted(length))
        except BodyError:
            self.close_connection = True
            raise
        self._body_unread = False
        return body

    def _read_counted(self, length: int) -> bytearray:
        """``length`` bytes, each 64 KiB taken from the budget before it is read."""
        body = bytearray()
        while len(body) < length:
            step = min(length - len(body), 1 << 16)
            self._take(step)
            data = self.rfile.read(step)
            body += data
            if len(data) < step:
                raise BodyError(400, "body shorter than announced")
        return body

    def discard_body(self, limit: int) -> None:
        """Skip a body we will not use, without keeping it; close when that costs too much."""
        length_header = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        try:
            length = int(length_header) if length_header is not None else 0
        except ValueError:
            length = -1
        if chunked or not 0 <= length <= limit * 4:
            self.close_connection = True
            return
        try:
            self._drain(length)
        except (OSError, RequestTimeout):
            self.close_connection = True

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)
        self._body_unread = False  # every announced byte is read

    def _read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        try:
            while True:
                size = parse_chunk_size(self.rfile.readline(1024))
                if size == 0:
                    for _ in range(64):  # trailers, a bounded number of them
                        if not self.rfile.readline(1024).strip():
                            break
                    return bytes(body)
                if len(body) + size > limit:
                    raise BodyError(413, f"body exceeds {limit} bytes")
                body += self._read_counted(size)
                if self.rfile.readline(8).strip():
                    raise BodyError(400, "invalid chunked body")
        except BodyError:
            self.close_connection = True
            raise


class TrackingHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that knows and caps its open connections (IPv4 or IPv6)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        bounds: ListenerBounds | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.bounds = bounds or ListenerBounds()
        self.max_connections = connection_cap(self.bounds.max_connections)
        self.refused_connections = 0
        """Connections answered ``503`` at once because the cap was reached."""
        self.budget: ByteBudget | None = None
        """Set by a front end that reads bodies before taking a place in work: what the
        bodies held at once may add up to (``None``: not counted)."""
        self._connections: set[socket.socket] = set()
        self._idle = threading.Condition()
        self._last_fd_warning = 0.0
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[Any, Any]:
        try:
            return self.socket.accept()
        except OSError as exc:
            if exc.errno in _FD_ERRORS:
                # The listening socket stays readable: trying again at once would spin.
                now = time.monotonic()
                if now - self._last_fd_warning > 60:
                    self._last_fd_warning = now
                    _logger.warning("cannot accept connections: %s; pausing", exc.strerror)
                time.sleep(_ACCEPT_PAUSE)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle:
            full = len(self._connections) >= self.max_connections
            if not full:
                self._connections.add(request)
        if full:
            self.refused_connections += 1
            _refuse_connection(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._idle:
                self._connections.discard(request)
                self._idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        _logger.debug("connection from %s failed", client_address, exc_info=True)

    @property
    def open_connections(self) -> int:
        with self._idle:
            return len(self._connections)

    def end_idle_connections(self) -> None:
        """Wake handler threads blocked reading the next request (their reads see EOF)."""
        with self._idle:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every connection is closed; False if ``timeout`` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._connections, timeout)


_REFUSAL_BODY = b"too many open connections; retry shortly\n"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


def _refuse_connection(sock: socket.socket) -> None:
    """Answer 503 without reading or waiting (a full send buffer drops it), then close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_REFUSAL)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()
