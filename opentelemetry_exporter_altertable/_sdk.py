"""Readers: the OpenTelemetry SDK's spans and log records -> the mapping's neutral records.

One job: read SDK objects fast and hand :func:`_mapping.map_records` plain data. The SDK wraps
attributes in ``BoundedAttributes`` and events in ``BoundedList``, both Python-level containers
whose every lookup is a Python call; the readers go to the plain ``dict`` / ``deque`` behind
them (present in every supported SDK) and fall back to the public properties when an SDK lacks
them. Interest is tested on those plain mappings before any record is built, so a span without
analytics data costs a key scan. Besides the exporters and the processor, this is the only
module that touches SDK types.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind

from ._mapping import (
    EMPTY,
    Attrs,
    Calls,
    MappingOptions,
    Record,
    carries_identity,
    has_interest,
    map_records,
)
from ._web import is_page_view

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import ReadableLogRecord
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan

_SPAN_KINDS = {
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.INTERNAL: "internal",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}
_NO_RESOURCE = object()


def _plain(attrs: Any) -> Attrs:
    """The plain dict behind the SDK's ``BoundedAttributes``, else the mapping itself.

    ``BoundedAttributes`` is a Python-level ``MutableMapping``: every ``get`` and every step of
    iteration goes through a Python call. Reading its ``_dict`` (present in every supported SDK)
    makes the mapping about twice as fast; when an SDK lacks it, the public mapping is used.
    """
    inner = getattr(attrs, "_dict", None)
    if isinstance(inner, dict):
        return inner
    return attrs or EMPTY


def _dropped(attrs: Any) -> int:
    """How many attributes ``BoundedAttributes`` dropped (0 for a plain mapping)."""
    dropped = getattr(attrs, "dropped", 0)
    return dropped if isinstance(dropped, int) else 0


def span_attributes(span: ReadableSpan) -> Attrs:
    """A span's attributes without the read-only proxy the public property builds per call."""
    raw = getattr(span, "_attributes", None)
    if raw is None:
        return span.attributes or EMPTY
    return _plain(raw)


def span_events(span: ReadableSpan) -> Sequence[Event]:
    """A span's events without the tuple copy the public property makes per call.

    The SDK keeps them in a ``BoundedList`` whose ``len()`` is a Python call; its ``_dq``
    deque answers in C.
    """
    raw = getattr(span, "_events", None)
    if raw is None:
        return span.events
    events: Sequence[Event] = getattr(raw, "_dq", raw)
    return events


def resource_attributes(resource: Resource | None) -> Attrs:
    """A resource's attributes as a plain mapping, the same object for every call."""
    return _plain(resource.attributes) if resource is not None else EMPTY


def log_attributes(record: Any) -> Attrs:
    """A log record's attributes as a plain mapping (the dict behind ``BoundedAttributes``)."""
    return _plain(record.attributes)


def _span_parts(span: ReadableSpan) -> tuple[Any, Attrs, int, Sequence[Event]]:
    """A span's resource, attributes, dropped-attribute count and events, by the public API
    where the SDK's internals are missing or unexpected."""
    bounded = getattr(span, "_attributes", None)
    return span.resource, span_attributes(span), _dropped(bounded), span_events(span)


def span_has_analytics_data(span: ReadableSpan) -> bool:
    """True when the span or one of its events could yield a track, identify or alias."""
    if has_interest(span_attributes(span)):
        return True
    return any(has_interest(_plain(event.attributes)) for event in span_events(span))


def span_is_page_view(span: ReadableSpan) -> bool:
    """True for a server span that served an HTML page (see ``_web.is_page_view``)."""
    return span.kind is SpanKind.SERVER and is_page_view(span_attributes(span), "server")


def span_is_record(attrs: Attrs, kind: SpanKind, tagged_events: bool, pageviews: bool) -> bool:
    """Whether a span is a record itself (its tagged events are records of their own).

    It is when it is tagged; with ``pageviews``, also when it is an untagged server span that
    served an HTML page and has no tagged event (such a span is its events' context, not a
    page view). The live mapping and the processors' journal both decide by this, so a
    journal recovered after a crash sends what the export would have sent.
    """
    if has_interest(attrs):
        return True
    return (
        pageviews
        and not tagged_events
        and kind is SpanKind.SERVER
        and is_page_view(attrs, "server")
    )


