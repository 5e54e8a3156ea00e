"""The export's deadline covers the whole answer: a server dripping its status line and header
lines, each well within any per-read timeout, cannot hold ``export()`` past its timeout."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from faultserver import FaultServer
from support import sample_spans, tagged_spans

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy


@contextmanager
def header_dripper(gap: float, lines: int = 100, body_pause: float = 0.0) -> Iterator[str]:
    """A loopback server that reads each request, then sends its answer's head one line per
    ``gap`` seconds (``lines`` of them at most), never finishing it while the client waits.

    With ``body_pause`` it waits that long before reading a request's body: a body larger than
    the sockets' buffers keeps the client sending until then."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            received = b""
            while b"\r\n\r\n" not in received:
                data = conn.recv(65536)
                if not data:
                    return
                received += data
            if body_pause:
                head, _, body = received.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                if stop.wait(body_pause):
                    return
                while len(body) < length:
                    data = conn.recv(1 << 20)
                    if not data:
                        return
                    body += data
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for number in range(lines):
                    if stop.wait(gap):
                        return
                    conn.sendall(f"X-Drip-{number}: 1\r\n".encode())
            except OSError:
                return  # the client gave up: what the test wants

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_header_lines_dripped_do_not_hold_export_past_its_timeout() -> None:
    with header_dripper(gap=0.5) as endpoint:
        exporter = AltertableSpanExporter(
            api_key="pk_test_deadline",
            endpoint=endpoint,
            timeout=2.0,
            retry=RetryPolicy(total=0),
        )
        try:
            started = time.monotonic()
            exporter.export(sample_spans(1))
            took = time.monotonic() - started
        finally:
            exporter.shutdown()
    assert took < 2.0 + 1.5  # the timeout, plus a margin for a busy machine


def test_a_session_you_pass_does_not_get_the_head_bound() -> None:
    """What docs/settings.md and docs/delivery.md say: a ``requests.Session`` of your own is
    used as given, its timeout bounds each read, so dripped header lines outlast the export's
    timeout (the package's own pool cuts them, above)."""
    with header_dripper(gap=0.3, lines=4) as endpoint, requests.Session() as session:
        exporter = AltertableSpanExporter(
            api_key="pk_test_deadline",
            endpoint=endpoint,
            timeout=0.5,
            retry=RetryPolicy(total=0),
            session=session,
        )
        try:
            started = time.monotonic()
            exporter.export(sample_spans(1))
            took = time.monotonic() - started
        finally:
            exporter.shutdown()
    assert took > 0.5 + 0.5  # four lines 0.3 s apart, each read within the 0.5 s timeout


def test_time_spent_sending_the_body_is_part_of_the_deadline() -> None:
    """Connecting and sending count against the export's timeout: a server that takes most
    of it to read a large body, then drips its answer's head, leaves only what is left for
    the head (it once got the whole timeout again, from the first header read on)."""
    blob = os.urandom(8 << 20).hex()  # 16 MiB: more than the loopback sockets buffer
    spans = tagged_spans(1, blob=blob)
    with header_dripper(gap=0.2, body_pause=0.6) as endpoint:
        exporter = AltertableSpanExporter(
            api_key="pk_test_deadline",
            endpoint=endpoint,
            timeout=1.0,
            retry=RetryPolicy(total=0),
        )
        try:
            started = time.monotonic()
            exporter.export(spans)
            took = time.monotonic() - started
        finally:
            exporter.shutdown()
    assert took < 1.0 + 0.2, took  # the timeout, plus what mapping 16 MiB and a busy machine take


def test_one_watcher_thread_serves_every_request(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keeping heads within the deadline starts no thread per request (a timer per POST cost a
    thread start each: about a third of a millisecond, per 100 events)."""
    started: list[str] = []
    start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    exporter = AltertableSpanExporter(
        api_key="pk_test_deadline", endpoint=server.endpoint, max_batch_size=1
    )
    try:
        exporter.export(sample_spans(1))  # warm: the pool, and the watcher once
        monkeypatch.setattr(threading.Thread, "start", counting_start)
        for _ in range(10):
            exporter.export(sample_spans(3))
    finally:
        monkeypatch.undo()
        exporter.shutdown()
    assert len(server.accepted_items("/track")) == 3 * 31  # three tracks per sample span
    assert started == []
