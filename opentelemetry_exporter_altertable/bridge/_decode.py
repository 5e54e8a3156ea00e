"""OTLP request bodies (protobuf or OTLP JSON) -> the mapping's neutral records.

This is a reader, like ``_sdk`` for SDK objects: it turns one ``ExportTraceServiceRequest`` or
``ExportLogsServiceRequest`` into :class:`~.._mapping.Record` values and leaves every rule
about what becomes a call to the mapping. It reads records in the order the in-process reader
does (per resource: a record introducing the resource, then each span's tagged events, then
the span), so the same telemetry yields the same calls whichever way it arrives.

OTLP JSON is protobuf's JSON mapping with three differences: trace and span ids are hex (not
base64), enums are integers, and field names are lowerCamelCase. Ids are rewritten to base64
before ``json_format`` parses the document, so both encodings go through one message reader.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .._http_server import ListenerBounds
from .._mapping import EMPTY, Attrs, Record, has_interest
from .._web import is_page_view
from ._elements import TooManyElements, check_json, check_json_records, check_protobuf

TRACES = "/v1/traces"
LOGS = "/v1/logs"

#: OTLP ``Span.SpanKind`` -> the mapping's span kinds. UNSPECIFIED is read as INTERNAL, as the
#: specification says a receiver should.
_SPAN_KINDS = {0: "internal", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_SCALARS = frozenset({"string_value", "int_value", "bool_value", "double_value", "bytes_value"})
#: Where OTLP JSON carries hex ids, by container key (both spellings are valid JSON names).
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
#: Scope names of this package: its own log lines are never exported (as in-process).
_OWN_SCOPE = __name__.split(".", 1)[0]


__all__ = ["LOGS", "TRACES", "Decoded", "TooManyElements", "UndecodableBody", "decode", "parse"]


class UndecodableBody(ValueError):
    """The body is not a valid OTLP request in the encoding it claims (answered with 400)."""


@dataclass
class Decoded:
    """One request, read: the records for the mapping and what the answer needs to count."""

    records: list[Record]
    skipped: int
    """Spans without analytics data (reported to the mapping, as the in-process reader does)."""
    items: int
    """Spans or log records in the request: the most ``partial_success`` can reject."""
    analytics: int
    """Records that carry analytics data (each can yield calls)."""


# --------------------------------------------------------------------------- values


def _any(value: AnyValue) -> Any:  # noqa: PLR0911  # one return per AnyValue kind
    """An OTLP ``AnyValue`` as the Python value the SDK would hold (every kind)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return tuple(_any(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return _attrs(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value
    return None  # an empty AnyValue


def _attrs(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        value = pair.value
        kind = value.WhichOneof("value")
        # Scalars (nearly every attribute) in one getattr; arrays, maps and empties via _any.
        out[pair.key] = getattr(value, kind) if kind in _SCALARS else _any(value)
    return out


def _id(raw: bytes) -> int:
    return int.from_bytes(raw, "big") if raw else 0


# --------------------------------------------------------------------------- readers


def read_traces(request: ExportTraceServiceRequest, pageviews: bool = False) -> Decoded:
    """Spans and their tagged events as records, in the in-process reader's order.

    With ``pageviews``, an untagged server span that served an HTML page is a record too, as
    in the in-process reader (``_sdk.records_from_spans``): skipped here, the mapping's
    ``pageviews`` option would never see it."""
    records: list[Record] = []
    skipped = items = analytics = 0
    for resource_spans in request.resource_spans:
        resource: Attrs | None = None
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                items += 1
                end_ns = span.end_time_unix_nano or span.start_time_unix_nano or time.time_ns()
                if resource is None:
                    resource = _attrs(resource_spans.resource.attributes) or EMPTY
                    records.append(Record.resource_only(resource, end_ns))
                attrs = _attrs(span.attributes) if span.attributes else EMPTY
                span_interesting = has_interest(attrs)
                tagged = []
                for event in span.events:
                    event_attrs = _attrs(event.attributes) if event.attributes else EMPTY
                    if has_interest(event_attrs):
                        tagged.append((event, event_attrs))
                kind = _SPAN_KINDS.get(span.kind, "internal")
                if not span_interesting and not tagged:
                    if pageviews and kind == "server" and is_page_view(attrs, kind):
                        span_interesting = True  # a page view: the span itself is the record
                    else:
                        skipped += 1
                        continue
                trace_id, span_id = _id(span.trace_id), _id(span.span_id)
                for event, event_attrs in tagged:
                    analytics += 1
                    records.append(
                        Record(
                            name=event.name,
                            attrs=event_attrs,
                            resource=resource,
                            time_ns=event.time_unix_nano,
                            trace_id=trace_id,
                            span_id=span_id,
                            parent=attrs,
                            span_kind=kind,
                            dropped_attributes=event.dropped_attributes_count,
                        )
                    )
                if span_interesting:
                    analytics += 1
                    records.append(
                        Record(
                            name=span.name,
                            attrs=attrs,
                            resource=resource,
                            time_ns=end_ns,
                            trace_id=trace_id,
                            span_id=span_id,
                            span_kind=kind,
                            dropped_attributes=span.dropped_attributes_count,
                        )
                    )
    return Decoded(records, skipped, items, analytics)


def read_logs(request: ExportLogsServiceRequest) -> Decoded:
    """Log records as records, a dict (``kvlist``) body kept for the mapping to merge."""
    records: list[Record] = []
    items = analytics = 0
    for resource_logs in request.resource_logs:
        resource: Attrs | None = None
        for scope_logs in resource_logs.scope_logs:
            if scope_logs.scope.name.startswith(_OWN_SCOPE):
                items += len(scope_logs.log_records)
                continue
            for log in scope_logs.log_records:
                items += 1
                time_ns = log.time_unix_nano or log.observed_time_unix_nano or time.time_ns()
                if resource is None:
                    resource = _attrs(resource_logs.resource.attributes) or EMPTY
                    records.append(Record.resource_only(resource, time_ns))
                attrs = _attrs(log.attributes) if log.attributes else EMPTY
                if not has_interest(attrs):
                    continue
                analytics += 1
                name = log.event_name or attrs.get("event.name")
                body = None
                if log.body.WhichOneof("value") == "kvlist_value":
                    body = _attrs(log.body.kvlist_value.values)
                records.append(
                    Record(
                        name=name if isinstance(name, str) else None,
                        attrs=attrs,
                        resource=resource,
                        time_ns=time_ns,
                        trace_id=_id(log.trace_id),
                        span_id=_id(log.span_id),
                        body=body,
                        dropped_attributes=log.dropped_attributes_count,
                    )
                )
    return Decoded(records, 0, items, analytics)


# --------------------------------------------------------------------------- bodies


def _hex_ids_to_base64(node: Any, depth: int = 0) -> None:
    """Rewrite OTLP JSON's hex ids in place as the base64 protobuf's JSON mapping expects."""
    if depth > 64:
        raise UndecodableBody("OTLP JSON nested too deep")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise UndecodableBody(f"{key} is not a hex id") from None
            elif isinstance(value, (dict, list)):
                _hex_ids_to_base64(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, (dict, list)):
                _hex_ids_to_base64(item, depth + 1)


def parse(path: str, body: bytes, is_json: bool, bounds: ListenerBounds | None = None) -> Message:
    """Parse one request body into its protobuf message; :class:`UndecodableBody` if it is not,
    :class:`TooManyElements` if it holds more than ``bounds`` allow (checked first)."""
    traces = path == TRACES
    message: Message = ExportTraceServiceRequest() if traces else ExportLogsServiceRequest()
    bounds = bounds or ListenerBounds()
    try:
        if is_json:
            check_json(body, bounds)
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise UndecodableBody("OTLP JSON must be an object")
            check_json_records(doc, traces, bounds)
            _hex_ids_to_base64(doc)
            json_format.ParseDict(doc, message, ignore_unknown_fields=True)
        else:
            check_protobuf(body, traces, bounds)
            message.ParseFromString(body)
    except (UndecodableBody, TooManyElements):
        raise
    except (ValueError, DecodeError, json_format.ParseError, RecursionError, TypeError) as exc:
        raise UndecodableBody(str(exc)[:200]) from None
    return message


def decode(
    path: str,
    body: bytes,
    is_json: bool,
    bounds: ListenerBounds | None = None,
    *,
    pageviews: bool = False,
) -> Decoded:
    """Parse and read a ``/v1/traces`` or ``/v1/logs`` body within ``bounds``; ``pageviews``
    keeps the page-view spans the mapping option of that name turns into ``$pageview``."""
    message = parse(path, body, is_json, bounds)
    if isinstance(message, ExportTraceServiceRequest):
        return read_traces(message, pageviews)
    assert isinstance(message, ExportLogsServiceRequest)
    return read_logs(message)
