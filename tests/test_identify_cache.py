"""The identify cache keeps the newest ten thousand identities; an evicted one is sent again.

A real exporter against a :class:`faultserver.FaultServer` on loopback, counting the identify
calls that arrive.
"""

from __future__ import annotations

from typing import Any

from faultserver import FaultServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import T0_NS, finished_spans
from support import MakeExporter, otlp_span_exporter, running_bridge


def identity_spans(users: range | list[int]) -> list[ReadableSpan]:
    """Untagged spans that each carry one identity with a trait: one identify call each."""
    return finished_spans(
        [("login", {"user.id": f"u{n}", "user.email": f"u{n}@example.com"}, (), T0_NS, T0_NS)
         for n in users]
    )  # fmt: skip


def test_the_identify_cache_keeps_the_newest_ten_thousand(
    server: FaultServer, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter(max_batch_size=1000, timeout=10.0)
    assert exporter.export(identity_spans(range(10_001))) is SpanExportResult.SUCCESS
    assert len(server.items("/identify")) == 10_001

    # u0, the oldest, was evicted; u1, the next oldest, is still known; so is u10000.
    assert exporter.export(identity_spans([1, 10_000])) is SpanExportResult.SUCCESS
    assert len(server.items("/identify")) == 10_001
    assert exporter.export(identity_spans([0])) is SpanExportResult.SUCCESS
    assert [i["distinct_id"] for i in server.items("/identify")[10_001:]] == ["u0"]
    assert exporter.stats()["calls_exported"] == 10_002


def odd_identify(endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A ``before_send`` hook leaving a list and a dict in an identify's ids (JSON-safe)."""
    if endpoint == "identify":
        payload["distinct_id"] = ["a", "b"]
        payload["anonymous_id"] = {"device": ["d1"]}
    return payload


def checkout_spans() -> list[ReadableSpan]:
    """One tagged span with an identity and a trait: one track and one identify call."""
    return finished_spans(
        [("checkout", {"analytics.event": "Order Placed", "user.id": "u1",
                       "user.email": "u1@example.com"}, (), T0_NS, T0_NS)]
    )  # fmt: skip


def test_a_hook_that_makes_an_identify_unhashable_loses_nothing(
    server: FaultServer, make_exporter: MakeExporter
) -> None:
    """The identify key takes whatever a hook left in a payload, so the export's tracks are
    delivered and the odd identify is sent once, then known."""
    exporter = make_exporter(before_send=odd_identify)
    spans = checkout_spans()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert [t["event"] for t in server.items("/track")] == ["Order Placed"]
    assert [i["distinct_id"] for i in server.items("/identify")] == [["a", "b"]]
    # The same identify again is recognised as already accepted; the track is sent again.
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(server.items("/track")) == 2
    assert len(server.items("/identify")) == 1
    stats = exporter.stats()
    assert stats["calls_exported"] == 3
    assert stats["dropped_by_reason"] == {}


def test_a_hook_that_makes_an_identify_unhashable_loses_nothing_through_the_bridge(
    server: FaultServer,
) -> None:
    with running_bridge(server.endpoint, sync=True, before_send=odd_identify) as bridge:
        otlp = otlp_span_exporter(bridge.endpoint)
        try:
            assert otlp.export(checkout_spans()) is SpanExportResult.SUCCESS
            assert otlp.export(checkout_spans()) is SpanExportResult.SUCCESS
        finally:
            otlp.shutdown()
    assert [t["event"] for t in server.items("/track")] == ["Order Placed"] * 2
    assert [i["distinct_id"] for i in server.items("/identify")] == [["a", "b"]]
