"""A small fault-injecting HTTP/1.1 server on 127.0.0.1 for delivery tests.

Tests talk to it over real loopback sockets, exactly as the exporter talks to the API: keep-alive
connections, ``Content-Length`` bodies, gzip request bodies. It records every request and answers
from a programmable script, so a test can stage an outage, a slow or hung server, a refusal of one
bad item, or an answer that closes the connection, and then count exactly what arrived and what
was accepted.

How an answer is chosen for a request on ``path``, first match wins:

1. the next queued answer of ``script(path, [...])`` (each is used once, in order);
2. the rules added with ``add_rule`` (in order; a rule returns ``None`` to pass);
3. the default for that path, else the server-wide default (``200 {"ok": true, ...}``).

    with FaultServer() as server:
        server.script("/track", [Answer(503, headers={"Retry-After": "1"}), Answer(200)])
        server.add_rule(reject_items(lambda item: item.get("event") == "bad"))
        ...  # point an exporter at server.endpoint
        assert len(server.accepted_items("/track")) == 49

Every answer is written in one ``send`` with a ``Content-Length`` header. ``stop()`` returns
promptly even while handlers are delayed or hung: it wakes them, shuts their sockets and does
not wait for stragglers longer than a second.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Answer",
    "FaultServer",
    "Request",
    "Rule",
    "bad_request",
    "body_larger_than",
    "close",
    "env_not_found_400",
    "env_not_found_422",
    "forbidden",
    "hang",
    "ok",
    "ok_false",
    "reject_items",
    "retry_later",
    "tls_context",
    "tls_files",
    "trickle",
    "unauthorized",
]

_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


@dataclass(frozen=True)
class Answer:
    """What the server does with one request.

    ``body``: bytes or str are sent as is, anything else as JSON; ``None`` means the natural
    body: ``{"ok": true, "task_id": ..., "error_code": null}`` for a 2xx, empty otherwise.
    ``delay`` seconds pass before answering (``stop()`` cuts them short, then the connection is
    closed without an answer). ``close_connection`` closes the socket without any answer.
    ``trickle`` > 0 sends the head at once, then the body one byte every ``trickle`` seconds:
    a server that is never silent long enough to trip a per-read timeout.
    ``encoding`` (``gzip``, ``deflate``, or ``deflate-raw`` for the unwrapped deflate some
    servers send) compresses the body and names it in ``Content-Encoding``.
    ``truncate`` sends only that many bytes of the body (the full ``Content-Length`` is
    announced), then closes the connection: a body cut mid-read.
    ``stall`` sends the head and ``stall`` bytes of the body at once, then waits (until
    ``stop()``) without a byte more: a body that times out mid-read.
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    close_connection: bool = False
    trickle: float = 0.0
    encoding: str = ""
    truncate: int | None = None
    stall: int | None = None

    @property
    def accepts(self) -> bool:
        """Whether a client should count this answer as an acceptance (2xx and not ok: false)."""
        if not 200 <= self.status < 300 or self.close_connection:
            return False
        return not (isinstance(self.body, Mapping) and self.body.get("ok") is False)


@dataclass
class Request:
    """One request as the server received it (body decoded from gzip and JSON when possible)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names lower-cased."""
    raw_body: bytes
    """The body as sent on the wire (still compressed when it was)."""
    body: Any
    """The decoded JSON body, or ``None`` when it is not JSON."""
    client_port: int
    connection: int
    """Serial number of the TCP connection the request came on (1 for the first accepted)."""
    received_at: float
    answer: Answer | None = None
    """The answer chosen; ``None`` until chosen."""
    answered: bool = False
    """Whether a response was written (False when the connection was closed instead)."""
    target: str = ""
    """The request line's target as sent: ``host:port`` for a CONNECT, an absolute URL for a
    request sent to a proxy, else the path and query."""

    @property
    def items(self) -> list[Any]:
        """The JSON items: the array's elements, or the single object as a one-item list."""
        if isinstance(self.body, list):
            return list(self.body)
        return [] if self.body is None else [self.body]

    @property
    def status(self) -> int | None:
        """The status written, ``None`` when no response was written."""
        return self.answer.status if self.answer is not None and self.answered else None

    @property
    def accepted(self) -> bool:
        return self.answered and self.answer is not None and self.answer.accepts


Rule = Callable[[Request], "Answer | None"]


# ---------------------------------------------------------------------------- ready answers


def ok() -> Answer:
    return Answer(200)


def ok_false(error_code: str = "insert-failed") -> Answer:
    """A 200 whose body says the call failed (must be handled as a 400)."""
    return Answer(200, body={"ok": False, "error_code": error_code})


def bad_request(error_code: str = "invalid-event", status: int = 400) -> Answer:
    return Answer(status, body={"ok": False, "error_code": error_code})


def unauthorized() -> Answer:
    """Missing or wrong key: 401 with an empty body, as the API answers."""
    return Answer(401, body=b"")


