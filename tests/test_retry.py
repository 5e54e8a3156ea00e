"""Retrying: the backoff, ``Retry-After``, and the retry policy's bounds.

The pure parts (:meth:`RetryPolicy.backoff`, :func:`parse_retry_after`, the policy's checks)
are tested on their own; the rest over real HTTP on loopback, where a real exporter retries
against a :class:`faultserver.FaultServer` and the test counts requests and the gaps between
them. Retries use ``support.fast_retry()`` (3 retries, 10 ms backoff, no jitter) unless a test
needs a longer wait to tell one behaviour from another.
"""

from __future__ import annotations

import random
import time
from email.utils import formatdate
from typing import Any

import pytest
from faultserver import Answer, FaultServer, Request, retry_later
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SpanExportResult
from support import MakeExporter, Spans, seqs

from opentelemetry_exporter_altertable import RetryPolicy
from opentelemetry_exporter_altertable._retry import parse_retry_after

#: Headroom for thread scheduling on a loaded machine, on top of a promised bound.
MARGIN = 0.5


def gap(first: Request, second: Request) -> float:
    """Seconds between two requests' arrival at the server."""
    return second.received_at - first.received_at


# ---------------------------------------------------------------------------- backoff


class Draws:
    """A random source that records the bounds asked for and answers from a script."""

    def __init__(self, *answers: float) -> None:
        self.answers = list(answers)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return self.answers.pop(0)


def test_backoff_doubles_is_capped_and_scaled_by_the_jitter_draw() -> None:
    policy = RetryPolicy(total=9, backoff_factor=0.5, backoff_max=3.0, jitter=0.25)
    draws = Draws(0.75, 1.25, 1.0, 0.75, 1.25)

    delays = [policy.backoff(n, draws) for n in range(5)]  # type: ignore[arg-type]

    # Bases 0.5, 1, 2, then 3 (capped; 4 and 8 without the cap), each times its draw.
    assert delays == [0.375, 1.25, 2.0, 2.25, 3.75]
    assert draws.bounds == [(0.75, 1.25)] * 5


def test_backoff_without_jitter_draws_nothing() -> None:
    policy = RetryPolicy(backoff_factor=0.1, backoff_max=1.0, jitter=0)
    draws = Draws()
    assert [policy.backoff(n, draws) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.0]  # type: ignore[arg-type]
    assert draws.bounds == []


def test_backoff_with_a_seeded_source_is_reproducible_and_varies() -> None:
    policy = RetryPolicy(backoff_factor=1.0, backoff_max=100.0, jitter=0.5)
    first = [policy.backoff(3, random.Random(7)) for _ in range(2)]
    mirror = random.Random(7)
    assert first == [8.0 * mirror.uniform(0.5, 1.5)] * 2
    source = random.Random(11)
    spread = {policy.backoff(3, source) for _ in range(20)}
    assert len(spread) == 20  # a fresh draw each time, not a constant
    assert all(4.0 <= d <= 12.0 for d in spread)


@given(
    retry=st.integers(0, 40),
    factor=st.floats(0, 10),
    cap=st.floats(0, 60),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_inside_its_jitter_bounds(
    retry: int, factor: float, cap: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(backoff_factor=factor, backoff_max=cap, jitter=jitter)
    base = min(cap, factor * 2.0**retry)
    delay = policy.backoff(retry, random.Random(seed))
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


# ---------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("7", 7.0), (" 2 ", 2.0), ("0.0", 0.0), ("0.5", 0.5), ("1.5", 1.5),
     ("-0.5", None), ("inf", None), ("nan", None), ("", None), (None, None),
     ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
     ("Wed, 21 Oct 2015 07:28:10", None)],
)  # fmt: skip
def test_retry_after_in_seconds_from_either_form(value: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(value, now=now) == seconds


# ---------------------------------------------------------------------------- the policy's bounds


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"total": -1}, "RetryPolicy.total must be >= 0"),
     ({"backoff_factor": -0.01}, "RetryPolicy backoff values must be >= 0"),
     ({"backoff_max": -0.01}, "RetryPolicy backoff values must be >= 0"),
     ({"jitter": -0.01}, "RetryPolicy.jitter must be between 0 and 1"),
     ({"jitter": 1.01}, "RetryPolicy.jitter must be between 0 and 1")],
)  # fmt: skip
def test_a_retry_policy_out_of_bounds_is_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        RetryPolicy(**settings)
    assert str(raised.value) == message


def test_a_retry_policy_on_its_bounds_is_accepted() -> None:
    edge = RetryPolicy(total=0, backoff_factor=0, backoff_max=0, jitter=0)
    assert (edge.total, edge.backoff_factor, edge.backoff_max, edge.jitter) == (0, 0, 0, 0)
    assert RetryPolicy(jitter=1).jitter == 1


