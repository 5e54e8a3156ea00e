"""The identify cache keeps the newest ten thousand identities; an evicted one is sent again.

A real exporter against a :class:`faultserver.FaultServer` on loopback, counting the identify
calls that arrive.
"""

from __future__ import annotations

from faultserver import FaultServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import T0_NS, finished_spans
from support import MakeExporter


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