def forbidden() -> Answer:
    return Answer(403, body=b"")


def env_not_found_400() -> Answer:
    """Unknown environment, in the API's own shape."""
    return Answer(400, body={"ok": False, "error_code": "environment-not-found"})


def env_not_found_422() -> Answer:
    """Unknown environment, in the client specification's shape."""
    return Answer(
        422,
        body={
            "error": "environment-not-found",
            "message": "Environment not found",
            "details": {},
        },
    )


def retry_later(status: int = 503, retry_after: str | None = None) -> Answer:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return Answer(status, body=b"", headers=headers)


def close() -> Answer:
    """Close the connection without answering."""
    return Answer(close_connection=True)


def trickle(pause: float = 0.2, status: int = 200) -> Answer:
    """A 200 whose body arrives one byte every ``pause`` seconds."""
    return Answer(status, trickle=pause)


def hang(seconds: float = 3600.0) -> Answer:
    """Answer (200) only after ``seconds``; ``stop()`` cuts the wait short."""
    return Answer(200, delay=seconds)


# ---------------------------------------------------------------------------- ready rules


def reject_items(
    predicate: Callable[[Any], bool],
    status: int = 400,
    error_code: str = "invalid-event",
) -> Rule:
    """Refuse the whole request when any item matches ``predicate``; pass otherwise."""

    def rule(request: Request) -> Answer | None:
        if any(isinstance(item, dict) and predicate(item) for item in request.items):
            return bad_request(error_code, status)
        return None

    return rule


def body_larger_than(limit: int, *, wire: bool = True) -> Rule:
    """413 when the body exceeds ``limit`` bytes (on the wire, or decoded when ``wire=False``)."""

    def rule(request: Request) -> Answer | None:
        size = len(request.raw_body)
        if not wire and request.body is not None:
            size = len(json.dumps(request.body, separators=(",", ":")).encode())
        if size > limit:
            return Answer(413, body=b"")
        return None

    return rule


