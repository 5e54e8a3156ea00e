"""A forwarding proxy for the soak that breaks answers the receiver's FaultPlan cannot.

The receiver's own faults (503, dropped connections, outages) are decided before anything is
stored. These are about the answer itself, between the receiver and the exporter:

* ``slow``: the receiver's answer, its body sent in four pieces 50 ms apart (within the
  deadline: the exporter must wait for it, not give up);
* ``stall``: the receiver stored the calls, but its answer stops halfway through the body
  and never finishes (the exporter times out mid-read and must owe the calls, not lose them:
  they come back as duplicates, which at-least-once allows);
* ``gzip-retry``: a gzipped ``503`` or ``429`` (with ``Retry-After: 0``) with an
  ``{"ok": false}`` body, not forwarded;
* ``gzip-environment``: a gzipped ``400 environment-not-found``, not forwarded: a setting
  error, so the rest of the export is owed (spooled) and replayed later, never bisected.

Decisions are seeded by request number, so a seed always gives the same faults.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import http.server
import json
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

KINDS = ("slow", "stall", "gzip-retry", "gzip-environment")


@dataclass(frozen=True)
class BodyFaults:
    """Rates of each kind of answer fault (each request draws at most one)."""

    slow_rate: float = 0.03
    stall_rate: float = 0.01
    gzip_retry_rate: float = 0.03
    gzip_environment_rate: float = 0.01
    seed: int = 1
    stall_seconds: float = 2.0
    """How long a stalled answer holds its connection (longer than the export timeout)."""

    @property
    def any(self) -> bool:
        return (
            self.slow_rate + self.stall_rate + self.gzip_retry_rate + self.gzip_environment_rate
        ) > 0

    def decide(self, number: int) -> str | None:
        draw = random.Random(f"{self.seed}:{number}").random()
        for kind, rate in zip(
            KINDS,
            (self.slow_rate, self.stall_rate, self.gzip_retry_rate, self.gzip_environment_rate),
            strict=True,
        ):
            if draw < rate:
                return kind
            draw -= rate
        return None


def _answer(status: int, headers: dict[str, str], body: bytes) -> bytes:
    reason = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        kind = proxy.faults.decide(proxy.next_number()) if self.path != "/query" else None
        if kind is not None:
            proxy.count(kind)
        if kind == "gzip-retry":
            status = 503 if proxy.counts[kind] % 2 else 429
            payload = gzip.compress(json.dumps({"ok": False, "error": "overloaded"}).encode())
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            if status == 429:
                headers["Retry-After"] = "0"
            self.wfile.write(_answer(status, headers, payload))
            return
        if kind == "gzip-environment":
            payload = gzip.compress(
                json.dumps({"ok": False, "error_code": "environment-not-found"}).encode()
            )
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            self.wfile.write(_answer(400, headers, payload))
            return
        try:
            status, headers, answer = proxy.forward(self.command, self.path, self.headers, body)
        except OSError:  # the receiver dropped the connection (its own fault): do the same
            self._drop()
            return
        data = _answer(status, headers, answer)
        head, sep, rest = data.partition(b"\r\n\r\n")
        if kind == "slow":
            self.wfile.write(head + sep)
            step = max(1, len(rest) // 4 + 1)
            for start in range(0, len(rest), step):
                if proxy.stopping.wait(0.05):
                    self._drop()
                    return
                self.wfile.write(rest[start : start + step])
            return
        if kind == "stall":
            self.wfile.write(head + sep + rest[: len(rest) // 2])
            proxy.stopping.wait(proxy.faults.stall_seconds)
            self._drop()
            return
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, proxy: BodyFaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a stalled answer: nothing worth printing."""


class BodyFaultProxy:
    """``with BodyFaultProxy(receiver_endpoint, faults) as proxy:`` then use ``proxy.endpoint``."""

    def __init__(self, upstream: str, faults: BodyFaults) -> None:
        parts = urlsplit(upstream)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self.faults = faults
        self.counts: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._number = 0
        self._local = threading.local()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def next_number(self) -> int:
        with self._lock:
            self._number += 1
            return self._number

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """The receiver's answer to the same request, over this thread's own connection."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
            self._local.conn = conn
        sent = {
            name: value
            for name, value in headers.items()
            if name.lower() in ("content-type", "content-encoding", "x-api-key", "user-agent")
        }
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            raise OSError("the receiver dropped the connection") from None
        kept = {
            name: value
            for name, value in response.getheaders()
            if name.lower() in ("content-type", "retry-after", "content-encoding")
        }
        return response.status, kept, answer

    def __enter__(self) -> BodyFaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2)
