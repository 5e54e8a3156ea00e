"""Counting a request's elements on the wire agrees with the decoded message, element for
element, on varied requests (long keys and values, nested arrays and kvlists, events, links,
log bodies); and the wire schema it walks is the OTLP protobuf's own."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from opentelemetry_exporter_altertable._http_server import ListenerBounds
from opentelemetry_exporter_altertable.bridge import _elements

DESCRIPTORS: dict[str, Any] = {
    "ExportTraceServiceRequest": ExportTraceServiceRequest,
    "ExportLogsServiceRequest": ExportLogsServiceRequest,
    "ResourceSpans": trace_pb2.ResourceSpans,
    "ResourceLogs": logs_pb2.ResourceLogs,
    "Resource": resource_pb2.Resource,
    "ScopeSpans": trace_pb2.ScopeSpans,
    "ScopeLogs": logs_pb2.ScopeLogs,
    "Scope": common_pb2.InstrumentationScope,
    "Span": trace_pb2.Span,
    "Event": trace_pb2.Span.Event,
    "Link": trace_pb2.Span.Link,
    "LogRecord": logs_pb2.LogRecord,
    "KeyValue": common_pb2.KeyValue,
    "AnyValue": common_pb2.AnyValue,
    "ArrayValue": common_pb2.ArrayValue,
    "KeyValueList": common_pb2.KeyValueList,
}


def test_the_wire_schema_is_the_otlp_protobufs() -> None:
    for name, fields in _elements._SCHEMA.items():
        descriptor = DESCRIPTORS[name].DESCRIPTOR
        for number, child in fields.items():
            field = descriptor.fields_by_number[number]
            assert field.message_type is DESCRIPTORS[child].DESCRIPTOR, (name, number)


def reference_count(message: Any) -> int:
    """What the walker must count, read from the decoded message: every resource, scope,
    record, event, link and attribute, and every value nested in an array or a kvlist (an
    attribute's own value is part of the attribute)."""
    count = 0

    def key_value(pair: Any) -> None:
        nonlocal count
        count += 1
        value(pair.value, own=True)

    def value(item: Any, own: bool = False) -> None:
        nonlocal count
        count += 0 if own else 1
        kind = item.WhichOneof("value")
        if kind == "array_value":
            count += 1
            for inner in item.array_value.values:
                value(inner)
        elif kind == "kvlist_value":
            count += 1
            for pair in item.kvlist_value.values:
                key_value(pair)

    def attributes(pairs: Any) -> None:
        for pair in pairs:
            key_value(pair)

    def resource_and_scopes(resource: Any, scopes: Any) -> None:
        nonlocal count
        count += 1 + resource.HasField("resource")
        attributes(resource.resource.attributes)
        for scope in scopes:
            count += 1 + scope.HasField("scope")
            attributes(scope.scope.attributes)

    if isinstance(message, ExportTraceServiceRequest):
        for resource in message.resource_spans:
            resource_and_scopes(resource, resource.scope_spans)
            for scope in resource.scope_spans:
                for span in scope.spans:
                    count += 1 + len(span.events) + len(span.links)
                    attributes(span.attributes)
                    for event in span.events:
                        attributes(event.attributes)
                    for link in span.links:
                        attributes(link.attributes)
    else:
        for resource in message.resource_logs:
            resource_and_scopes(resource, resource.scope_logs)
            for scope in resource.scope_logs:
                for log in scope.log_records:
                    count += 1
                    if log.HasField("body"):
                        value(log.body)
                    attributes(log.attributes)
    return count


class Maker:
    """Varied requests from a seed: keys and strings across the one-byte length limit
    (127, 128), empty values, arrays and kvlists three deep, events, links, log bodies."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def value(self, item: Any, depth: int) -> None:
        draw = self.random.random()
        if depth < 3 and draw < 0.15:
            for _ in range(self.random.randint(0, 4)):
                self.value(item.array_value.values.add(), depth + 1)
        elif depth < 3 and draw < 0.3:
            for _ in range(self.random.randint(0, 4)):
                self.pair(item.kvlist_value.values.add(), depth + 1)
        elif draw < 0.5:
            item.string_value = "s" * self.random.choice([0, 1, 5, 127, 128, 300])
        elif draw < 0.6:
            item.int_value = self.random.randint(-(10**12), 10**12)
        elif draw < 0.9:
            item.bool_value = True

    def pair(self, pair: Any, depth: int) -> None:
        pair.key = "k" * self.random.choice([0, 1, 10, 127, 128, 200])
        if self.random.random() < 0.9:
            self.value(pair.value, depth)

    def attributes(self, pairs: Any) -> None:
        for _ in range(self.random.randint(0, 5)):
            self.pair(pairs.add(), 0)

    def traces(self) -> ExportTraceServiceRequest:
        message = ExportTraceServiceRequest()
        for _ in range(self.random.randint(1, 3)):
            resource = message.resource_spans.add()
            self.attributes(resource.resource.attributes)
            for _ in range(self.random.randint(0, 3)):
                scope = resource.scope_spans.add()
                if self.random.random() < 0.5:
                    scope.scope.name = "scope"
                    self.attributes(scope.scope.attributes)
                for _ in range(self.random.randint(0, 5)):
                    span = scope.spans.add()
                    span.name = "n" * self.random.choice([0, 3, 200])
                    self.attributes(span.attributes)
                    for _ in range(self.random.randint(0, 2)):
                        self.attributes(span.events.add().attributes)
                    for _ in range(self.random.randint(0, 2)):
                        self.attributes(span.links.add().attributes)
        return message

    def logs(self) -> ExportLogsServiceRequest:
        message = ExportLogsServiceRequest()
        for _ in range(self.random.randint(1, 3)):
            resource = message.resource_logs.add()
            self.attributes(resource.resource.attributes)
            for _ in range(self.random.randint(0, 3)):
                scope = resource.scope_logs.add()
                for _ in range(self.random.randint(0, 5)):
                    log = scope.log_records.add()
                    self.attributes(log.attributes)
                    if self.random.random() < 0.5:
                        self.value(log.body, 0)
        return message


def counted(body: bytes, traces: bool) -> int:
    """The walker's count: the smallest bound it accepts the body under."""
    root = "ExportTraceServiceRequest" if traces else "ExportLogsServiceRequest"
    low, high = 1, 1_000_000
    while low < high:
        middle = (low + high) // 2
        try:
            _elements._walk(body, root, ListenerBounds(max_elements=middle))
            high = middle
        except _elements.TooManyElements:
            low = middle + 1
    return low


@pytest.mark.parametrize("seed", range(40))
def test_the_wire_count_equals_the_decoded_count(seed: int) -> None:
    maker = Maker(seed)
    traces, logs = maker.traces(), maker.logs()
    assert counted(traces.SerializeToString(), True) == max(reference_count(traces), 1)
    assert counted(logs.SerializeToString(), False) == max(reference_count(logs), 1)


def _spans_request(spans: int, attributes: int) -> bytes:
    span = trace_pb2.Span(
        name="s",
        attributes=[
            common_pb2.KeyValue(key=f"k{i}", value=common_pb2.AnyValue(int_value=i))
            for i in range(attributes)
        ],
    )
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend([span] * spans)
    return request.SerializeToString()


def test_below_twice_the_element_bound_records_are_still_counted() -> None:
    # Under 2 * max_elements bytes the walk steps over each record whole: records past their
    # bound are refused all the same, and elements cannot be too many there.
    bounds = ListenerBounds(max_records=1_000, max_elements=100_000)
    many_records = _spans_request(1_001, 0)
    assert 2 * bounds.max_records <= len(many_records) < 2 * bounds.max_elements
    with pytest.raises(_elements.TooManyElements, match="spans or log records"):
        _elements.check_protobuf(many_records, True, bounds)
    _elements.check_protobuf(_spans_request(1_000, 40), True, bounds)  # 41,000 elements: fine
    many_elements = _spans_request(1_000, 120)  # 121,000 elements, past twice the bound
    assert len(many_elements) >= 2 * bounds.max_elements
    with pytest.raises(_elements.TooManyElements, match="elements"):
        _elements.check_protobuf(many_elements, True, bounds)