# ---------------------------------------------------------------------------- the server


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60.0  # an idle keep-alive connection is dropped after this
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_CONNECT(self) -> None:  # a client using this server as its HTTPS proxy
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        owner = self.server.owner
        raw = self._read_body()
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            raw_body=raw,
            body=_decode(raw, headers.get("content-encoding", "")),
            client_port=self.client_address[1],
            connection=self.server.connection_number(self.connection),
            received_at=time.monotonic(),
            target=self.path,
        )
        answer = owner._record_and_choose(record)
        if answer.delay > 0 and owner._stopping.wait(answer.delay):
            self._drop()
            return
        if answer.close_connection or owner._stopping.is_set():
            self._drop()
            return
        data = _render(answer, owner._next_task_id(), self.request_version)
        if answer.truncate is not None or answer.stall is not None:
            head, sep, body = data.partition(b"\r\n\r\n")
            cut = answer.truncate if answer.truncate is not None else answer.stall
            with contextlib.suppress(OSError):
                self.wfile.write(head + sep + body[:cut])
            if answer.stall is not None:
                owner._stopping.wait()
            self._drop()
            return
        if answer.trickle > 0:
            try:
                complete = self._trickle(data, answer.trickle)
            except OSError:
                complete = False
            with owner._lock:
                record.answered = complete
            if not complete:
                self._drop()
                return
        else:
            # Marked before the write, so a client that has read the answer finds it recorded.
            with owner._lock:
                record.answered = True
            try:
                self.wfile.write(data)  # one write: status line, headers and body together
            except OSError:
                self.close_connection = True
        if answer.headers.get("Connection", "").lower() == "close":
            self.close_connection = True

    def _trickle(self, data: bytes, pause: float) -> bool:
        """Send the head, then the body byte by byte; whether it was all sent."""
        head, sep, body = data.partition(b"\r\n\r\n")
        self.wfile.write(head + sep)
        for index in range(len(body)):
            if self.server.owner._stopping.wait(pause):
                return False
            self.wfile.write(body[index : index + 1])
        return True

    def setup(self) -> None:
        tls = self.server.owner.tls
        if tls is not None:  # the handshake runs here, in this connection's own thread
            self.request = tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # FaultServer.stop() shuts sockets down itself, with a bound
    allow_reuse_address = False

    def __init__(self, owner: FaultServer) -> None:
        self.owner = owner
        self._conn_lock = threading.Lock()
        self._conns: dict[int, tuple[int, socket.socket]] = {}
        self.accepted = 0
        self.handler_threads: list[threading.Thread] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self.accepted += 1
            self._conns[id(request)] = (self.accepted, request)
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"faultserver-conn-{self.accepted}",
            daemon=True,
        )
        with self._conn_lock:
            self.handler_threads.append(thread)
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed TLS handshake or a client gone: nothing to print (tests count requests)."""

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._conns.pop(id(request), None)
        super().shutdown_request(request)

    def connection_number(self, request: Any) -> int:
        with self._conn_lock:
            entry = self._conns.get(id(request))
        return entry[0] if entry else 0

    def shut_all_connections(self) -> None:
        with self._conn_lock:
            socks = [sock for _, sock in self._conns.values()]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class FaultServer:
    """The programmable server; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        """A server-side TLS context: serve https:// (see ``tls_files``)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scripts: dict[str, list[Answer]] = {}
        self._rules: list[tuple[str | None, Rule]] = []
        self._defaults: dict[str | None, Answer] = {None: ok()}
        self._requests: list[Request] = []
        self._tasks = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="faultserver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, join_timeout: float = 1.0) -> None:
        """Stop serving, wake delayed handlers, close every connection; idempotent and prompt."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or self._stopping.is_set():
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.shut_all_connections()
        if thread is not None:
            thread.join(join_timeout)
        deadline = time.monotonic() + join_timeout
        with httpd._conn_lock:
            handlers = list(httpd.handler_threads)
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ programming

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FaultServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL to give an exporter (no trailing slash)."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def script(self, path: str, answers: Iterable[Answer]) -> None:
        """Queue answers for the next requests on ``path``, each used once, in order."""
        with self._lock:
            self._scripts.setdefault(path, []).extend(answers)

    def set_default(self, answer: Answer, path: str | None = None) -> None:
        """The answer once scripts and rules are exhausted (for ``path``, or for all paths)."""
        with self._lock:
            self._defaults[path] = answer

    def add_rule(self, rule: Rule, path: str | None = None) -> None:
        """A rule consulted after the script (for ``path``, or for all paths)."""
        with self._lock:
            self._rules.append((path, rule))

    def reset(self) -> None:
        """Forget scripts, rules, defaults and recorded requests."""
        with self._lock:
            self._scripts.clear()
            self._rules.clear()
            self._defaults = {None: ok()}
            self._requests.clear()

    # ------------------------------------------------------------------ what was received

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def connections_accepted(self) -> int:
        return self._httpd.accepted if self._httpd is not None else 0

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def items(self, path: str) -> list[Any]:
        """Every JSON item received on ``path``, flattened, in arrival order."""
        return [item for r in self.requests_to(path) for item in r.items]

    def accepted_items(self, path: str) -> list[Any]:
        """Only the items of requests answered with an acceptance (2xx, not ``ok: false``)."""
        return [item for r in self.requests_to(path) if r.accepted for item in r.items]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` requests arrived; whether they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return True
            time.sleep(0.005)
        return len(self.requests) >= count

    # ------------------------------------------------------------------ internals

    def _record_and_choose(self, request: Request) -> Answer:
        with self._lock:
            self._requests.append(request)
            queue = self._scripts.get(request.path)
            answer: Answer | None = queue.pop(0) if queue else None
            rules = [rule for path, rule in self._rules if path in (None, request.path)]
            default = self._defaults.get(request.path, self._defaults[None])
        if answer is None:
            for rule in rules:
                answer = rule(request)
                if answer is not None:
                    break
            else:
                answer = default
        with self._lock:
            request.answer = answer
        return answer

    def _next_task_id(self) -> str:
        with self._lock:
            self._tasks += 1
            return f"task-{self._tasks}"


def _decode(raw: bytes, encoding: str) -> Any:
    data = raw
    if "gzip" in encoding.lower():
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError):
            return None
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _render(answer: Answer, task_id: str, request_version: str) -> bytes:
    body = answer.body
    if body is None:
        body = (
            {"ok": True, "task_id": task_id, "error_code": None}
            if 200 <= answer.status < 300
            else b""
        )
    if isinstance(body, str):
        payload = body.encode()
        content_type = "text/plain; charset=utf-8"
    elif isinstance(body, bytes | bytearray):
        payload = bytes(body)
        content_type = "application/json" if payload else ""
    else:
        payload = json.dumps(body).encode()
        content_type = "application/json"
    if answer.encoding:
        payload = _compress(payload, answer.encoding)
    reason = _REASONS.get(answer.status, "Unknown")
    lines = [f"HTTP/1.1 {answer.status} {reason}"]
    names = {name.lower() for name in answer.headers}
    if content_type and "content-type" not in names:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(payload)}")
    if request_version == "HTTP/1.0" and "connection" not in names:
        lines.append("Connection: close")
    if answer.encoding:
        lines.append(f"Content-Encoding: {answer.encoding.removesuffix('-raw')}")
    lines.extend(f"{name}: {value}" for name, value in answer.headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def _compress(payload: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(payload)
    if encoding == "deflate":
        return zlib.compress(payload)
    if encoding == "deflate-raw":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(payload) + packer.flush()
    raise ValueError(f"unknown test encoding {encoding!r}")


def tls_files(directory: Path, names: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` (a subjectAltName) and its key, in PEM files.

    Made with the ``openssl`` command, which the CI machines have.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=altertable-test", "-addext", f"subjectAltName={names}",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
