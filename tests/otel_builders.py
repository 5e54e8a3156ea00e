"""Build real OpenTelemetry SDK objects (finished spans, emitted log records) for tests.

The mapping reads SDK objects, so tests feed it what the SDK itself produces: spans that went
through a ``TracerProvider`` and a span processor, log records that went through a
``LoggerProvider`` and a log record processor. Only API present from opentelemetry-sdk 1.39 to
the newest release is used. Resources are built with ``Resource(...)`` rather than
``Resource.create(...)`` so that ``OTEL_RESOURCE_ATTRIBUTES`` in the environment cannot change a
test's outcome.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import LogRecord
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

# 2023-01-01T12:00:00.000Z, the instant the official compliance fixtures use.
T0_NS = 1_672_574_400 * 1_000_000_000
T0_ISO = "2023-01-01T12:00:00.000Z"
MS_NS = 1_000_000
SECOND_NS = 1_000_000_000


def iso_at(offset_ms: int) -> str:
    """The expected ISO form of ``T0_NS + offset_ms`` milliseconds (offset below one minute)."""
    seconds, millis = divmod(offset_ms, 1000)
    return f"2023-01-01T12:00:{seconds:02d}.{millis:03d}Z"


def make_resource(attributes: Mapping[str, Any] | None = None) -> Resource:
    """A resource holding exactly ``attributes`` (no SDK defaults, nothing from the environment)."""
    return Resource(dict(attributes or {}))


@dataclass(frozen=True)
class EventSpec:
    """One span event to add: name, attributes and an explicit timestamp (ns since epoch)."""

    name: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    timestamp: int = T0_NS


def finished_span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    resource: Mapping[str, Any] | None = None,
    start: int = T0_NS - SECOND_NS,
    end: int = T0_NS,
    events: Sequence[EventSpec] = (),
) -> ReadableSpan:
    """One span, ended at ``end``, exactly as a span processor receives it."""
    return finished_spans([(name, attributes, events, start, end)], resource=resource)[0]


SpanSpec = tuple[str, "Mapping[str, Any] | None", Sequence[EventSpec], int, int]


def finished_spans(
    specs: Sequence[SpanSpec], *, resource: Mapping[str, Any] | None = None
) -> list[ReadableSpan]:
    """Several spans sharing one resource, in the order given: (name, attrs, events, start, end)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ALWAYS_ON, resource=make_resource(resource), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        tracer = provider.get_tracer("tests.otel_builders")
        for name, attributes, events, start, end in specs:
            span = tracer.start_span(name, attributes=dict(attributes or {}), start_time=start)
            for event in events:
                span.add_event(event.name, dict(event.attributes), timestamp=event.timestamp)
            span.end(end_time=end)
        return list(exporter.get_finished_spans())
    finally:
        provider.shutdown()


@contextmanager
def open_span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    resource: Mapping[str, Any] | None = None,
    start: int = T0_NS,
) -> Iterator[SdkSpan]:
    """A started, not yet ended SDK span (itself a ``ReadableSpan`` whose ``end_time`` is None)."""
    provider = TracerProvider(
        sampler=ALWAYS_ON, resource=make_resource(resource), shutdown_on_exit=False
    )
    try:
        tracer = provider.get_tracer("tests.otel_builders")
        span = tracer.start_span(name, attributes=dict(attributes or {}), start_time=start)
        assert isinstance(span, SdkSpan)
        try:
            yield span
        finally:
            span.end()
    finally:
        provider.shutdown()


def span_context(trace_id: int, span_id: int) -> SpanContext:
    """A sampled, local span context with the given ids."""
    return SpanContext(
        trace_id=trace_id, span_id=span_id, is_remote=False, trace_flags=TraceFlags(1)
    )


def emitted_log_record(
    *,
    attributes: Mapping[str, Any] | None = None,
    body: Any = None,
    event_name: str | None = None,
    timestamp: int | None = T0_NS,
    observed_timestamp: int = T0_NS + 5 * SECOND_NS,
    context_span: SpanContext | None = None,
    resource: Mapping[str, Any] | None = None,
) -> ReadableLogRecord:
    """One log record, as a log record processor hands it to an exporter.

    ``context_span`` puts the record inside that span's context; without it the record is
    emitted outside any span.
    """
    return emitted_log_records(
        [
            {
                "attributes": attributes,
                "body": body,
                "event_name": event_name,
                "timestamp": timestamp,
                "observed_timestamp": observed_timestamp,
                "context_span": context_span,
            }
        ],
        resource=resource,
    )[0]


def emitted_log_records(
    specs: Sequence[Mapping[str, Any]], *, resource: Mapping[str, Any] | None = None
) -> list[ReadableLogRecord]:
    """Several log records sharing one resource; each spec holds ``emitted_log_record`` keywords."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=make_resource(resource), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    try:
        logger = provider.get_logger("tests.otel_builders")
        for spec in specs:
            sc = spec.get("context_span")
            ctx = (
                trace.set_span_in_context(NonRecordingSpan(sc), Context())
                if sc is not None
                else trace.set_span_in_context(trace.INVALID_SPAN, Context())
            )
            attributes = spec.get("attributes")
            logger.emit(
                LogRecord(
                    timestamp=spec.get("timestamp", T0_NS),
                    observed_timestamp=spec.get("observed_timestamp", T0_NS + 5 * SECOND_NS),
                    context=ctx,
                    body=spec.get("body"),
                    attributes=dict(attributes) if attributes is not None else None,
                    event_name=spec.get("event_name"),
                )
            )
        return list(exporter.get_finished_logs())
    finally:
        provider.shutdown()


def logging_bridge_records(
    emit: Any, *, resource: Mapping[str, Any] | None = None
) -> list[ReadableLogRecord]:
    """Records produced by the SDK's ``logging`` bridge: ``emit(std_logger)`` logs through it."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=make_resource(resource), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    # Imported here: newer SDKs deprecate this handler in favour of the instrumentation package's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from opentelemetry.sdk._logs import LoggingHandler

        handler = LoggingHandler(logger_provider=provider)
    std_logger = logging.getLogger("tests.otel_builders.bridge")
    std_logger.setLevel(logging.INFO)
    std_logger.propagate = False
    std_logger.addHandler(handler)
    try:
        emit(std_logger)
        return list(exporter.get_finished_logs())
    finally:
        std_logger.removeHandler(handler)
        provider.shutdown()