def records_from_spans(
    spans: Sequence[ReadableSpan], pageviews: bool = False
) -> tuple[list[Record], int]:
    """Spans and their tagged events as records, and how many spans carried no analytics data.

    With ``pageviews``, an untagged server span that served an HTML page is a record too.

    Each new resource is introduced by a :meth:`Record.resource_only` (timed at its first
    span's end), so a resource's own identify is sent even when none of its spans is tagged.
    """
    records: list[Record] = []
    skipped = 0
    last_resource: object = _NO_RESOURCE
    res_attrs: Attrs = EMPTY
    kinds, server_kind = _SPAN_KINDS, SpanKind.SERVER
    for span in spans:
        # The SDK's internals, read directly (no property, no getattr default): on the skip
        # path these reads are most of a span's cost. An SDK without them takes _span_parts.
        internals: Any = span
        try:
            resource = internals._resource
            bounded = internals._attributes
            attrs = bounded._dict
            dropped = bounded.dropped
            events = internals._events._dq
            read = type(attrs) is dict and type(dropped) is int
        except AttributeError:
            read = False
        if not read:
            resource, attrs, dropped, events = _span_parts(span)
        if resource is not last_resource:
            last_resource = resource
            res_attrs = resource_attributes(resource)
            end = span.end_time or span.start_time or time.time_ns()
            records.append(Record.resource_only(res_attrs, end))
        tagged_events = [e for e in events if has_interest(_plain(e.attributes))] if events else ()
        span_interesting = span_is_record(attrs, span.kind, bool(tagged_events), pageviews)
        if not span_interesting and not tagged_events:
            skipped += 1
            if dropped and carries_identity(attrs):  # for the mapping's warning only
                records.append(Record(span.name, attrs, res_attrs, 0, dropped_attributes=dropped))
            continue
        ctx = span.context
        trace_id = ctx.trace_id if ctx is not None else 0
        span_id = ctx.span_id if ctx is not None else 0
        # SpanKind hashes through a Python-level Enum.__hash__: test the common kind first.
        kind_member = span.kind
        kind = "server" if kind_member is server_kind else kinds.get(kind_member, "")
        for event in tagged_events:
            records.append(
                Record(
                    event.name,
                    _plain(event.attributes),
                    res_attrs,
                    event.timestamp,
                    trace_id,
                    span_id,
                    attrs,
                    kind,
                    None,
                    _dropped(event.attributes),
                )
            )
        if span_interesting:
            end_ns = span.end_time or span.start_time or time.time_ns()
            span_record = Record(
                span.name, attrs, res_attrs, end_ns, trace_id, span_id, EMPTY, kind, None, dropped
            )  # positional: half the cost of building it by keyword (timeit, 0.5 vs 1.0 us)
            records.append(span_record)
    return records, skipped


def records_from_logs(records: Sequence[ReadableLogRecord]) -> tuple[list[Record], int]:
    """Log records as records (a dict body kept for the mapping to merge), and how many
    carried no analytics data; each new resource is introduced as in
    :func:`records_from_spans`."""
    out: list[Record] = []
    skipped = 0
    last_resource: object = _NO_RESOURCE
    res_attrs: Attrs = EMPTY
    for readable in records:
        record = readable.log_record
        if readable.resource is not last_resource:
            last_resource = readable.resource
            res_attrs = resource_attributes(readable.resource)
            first = record.timestamp or record.observed_timestamp or time.time_ns()
            out.append(Record.resource_only(res_attrs, first))
        attrs = log_attributes(record)
        if not has_interest(attrs):
            skipped += 1
            continue
        time_ns = record.timestamp or record.observed_timestamp or time.time_ns()
        name = getattr(record, "event_name", None) or attrs.get("event.name")
        body = record.body if isinstance(record.body, Mapping) else None
        out.append(
            Record(
                name=name if isinstance(name, str) else None,
                attrs=attrs,
                resource=res_attrs,
                time_ns=time_ns,
                trace_id=record.trace_id or 0,
                span_id=record.span_id or 0,
                body=body,
                dropped_attributes=_dropped(record.attributes),
            )
        )
    return out, skipped


def map_spans(spans: Sequence[ReadableSpan], options: MappingOptions) -> Calls:
    """Map spans and their events; records without analytics data cost a key scan."""
    records, skipped = records_from_spans(spans, options.pageviews)
    return map_records(records, options, skipped)


def map_log_records(records: Sequence[ReadableLogRecord], options: MappingOptions) -> Calls:
    """Map log records; a dict body is merged under the record's attributes.

    Log records without analytics data are counted in ``Calls.skipped``, as spans are.
    """
    mapped, skipped = records_from_logs(records)
    return map_records(mapped, options, skipped)