# ---------------------------------------------------------------------------- retries over HTTP


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 429])
def test_a_retryable_status_uses_the_whole_retry_budget_then_fails(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, status: int
) -> None:
    server.set_default(Answer(status, body=b""))
    exporter = make_exporter(retry=RetryPolicy(total=3, backoff_factor=0.01, jitter=0))

    result = exporter.export(spans(5))

    assert result is SpanExportResult.FAILURE
    assert len(server.requests) == 4  # total=3 retries: 4 attempts
    assert server.accepted_items("/track") == []
    stats = exporter.stats()
    assert stats["requests"] == 4
    assert stats["retries"] == 3
    assert stats["calls_exported"] == 0
    assert stats["calls_dropped"] == 5
    assert stats["dropped_by_reason"] == {"undelivered-retryable": 5}


@pytest.mark.parametrize(("first", "second"), [(500, 502), (503, 504), (408, 429), (408, 500)])
def test_success_after_two_failures(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, first: int, second: int
) -> None:
    server.script("/track", [Answer(first, body=b""), Answer(second, body=b"")])
    exporter = make_exporter(retry=RetryPolicy(total=3, backoff_factor=0.01, jitter=0))

    result = exporter.export(spans(5))

    assert result is SpanExportResult.SUCCESS
    assert [r.status for r in server.requests] == [first, second, 200]
    assert seqs(server.accepted_items("/track")) == [0, 1, 2, 3, 4]
    stats = exporter.stats()
    assert stats["requests"] == 3
    assert stats["retries"] == 2
    assert stats["calls_exported"] == 5
    assert stats["calls_dropped"] == 0


def test_no_retries_at_all_with_total_zero(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(retry_later(503))
    exporter = make_exporter(retry=RetryPolicy(total=0, backoff_factor=0.01, jitter=0))

    assert exporter.export(spans(3)) is SpanExportResult.FAILURE
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------- Retry-After over HTTP


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_honoured(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, status: int
) -> None:
    server.script("/track", [retry_later(status, "1")])
    exporter = make_exporter(timeout=3.0)

    assert exporter.export(spans(2)) is SpanExportResult.SUCCESS

    first, second = server.requests
    assert 0.95 <= gap(first, second) < 1.0 + MARGIN  # not the 10 ms backoff
    assert seqs(server.accepted_items("/track")) == [0, 1]


def test_retry_after_as_an_http_date_is_honoured(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    # HTTP-dates have whole seconds: two seconds ahead means a wait of more than one second.
    server.script("/track", [retry_later(503, formatdate(time.time() + 2, usegmt=True))])
    exporter = make_exporter(timeout=4.0)

    assert exporter.export(spans(2)) is SpanExportResult.SUCCESS

    first, second = server.requests
    assert 0.9 <= gap(first, second) < 2.0 + MARGIN
    assert seqs(server.accepted_items("/track")) == [0, 1]


@pytest.mark.parametrize(
    "retry_after",
    ["0", formatdate(time.time() - 3600, usegmt=True)],
    ids=["zero", "date-in-the-past"],
)
def test_retry_after_zero_or_past_retries_at_once(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, retry_after: str
) -> None:
    server.script("/track", [retry_later(429, retry_after)])
    # A one-second backoff, so that falling back to it would show.
    exporter = make_exporter(retry=RetryPolicy(total=3, backoff_factor=1.0, jitter=0))

    assert exporter.export(spans(2)) is SpanExportResult.SUCCESS

    first, second = server.requests
    assert gap(first, second) < 0.5
    assert exporter.stats()["retries"] == 1


def test_a_retry_after_beyond_the_deadline_ends_the_export_by_its_timeout(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(retry_later(503, "3600"))
    exporter = make_exporter(timeout=1.0)

    started = time.monotonic()
    result = exporter.export(spans(4))
    elapsed = time.monotonic() - started

    assert result is SpanExportResult.FAILURE
    assert elapsed < 1.0 + MARGIN
    assert len(server.requests) == 1  # waiting an hour is pointless: no second attempt
    assert exporter.stats()["dropped_by_reason"] == {"undelivered-retryable": 4}


@pytest.mark.parametrize("retry_after", ["soon", "-5", "nan", "Thu, 99 Foo 2024 99:00:00 GMT"])
def test_a_malformed_retry_after_falls_back_to_the_backoff(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, retry_after: str
) -> None:
    server.script("/track", [retry_later(503, retry_after)])
    exporter = make_exporter(retry=RetryPolicy(total=3, backoff_factor=0.2, jitter=0))

    assert exporter.export(spans(2)) is SpanExportResult.SUCCESS

    first, second = server.requests
    assert 0.18 <= gap(first, second) < 0.2 + MARGIN
    assert seqs(server.accepted_items("/track")) == [0, 1]
