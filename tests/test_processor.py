"""AltertableSpanProcessor: queues only analytics spans, survives bursts, flushes on shutdown.

Spans come from a real TracerProvider; the exporter is the real AltertableSpanExporter posting
to a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from opentelemetry_exporter_altertable.exporters import AltertableSpanExporter
from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

_OK = b'{"ok": true, "task_id": "t", "error_code": null}'


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.tracked: list[dict[str, Any]] = []
        self.requests = 0
        # When set, the first /track request is held until ``release`` is set: a stalled API.
        self.hold_first = False
        self.first_arrived = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def events(self) -> list[str]:
        with self.lock:
            return [item["event"] for item in self.tracked]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        srv = self.server
        with srv.lock:
            srv.requests += 1
            first = srv.requests == 1
        if first and srv.hold_first:
            srv.first_arrived.set()
            srv.release.wait(10)
        if self.path.split("?")[0] == "/track":
            data = json.loads(body)
            with srv.lock:
                srv.tracked.extend(data if isinstance(data, list) else [data])
        # One write: status line, headers and body together.
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(_OK), _OK)
        )

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


class _RecordingExporter(AltertableSpanExporter):
    """The real exporter, also remembering which spans the processor handed it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: list[list[str]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append([span.name for span in spans])
        return super().export(spans)


def _exporter(srv: _Server) -> _RecordingExporter:
    return _RecordingExporter(
        api_key="pk_test_processor", endpoint=srv.url, environment="production", timeout=10
    )


def _provider(processor: BatchSpanProcessor) -> TracerProvider:
    provider = TracerProvider(resource=Resource({"service.name": "shop"}))
    provider.add_span_processor(processor)
    return provider


def _tagged(provider: TracerProvider, name: str) -> None:
    tracer = provider.get_tracer("test")
    attrs = {"analytics.event": name, "user.id": "u_1", "http.route": "/signup"}
    tracer.start_span(name, attributes=attrs).end()


def _untagged(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("test")
    for i in range(n):
        attrs = {"http.route": "/health", "http.response.status_code": 200, "user.id": f"u{i}"}
        tracer.start_span("GET /health", attributes=attrs).end()


def test_takes_the_same_arguments_as_batch_span_processor() -> None:
    assert inspect.signature(AltertableSpanProcessor) == inspect.signature(BatchSpanProcessor)


def test_only_spans_with_analytics_data_reach_the_exporter(server: _Server) -> None:
    exporter = _exporter(server)
    provider = _provider(AltertableSpanProcessor(exporter))
    try:
        tracer = provider.get_tracer("test")
        _untagged(provider, 50)
        _tagged(provider, "Signed Up")
        with tracer.start_as_current_span("POST /cart") as span:  # tagged through a span event
            span.add_event("Product Added", {"analytics.event": True, "sku": "A1"})
        _untagged(provider, 50)
        _tagged(provider, "Order Completed")
        assert provider.force_flush()
        exported = [name for batch in exporter.batches for name in batch]
        assert exported == ["Signed Up", "POST /cart", "Order Completed"]
        assert sorted(server.events()) == ["Order Completed", "Product Added", "Signed Up"]
    finally:
        provider.shutdown()


def _burst(processor_cls: type[BatchSpanProcessor], srv: _Server) -> int:
    """4 tagged spans, then (API stalled) 12 tagged among 2,000 untagged; tagged delivered."""
    srv.hold_first = True
    processor = processor_cls(
        _exporter(srv), max_queue_size=16, schedule_delay_millis=60_000, max_export_batch_size=4
    )
    provider = _provider(processor)
    try:
        for i in range(4):  # a full batch wakes the worker, whose export then stalls
            _tagged(provider, f"early {i}")
        assert srv.first_arrived.wait(10)
        for i in range(12):
            _untagged(provider, 100)
            _tagged(provider, f"burst {i}")
        _untagged(provider, 800)  # the last spans of the burst carry no analytics
    finally:
        srv.release.set()
        provider.shutdown()
    return len(srv.events())


def test_burst_loses_no_tagged_span_where_batch_span_processor_drops_them() -> None:
    delivered = {}
    for cls in (BatchSpanProcessor, AltertableSpanProcessor):
        srv = _Server()
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            delivered[cls] = _burst(cls, srv)
        finally:
            srv.release.set()
            srv.shutdown()
            srv.server_close()
            thread.join(5)
    # The plain processor's 16-slot queue keeps only the newest (untagged) spans: of the 16
    # tagged spans only the 4 already in flight arrive. Ours queued nothing else.
    assert delivered[BatchSpanProcessor] == 4
    assert delivered[AltertableSpanProcessor] == 16


def test_shutdown_flushes_queued_spans(server: _Server) -> None:
    exporter = _exporter(server)
    provider = _provider(
        AltertableSpanProcessor(exporter, schedule_delay_millis=60_000, max_export_batch_size=512)
    )
    try:
        for name in ("Signed Up", "Trial Started", "Order Completed"):
            _tagged(provider, name)
        _untagged(provider, 10)
        assert server.events() == []  # still queued: no batch is full, no delay has passed
    finally:
        provider.shutdown()
    assert sorted(server.events()) == ["Order Completed", "Signed Up", "Trial Started"]
    assert exporter.batches == [["Signed Up", "Trial Started", "Order Completed"]]


def test_honours_otel_bsp_max_export_batch_size(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    exporter = _exporter(server)
    provider = _provider(AltertableSpanProcessor(exporter))
    try:
        for i in range(6):
            _tagged(provider, f"event {i}")
        assert provider.force_flush()
    finally:
        provider.shutdown()
    assert sorted(server.events()) == [f"event {i}" for i in range(6)]
    assert [len(batch) for batch in exporter.batches] == [2, 2, 2]


def test_honours_otel_bsp_schedule_delay(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # the default would wait 5 s
    provider = _provider(AltertableSpanProcessor(_exporter(server)))
    try:
        _tagged(provider, "Signed Up")
        deadline = time.monotonic() + 2  # well before the default delay would end
        while not server.events() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.events() == ["Signed Up"]  # delivered with no flush or shutdown
    finally:
        provider.shutdown()
