"""``track`` / ``identify`` / ``alias``: annotations on the current span, calls once exported.

A real ``TracerProvider`` exports through the real exporter to a real server on 127.0.0.1; the
SDK's own finished spans are kept too, to see what the helpers wrote on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from faultserver import FaultServer
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from support import answered

from opentelemetry_exporter_altertable import AltertableSpanExporter, alias, identify, track
from opentelemetry_exporter_altertable.receiver import LocalReceiver

pytestmark = pytest.mark.usefixtures("no_altertable_settings")


@dataclass
class Pipeline:
    tracer: trace.Tracer
    finished: InMemorySpanExporter

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.finished.get_finished_spans()


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as r:
        yield r


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def _pipeline(endpoint: str, sampler: Sampler = ALWAYS_ON) -> tuple[Pipeline, TracerProvider]:
    provider = TracerProvider(
        sampler=sampler,
        resource=Resource({"service.name": "helpers-app"}),
        shutdown_on_exit=False,
    )
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    exporter = AltertableSpanExporter(api_key="pk_test_helpers", endpoint=endpoint)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Pipeline(provider.get_tracer("tests.helpers"), finished), provider


@pytest.fixture
def to_receiver(receiver: LocalReceiver) -> Iterator[Pipeline]:
    pipeline, provider = _pipeline(receiver.endpoint)
    try:
        yield pipeline
    finally:
        provider.shutdown()


@pytest.fixture
def to_server(server: FaultServer) -> Iterator[Pipeline]:
    pipeline, provider = _pipeline(server.endpoint)
    try:
        yield pipeline
    finally:
        provider.shutdown()


def test_track_adds_a_tagged_span_event_that_becomes_a_track_call(
    to_receiver: Pipeline, receiver: LocalReceiver
) -> None:
    properties: dict[str, Any] = {
        "amount": 12.5,
        "currency": "EUR",
        "items": ["sku-1", "sku-2"],
        "meta": {"coupon": "SPRING"},
        "skipped": None,
    }
    with to_receiver.tracer.start_as_current_span("checkout", attributes={"user.id": "u-1"}):
        assert track("Order Placed", properties) is True

    (span,) = to_receiver.spans()
    (event,) = span.events
    assert event.name == "Order Placed"
    assert event.attributes is not None
    assert event.attributes["analytics.event"] == "Order Placed"

    rows = receiver.query("SELECT event, distinct_id, properties FROM altertable.analytics.events")
    assert len(rows) == 1, rows  # the span itself is not tagged: only its event is a call
    name, distinct_id, raw = rows[0]
    assert (name, distinct_id) == ("Order Placed", "u-1")  # the user comes from the span
    props = json.loads(raw)
    assert props["amount"] == 12.5
    assert props["currency"] == "EUR"
    assert props["items"] == ["sku-1", "sku-2"]
    assert json.loads(props["meta"]) == {"coupon": "SPRING"}  # non-primitives travel as JSON
    assert "skipped" not in props
    assert props["otel.span_id"] == format(span.context.span_id, "016x")
    assert receiver.query("SELECT count(*) FROM altertable.analytics.identities") == [(0,)]


def test_identify_sends_an_identify_call_with_traits(
    to_receiver: Pipeline, receiver: LocalReceiver
) -> None:
    with to_receiver.tracer.start_as_current_span("login"):
        assert identify("u-42", {"email": "ada@example.com", "plan": "pro"}) is True
        assert track("Logged In") is True

    (span,) = to_receiver.spans()
    assert span.attributes is not None
    assert span.attributes["analytics.distinct_id"] == "u-42"

    identities = receiver.query("SELECT distinct_id, traits FROM altertable.analytics.identities")
    assert [(d, json.loads(t)) for d, t in identities] == [
        ("u-42", {"email": "ada@example.com", "plan": "pro"})
    ]
    events = receiver.query(
        "SELECT event, distinct_id, identity_traits FROM altertable.analytics.events"
    )
    assert len(events) == 1
    assert events[0][:2] == ("Logged In", "u-42")
    assert json.loads(events[0][2]) == {"email": "ada@example.com", "plan": "pro"}
    assert answered(receiver, "/identify", 1) == 1


def test_identify_without_traits_names_the_user_but_sends_no_identify(
    to_receiver: Pipeline, receiver: LocalReceiver
) -> None:
    with to_receiver.tracer.start_as_current_span("request"):
        assert identify("u-7") is True
        track("Viewed Page")
    assert receiver.query("SELECT event, distinct_id FROM altertable.analytics.events") == [
        ("Viewed Page", "u-7")
    ]
    assert receiver.query("SELECT count(*) FROM altertable.analytics.identities") == [(0,)]


def test_alias_links_the_current_user_to_a_new_id(
    to_receiver: Pipeline, receiver: LocalReceiver
) -> None:
    with to_receiver.tracer.start_as_current_span("signup"):
        assert identify("anon-7") is True
        assert alias("u-99") is True

    (span,) = to_receiver.spans()
    assert span.attributes is not None
    assert span.attributes["analytics.alias"] == "u-99"
    assert answered(receiver, "/alias", 1) == 1
    identities = receiver.query(
        "SELECT distinct_id, distinct_ids FROM altertable.analytics.identities"
    )
    assert identities == [("u-99", ["anon-7", "u-99"])]


def test_all_three_in_one_span_arrive_as_identify_then_alias_then_track(
    to_server: Pipeline, server: FaultServer
) -> None:
    with to_server.tracer.start_as_current_span("signup"):
        identify("anon-1", {"email": "new@example.com"})
        alias("u-1")
        track("Signed Up", {"plan": "free"})

    assert [r.path for r in server.requests] == ["/identify", "/alias", "/track"]
    (ident,) = server.items("/identify")
    assert ident["distinct_id"] == "anon-1"
    assert ident["traits"] == {"email": "new@example.com"}
    (link,) = server.items("/alias")
    assert (link["distinct_id"], link["new_user_id"]) == ("anon-1", "u-1")
    (tracked,) = server.items("/track")
    assert (tracked["event"], tracked["distinct_id"]) == ("Signed Up", "anon-1")
    assert tracked["properties"]["plan"] == "free"
    for item in (ident, link, tracked):
        assert item["environment"] == "production"
        assert item["timestamp"].endswith("Z")


def test_helpers_do_nothing_without_a_span(server: FaultServer) -> None:
    assert not trace.get_current_span().is_recording()
    assert track("Nobody Saw This") is False
    assert identify("u-1", {"email": "x@example.com"}) is False
    assert alias("u-2") is False
    assert server.requests == []


def test_helpers_do_nothing_in_a_sampled_out_span(server: FaultServer) -> None:
    pipeline, provider = _pipeline(server.endpoint, sampler=ALWAYS_OFF)
    try:
        with pipeline.tracer.start_as_current_span("dropped"):
            assert track("Nobody Saw This") is False
            assert identify("u-1", {"email": "x@example.com"}) is False
            assert alias("u-2") is False
    finally:
        provider.shutdown()
    assert pipeline.spans() == ()
    assert server.requests == []


def test_helpers_do_nothing_on_an_ended_span(to_server: Pipeline, server: FaultServer) -> None:
    with to_server.tracer.start_as_current_span("short") as span:
        span.end()
        assert track("Too Late") is False
        assert identify("u-1", {"email": "x@example.com"}) is False
        assert alias("u-2") is False
    (finished,) = to_server.spans()
    assert finished.events == ()
    assert finished.attributes is not None
    assert "analytics.distinct_id" not in finished.attributes
    assert server.requests == []
