"""A loopback HTTP/1.1 sink that answers like the Altertable API (and an OTLP collector).

It reads each request body completely, counts requests, body bytes and (optionally) items,
and answers in ONE socket write: status line, headers and body in a single buffer. Splitting
the answer into several writes lets Nagle's algorithm and the client's delayed ACK stall every
request by tens of milliseconds on loopback, which would measure the kernel, not the exporter.

- ``POST /track|/identify|/alias`` -> ``200 {"ok": true, "task_id": "...", "error_code": null}``
- ``POST /v1/traces`` -> ``200`` with an empty ``application/x-protobuf`` body (OTLP/HTTP)
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import multiprocessing
import socket
import socketserver
import threading
import time
from collections import Counter
from typing import Any

_OTLP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_ANALYTICS_PATHS = ("/track", "/identify", "/alias")


def _api_answer(task_id: int) -> bytes:
    body = b'{"ok": true, "task_id": "%016x", "error_code": null}' % task_id
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % len(body) + body


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.StreamRequestHandler):
    rbufsize = 1 << 16
    server: _Server

    def handle(self) -> None:
        sink = self.server.sink
        sock: socket.socket = self.connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sink._opened(sock)
        try:
            while self._one_request(sink, sock):
                pass
        except OSError:
            pass
        finally:
            sink._closed(sock)

    def _one_request(self, sink: Sink, sock: socket.socket) -> bool:  # noqa: PLR0912  # one HTTP/1.1 request parsed inline: the sink's speed is the point
        rfile = self.rfile
        line = rfile.readline(65537)
        while line in (b"\r\n", b"\n"):
            line = rfile.readline(65537)
        if not line:
            return False
        parts = line.split()
        path = parts[1].decode("latin-1").split("?", 1)[0] if len(parts) > 1 else "/"
        length = 0
        chunked = False
        keep_alive = True
        gzipped = False
        while True:
            header = rfile.readline(65537)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep_alive = value != b"close"
            elif name == b"content-encoding":
                gzipped = value == b"gzip"
        if chunked:
            body = self._read_chunked()
        else:
            body = rfile.read(length) if length else b""
            if len(body) < length:
                return False
        if sink.latency:
            time.sleep(sink.latency)
        if path.endswith("/v1/traces"):
            answer = _OTLP_ANSWER
        elif path.endswith(_ANALYTICS_PATHS):
            answer = _api_answer(next(sink._task_ids))
        else:
            answer = _NOT_FOUND
        items = 0
        if sink.count_items and path.endswith(_ANALYTICS_PATHS):
            data = json.loads(gzip.decompress(body) if gzipped else body)
            items = len(data) if isinstance(data, list) else 1
        sink._record(path, len(body), items)
        sock.sendall(answer)
        return keep_alive

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline(65537)


class Sink:
    """Threaded keep-alive HTTP sink on ``127.0.0.1:0``; use as a context manager.

    ``latency`` (seconds) delays every answer, to stand in for a real network round trip;
    ``count_items`` parses analytics bodies to count the calls they carry (off for timing runs,
    where the sink should cost as little as possible).
    """

    def __init__(self, *, latency: float = 0.0, count_items: bool = False) -> None:
        self.latency = latency
        self.count_items = count_items
        self._lock = threading.Lock()
        self._task_ids = itertools.count(1)
        self._connections: set[socket.socket] = set()
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        if self._server is None:
            raise RuntimeError("sink not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Sink:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes.clear()
            self.items.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "bytes": dict(self.bytes),
                "items": dict(self.items),
            }

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, path: str, nbytes: int, items: int) -> None:
        with self._lock:
            self.requests[path] += 1
            self.bytes[path] += nbytes
            if items:
                self.items[path] += items

    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)


def _serve_in_child(conn: Any, latency: float, count_items: bool) -> None:
    """Child process: run a Sink and answer the parent's commands over a pipe."""
    with Sink(latency=latency, count_items=count_items) as sink:
        conn.send(sink.url)
        while True:
            command = conn.recv()
            if command == "snapshot":
                conn.send(sink.snapshot())
            elif command == "reset":
                sink.reset()
                conn.send(None)
            else:
                conn.send(None)
                return


class ProcessSink:
    """A :class:`Sink` in a process of its own, with the same ``url``/``snapshot``/``reset``.

    The API being measured against runs on another machine in production; in the same process
    the sink's request handling would compete for the exporter's GIL and bill the exporter for
    the server's work. In its own process it has the second core.
    """

    def __init__(self, *, latency: float = 0.0, count_items: bool = False) -> None:
        self.latency = latency
        self.count_items = count_items
        self._process: Any = None
        self._conn: Any = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("sink not started")
        return self._url

    def start(self) -> ProcessSink:
        parent, child = multiprocessing.Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=_serve_in_child, args=(child, self.latency, self.count_items), daemon=True
        )
        process.start()
        self._process = process
        self._conn = parent
        if not parent.poll(30):
            self.stop()
            raise RuntimeError("the sink process did not start")
        self._url = parent.recv()
        return self

    def _ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = self._ask("snapshot")
        return result

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError, EOFError, BrokenPipeError):
            self._ask("stop")
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._process = None
        self._url = None

    def __enter__(self) -> ProcessSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
