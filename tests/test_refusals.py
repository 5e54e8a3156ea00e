"""Refusals: a chunk the API refuses is split, bisected or dropped whole, and the rest delivered.

A 413 halves the chunk until each part fits; a 400, a 422 or ``"ok": false`` in a 200 is about
the items, so halving finds the bad one and drops it alone; any other 4xx is about the request
and drops the chunk whole, once. Each over real HTTP on loopback, counting what arrived.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from faultserver import Answer, FaultServer, Request, body_larger_than, ok_false, reject_items
from opentelemetry.sdk.trace.export import SpanExportResult
from support import MakeExporter, Spans, package_records, seqs

# ---------------------------------------------------------------------------- split and bisected


def test_413_splits_the_batch_until_it_fits(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    batch = spans(64)
    exporter = make_exporter(max_batch_size=64)
    limit = 5000  # about a dozen of these items
    server.add_rule(body_larger_than(limit))

    assert exporter.export(batch) is SpanExportResult.SUCCESS

    assert sorted(seqs(server.accepted_items("/track"))) == list(range(64))
    assert len(server.accepted_items("/track")) == 64
    statuses = [r.status for r in server.requests]
    assert statuses[0] == 413
    assert all(len(r.raw_body) <= limit for r in server.requests if r.status == 200)
    # Halving, depth first: 64, each 32 and each 16 are too large, each 8 fits (15 requests).
    sizes = [64, 32, 16, 8, 8, 16, 8, 8, 32, 16, 8, 8, 16, 8, 8]
    assert [len(r.items) for r in server.requests] == sizes
    stats = exporter.stats()
    assert stats["calls_exported"] == 64
    assert stats["calls_dropped"] == 0


def test_an_item_too_large_on_its_own_is_dropped_and_the_rest_delivered(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.add_rule(body_larger_than(2000))
    exporter = make_exporter(max_batch_size=8)
    batch = spans(7) + spans(1, start=7, blob="x" * 5000)

    assert exporter.export(batch) is SpanExportResult.FAILURE

    assert sorted(seqs(server.accepted_items("/track"))) == list(range(7))
    stats = exporter.stats()
    assert stats["calls_exported"] == 7
    assert stats["calls_dropped"] == 1
    assert sum(stats["dropped_by_reason"].values()) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [400, 422])
def test_one_bad_item_among_fifty_is_found_and_dropped(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, status: int
) -> None:
    server.add_rule(reject_items(lambda item: item["event"] == "bad", status=status))
    exporter = make_exporter(max_batch_size=50)
    batch = spans(17) + spans(1, start=17, event="bad") + spans(32, start=18)

    assert exporter.export(batch) is SpanExportResult.FAILURE

    delivered = seqs(server.accepted_items("/track"))
    assert sorted(delivered) == [s for s in range(50) if s != 17]
    assert len(delivered) == 49
    # Bisection: the halves with item 17 are split again, the others delivered whole.
    assert [len(r.items) for r in server.requests] == [50, 25, 12, 13, 6, 3, 3, 1, 2, 1, 1, 7, 25]
    stats = exporter.stats()
    assert stats["calls_exported"] == 49
    assert stats["calls_dropped"] == 1
    assert stats["dropped_by_reason"] == {"invalid-event": 1}


@pytest.mark.parametrize("error_code", ["insert-failed", None])
def test_ok_false_in_a_200_is_handled_as_a_400(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, error_code: str | None
) -> None:
    refusal = ok_false(error_code) if error_code else Answer(200, body={"ok": False})

    def refuse_bad(request: Request) -> Answer | None:
        return refusal if any(i["event"] == "bad" for i in request.items) else None

    server.add_rule(refuse_bad)
    exporter = make_exporter(max_batch_size=50)
    batch = spans(30) + spans(1, start=30, event="bad") + spans(19, start=31)

    assert exporter.export(batch) is SpanExportResult.FAILURE

    assert sorted(seqs(server.accepted_items("/track"))) == [s for s in range(50) if s != 30]
    # Bisection: the halves with item 30 are split again, the others delivered whole.
    assert [len(r.items) for r in server.requests] == [50, 25, 25, 12, 6, 3, 3, 1, 2, 1, 1, 6, 13]
    stats = exporter.stats()
    assert stats["calls_exported"] == 49
    assert stats["calls_dropped"] == 1
    assert stats["dropped_by_reason"] == {error_code or "ok-false": 1}


def test_400_still_finds_the_bad_item(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.add_rule(reject_items(lambda item: item["properties"]["seq"] == 3, status=422))
    exporter = make_exporter(max_batch_size=8)
    assert exporter.export(spans(8)) is SpanExportResult.FAILURE
    assert len(server.accepted_items("/track")) == 7
    assert exporter.stats()["dropped_by_reason"] == {"invalid-event": 1}


# ---------------------------------------------------------------------------- dropped whole


@pytest.mark.parametrize("status", [411, 414, 415, 431, 418])
def test_a_4xx_about_the_request_refuses_the_chunk_once(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, status: int, logs: Any
) -> None:
    server.set_default(Answer(status, body=b""))
    exporter = make_exporter(max_batch_size=50)

    assert exporter.export(spans(50)) is SpanExportResult.FAILURE

    assert len(server.requests) == 1
    stats = exporter.stats()
    assert stats["dropped_by_reason"] == {f"http-{status}": 50}
    warnings = [r.getMessage() for r in package_records(logs, logging.WARNING)]
    assert any(f"HTTP {status}" in w for w in warnings), warnings
