"""What the bridge tests share: a running bridge, rich sample telemetry, OTLP senders."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import LogRecord
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanKind
from otel_builders import MS_NS, SECOND_NS, T0_NS, span_context

from opentelemetry_exporter_altertable import RetryPolicy
from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge

KEY = "pk_test_bridge-key-NEVER-IN-AN-ANSWER"
FAST_RETRY = RetryPolicy(total=3, backoff_factor=0.01, backoff_max=0.05, jitter=0)
RESOURCE = {
    "service.name": "checkout",
    "service.version": "2.4.1",
    "deployment.environment.name": "staging",
    "host.name": "web-1",
}


@contextmanager
def running_bridge(endpoint: str, **settings: Any) -> Iterator[BridgeServer]:
    """A bridge on a free port delivering to ``endpoint`` (short timeout, quick retries)."""
    max_in_flight = settings.pop("max_in_flight", 8)
    options: dict[str, Any] = {
        "api_key": KEY,
        "endpoint": endpoint,
        "timeout": 2.0,
        "retry": FAST_RETRY,
    }
    options.update(settings)
    server = BridgeServer(create_bridge(**options), port=0, max_in_flight=max_in_flight)
    with server:
        yield server


def sample_spans(count: int = 3) -> list[ReadableSpan]:
    """Spans exercising every rule the bridge must carry: kinds, events, identity, values."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ALWAYS_ON, resource=Resource(RESOURCE), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.bridge", "1.0")
    try:
        for seq in range(count):
            start = T0_NS + seq * SECOND_NS
            server = tracer.start_span(
                "GET /cart",
                kind=SpanKind.SERVER,
                start_time=start,
                attributes={
                    "analytics.event": "Cart Viewed",
                    "user.id": f"user-{seq}",
                    "user.email": f"u{seq}@example.com",
                    "http.request.method": "GET",
                    "url.scheme": "https",
                    "server.address": "shop.example.com",
                    "url.path": "/cart",
                    "url.query": "utm_source=news&token=secret",
                    "user_agent.original": "Mozilla/5.0",
                    "client.address": "203.0.113.9",
                    "http.response.status_code": 200,
                    "seq": seq,
                    "ratio": 0.25 + seq,
                    "flag": seq % 2 == 0,
                    "tags": ("a", "b"),
                    "counts": (1, 2, 3),
                    "analytics.properties.plan": "pro",
                    "code.function": "cart_view",
                },
            )
            server.add_event(
                "item added",
                {"analytics.event": True, "sku": f"sku-{seq}", "price": 9.5},
                timestamp=start + 10 * MS_NS,
            )
            server.add_event("not tagged", {"x": 1}, timestamp=start + 20 * MS_NS)
            server.end(end_time=start + 50 * MS_NS)
            client = tracer.start_span(
                "charge",
                kind=SpanKind.CLIENT,
                start_time=start + 60 * MS_NS,
                attributes={
                    "analytics.event": "Payment Sent",
                    "analytics.distinct_id": f"user-{seq}",
                    "analytics.alias": f"customer-{seq}",
                    "amount": 1999,
                },
            )
            client.end(end_time=start + 90 * MS_NS)
            plain = tracer.start_span("db.query", start_time=start, attributes={"db": "pg"})
            plain.end(end_time=start + 5 * MS_NS)
        return list(exporter.get_finished_spans())
    finally:
        provider.shutdown()


def sample_logs(count: int = 3) -> list[ReadableLogRecord]:
    """Log records with ``event_name``, a dict body, span context, and some untagged ones."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=Resource(RESOURCE), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("tests.bridge.logs")
    try:
        for seq in range(count):
            ctx = trace.set_span_in_context(
                NonRecordingSpan(span_context(0xABC0 + seq, 0xDE0 + seq)), Context()
            )
            logger.emit(
                LogRecord(
                    timestamp=T0_NS + seq * SECOND_NS,
                    observed_timestamp=T0_NS + seq * SECOND_NS + MS_NS,
                    context=ctx,
                    body={"order_id": f"o-{seq}", "lines": [1, 2], "meta": {"gift": True}},
                    attributes={
                        "analytics.event": True,
                        "user.id": f"user-{seq}",
                        "channel": "web",
                    },
                    event_name="order.placed",
                )
            )
            logger.emit(
                LogRecord(
                    timestamp=None,
                    observed_timestamp=T0_NS + seq * SECOND_NS + 2 * MS_NS,
                    context=Context(),
                    body="plain text line",
                    attributes={"analytics.event": "Signed In", "user.id": f"user-{seq}"},
                )
            )
            logger.emit(
                LogRecord(
                    timestamp=T0_NS,
                    observed_timestamp=T0_NS,
                    context=Context(),
                    body="noise",
                    attributes={"level": "debug"},
                )
            )
        return list(exporter.get_finished_logs())
    finally:
        provider.shutdown()


def otlp_span_exporter(base: str, **kwargs: Any) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=f"{base}/v1/traces", **kwargs)


def otlp_log_exporter(base: str, **kwargs: Any) -> OTLPLogExporter:
    return OTLPLogExporter(endpoint=f"{base}/v1/logs", **kwargs)


__all__ = [
    "FAST_RETRY",
    "KEY",
    "RESOURCE",
    "SECOND_NS",
    "otlp_log_exporter",
    "otlp_span_exporter",
    "running_bridge",
    "sample_logs",
    "sample_spans",
]
