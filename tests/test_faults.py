"""Delivery when things go wrong: outages, slow and hung servers, redirects, bad settings.

Every test runs a real exporter against a :class:`faultserver.FaultServer` on loopback and
counts exactly what was delivered, what was lost or dropped, and, where it is deterministic,
how many requests it took. Retries use ``support.fast_retry()`` (3 retries, 10 ms backoff, no
jitter) unless a test needs a longer wait to tell one behaviour from another.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from faultserver import (
    Answer,
    FaultServer,
    bad_request,
    close,
    env_not_found_400,
    env_not_found_422,
    forbidden,
    hang,
    ok,
    ok_false,
    retry_later,
    unauthorized,
)
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from otel_builders import emitted_log_records
from support import PACKAGE, MakeExporter, Spans, package_records, seqs, spooled_items

from opentelemetry_exporter_altertable import (
    AltertableLogExporter,
    AltertableSpanExporter,
    RetryPolicy,
)

#: Headroom for thread scheduling on a loaded machine, on top of a promised bound.
MARGIN = 0.5


def full_text(record: logging.LogRecord) -> str:
    """The record as a handler would print it, traceback included."""
    return logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)


@contextmanager
def backoff_started() -> Iterator[threading.Event]:
    """An event set when the transport starts a backoff wait (its "retrying" debug line)."""
    started = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("retrying "):
                started.set()

    logger = logging.getLogger(f"{PACKAGE}._transport")
    handler, level = Watch(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield started
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ---------------------------------------------------------------------------- connections


def test_connections_closed_without_an_answer_are_retried(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.script("/track", [close(), close()])
    exporter = make_exporter()

    assert exporter.export(spans(6)) is SpanExportResult.SUCCESS

    assert len(server.requests) == 3
    assert [r.answered for r in server.requests] == [False, False, True]
    assert server.connections_accepted == 3
    assert seqs(server.accepted_items("/track")) == list(range(6))
    stats = exporter.stats()
    assert stats["retries"] == 2
    assert stats["calls_exported"] == 6


def test_a_server_that_always_hangs_up_costs_the_retry_budget(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(close())
    exporter = make_exporter()

    assert exporter.export(spans(6)) is SpanExportResult.FAILURE

    assert len(server.requests) == 4
    assert server.accepted_items("/track") == []
    assert exporter.stats()["dropped_by_reason"] == {"undelivered-retryable": 6}


def test_a_server_slower_than_the_deadline(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(hang(30))
    exporter = make_exporter(timeout=0.5)

    started = time.monotonic()
    result = exporter.export(spans(3))
    elapsed = time.monotonic() - started

    assert result is SpanExportResult.FAILURE
    assert elapsed < 0.5 + MARGIN
    assert server.requests  # it did try
    assert server.accepted_items("/track") == []
    assert exporter.stats()["dropped_by_reason"] == {"undelivered-retryable": 3}


@pytest.mark.parametrize(
    ("spooled", "outcome"),
    [(False, (0, 3, {"undelivered-retryable": 3})), (True, (3, 0, {}))],
    ids=["no-spool", "spool"],
)
def test_a_server_trickling_its_answer_cannot_hold_export_past_its_deadline(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, tmp_path: Path, *,
    spooled: bool, outcome: tuple[int, int, dict[str, int]],
) -> None:  # fmt: skip
    # 40 body bytes, one every 50 ms: two seconds, though no read ever waits 50 ms.
    server.set_default(Answer(200, body=b'{"ok": true, "error_code": null, "x": 1}', trickle=0.05))
    exporter = make_exporter(timeout=0.5, spool_dir=tmp_path / "spool" if spooled else None)

    started = time.monotonic()
    result = exporter.export(spans(3))
    elapsed = time.monotonic() - started

    assert elapsed < 0.5 + MARGIN  # the contract's bound: the export's timeout
    assert result is SpanExportResult.FAILURE  # an answer never read is no acceptance
    # One attempt: the deadline passed while its answer trickled, no time for a retry.
    assert [(r.method, r.path, seqs(r.items)) for r in server.requests] == [
        ("POST", "/track", [0, 1, 2])
    ]
    stats = exporter.stats()
    assert stats["calls_exported"] == 0
    assert stats["requests"] == 0  # no answer was ever read whole
    # Every call is accounted for: spooled when a spool is set, else dropped with its reason.
    assert (stats["calls_spooled"], stats["calls_dropped"], stats["dropped_by_reason"]) == outcome


def test_nobody_listening_fails_quickly_without_raising(
    make_exporter: MakeExporter, spans: Spans
) -> None:
    # A bound socket that never listens: connections to its port are refused, and nothing
    # else can take the port while the test runs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        exporter = make_exporter(endpoint=f"http://127.0.0.1:{port}", timeout=2.0)

        started = time.monotonic()
        result = exporter.export(spans(5))
        elapsed = time.monotonic() - started

    assert result is SpanExportResult.FAILURE
    assert elapsed < 1.0
    stats = exporter.stats()
    assert stats["requests"] == 0
    assert stats["retries"] == 3
    assert stats["dropped_by_reason"] == {"undelivered-retryable": 5}


def test_shutdown_from_another_thread_interrupts_a_long_backoff(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(retry_later(503, "5"))
    exporter = make_exporter(timeout=10.0)
    batch = spans(3)
    results: list[SpanExportResult] = []
    worker = threading.Thread(target=lambda: results.append(exporter.export(batch)))
    with backoff_started() as waiting:
        worker.start()
        try:
            assert waiting.wait(5)  # now inside the five-second wait

            started = time.monotonic()
            exporter.shutdown(timeout_millis=2000)
            shutdown_took = time.monotonic() - started
            worker.join(1.0)
            export_done_after = time.monotonic() - started
        finally:
            worker.join(10)

    # Interrupted at once: well under the five-second wait, with a second of scheduling margin.
    assert shutdown_took < 1.0
    assert export_done_after < 1.0
    assert results == [SpanExportResult.FAILURE]
    assert len(server.requests) == 1
    stats = exporter.stats()
    assert (stats["calls_exported"], stats["calls_dropped"]) == (0, 3)
    assert stats["dropped_by_reason"] == {"undelivered-retryable": 3}


def test_a_body_that_times_out_mid_read_is_spooled_not_lost(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, tmp_path: Path, logs: Any
) -> None:
    """urllib3 raises ReadTimeoutError (not an OSError) when a body stalls mid-read."""
    server.set_default(Answer(200, stall=3))
    exporter = make_exporter(spool_dir=tmp_path / "spool", timeout=1.0)

    assert exporter.export(spans(7)) is SpanExportResult.FAILURE

    stats = exporter.stats()
    assert stats["calls_spooled"] == 7
    assert stats["calls_dropped"] == 0
    assert spooled_items(tmp_path / "spool") == 7
    assert not [r for r in package_records(logs, logging.ERROR) if "unexpectedly" in r.msg]


def test_a_body_cut_mid_read_is_retried(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    """A connection closed inside the body: urllib3's ProtocolError, transient."""
    server.script("/track", [Answer(200, truncate=5)])
    exporter = make_exporter()

    assert exporter.export(spans(4)) is SpanExportResult.SUCCESS

    assert len(server.requests_to("/track")) == 2
    assert len(server.accepted_items("/track")) == 4
    assert exporter.stats()["retries"] == 1


# ---------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_redirect_that_drops_the_body_is_not_a_delivery(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, status: int
) -> None:
    with FaultServer() as elsewhere:
        server.set_default(
            Answer(status, body=b"", headers={"Location": f"{elsewhere.endpoint}/track"})
        )
        exporter = make_exporter(retry=RetryPolicy(total=0))

        result = exporter.export(spans(3))

        assert elsewhere.accepted_items("/track") == []  # nothing was delivered anywhere...
        assert result is SpanExportResult.FAILURE  # ...so the export cannot have succeeded
        assert exporter.stats()["calls_exported"] == 0


@pytest.mark.parametrize("status", [307, 308])
def test_the_key_never_follows_a_redirect_to_another_origin(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, status: int
) -> None:
    with FaultServer() as elsewhere:
        server.set_default(
            Answer(status, body=b"", headers={"Location": f"{elsewhere.endpoint}/track"})
        )
        exporter = make_exporter(retry=RetryPolicy(total=0))

        exporter.export(spans(3))

        assert all("x-api-key" not in r.headers for r in elsewhere.requests)


# ---------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("answer", [unauthorized(), forbidden()], ids=["401", "403"])
def test_a_refused_key_is_reported_once_without_the_key(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    *,
    api_key: str,
    logs: pytest.LogCaptureFixture,
    answer: Answer,
) -> None:
    server.set_default(answer)
    exporter = make_exporter(max_batch_size=10)

    results = [exporter.export(spans(20, start=20 * n)) for n in range(3)]

    assert results == [SpanExportResult.FAILURE] * 3
    assert len(server.requests) == 3  # one refusal stops the rest of that export
    errors = package_records(logs, logging.ERROR)
    assert len(errors) == 1
    assert "OTEL_EXPORTER_ALTERTABLE_API_KEY" in errors[0].getMessage()
    for record in logs.records:
        assert api_key not in full_text(record)
    assert api_key not in repr(exporter.config)
    assert exporter.stats()["dropped_by_reason"] == {"undelivered-auth": 60}


@pytest.mark.parametrize(
    "answer", [env_not_found_400(), env_not_found_422()], ids=["400-error_code", "422-error"]
)
def test_an_unknown_environment_is_reported_once_with_the_fix(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    *,
    api_key: str,
    logs: pytest.LogCaptureFixture,
    answer: Answer,
) -> None:
    server.set_default(answer)
    exporter = make_exporter(environment="stagin", max_batch_size=10)

    results = [exporter.export(spans(20, start=20 * n)) for n in range(2)]

    assert results == [SpanExportResult.FAILURE] * 2
    assert len(server.requests) == 2  # no bisecting: no item is at fault
    assert {i["environment"] for i in server.items("/track")} == {"stagin"}
    errors = package_records(logs, logging.ERROR)
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT" in message
    assert "environment-not-found" in message
    assert "deployment.environment.name" in message
    for record in logs.records:
        assert api_key not in full_text(record)
    assert exporter.stats()["dropped_by_reason"] == {"undelivered-environment-not-found": 40}


def test_environment_not_found_names_the_refused_environment(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, logs: Any
) -> None:
    server.set_default(env_not_found_400())
    exporter = make_exporter(environment="qa-7")

    exporter.export(spans(2))

    (error,) = [r.getMessage() for r in package_records(logs, logging.ERROR)]
    assert "'qa-7'" in error
    assert "OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT" in error


#: Each nasty answer with what it must do to the 9 spans (chunks of 4, 4 and 1) and to the one
#: log record: (span requests, span reason or None when accepted, log requests).
#: A refusal of items (400, ok: false, 413) bisects each chunk down to single items: 7 + 7 + 1
#: requests, every item dropped with the answer's code. A wrong setting (401, 403, 404, 405,
#: 3xx, unknown environment) stops the export at its first request: every call undelivered.
#: A retryable answer (5xx, a closed connection) costs the retry budget (3 retries, then 1 for
#: the log exporter). A 2xx that does not say ``"ok": false`` is an acceptance, body or not.
NASTY_ANSWERS: dict[str, tuple[Answer, int, str | None, int]] = {
    "ok-false": (ok_false(), 15, "insert-failed", 1),
    "400": (bad_request(), 15, "invalid-event", 1),
    "401": (unauthorized(), 1, "undelivered-auth", 1),
    "403": (forbidden(), 1, "undelivered-auth", 1),
    "404": (Answer(404, body="not found"), 1, "undelivered-endpoint-not-found", 1),
    "405": (Answer(405, body=b""), 1, "undelivered-endpoint-not-found", 1),
    "413": (Answer(413, body=b""), 15, "http-413", 1),
    "422-env": (env_not_found_422(), 1, "undelivered-environment-not-found", 1),
    "500-json": (
        Answer(500, body={"ok": False, "error_code": "internal-error"}), 4,
        "undelivered-retryable", 2,
    ),
    "close": (close(), 4, "undelivered-retryable", 2),
    "200-not-json": (Answer(200, body="<html>hello</html>"), 3, None, 1),
    "200-array": (Answer(200, body=[1, 2, 3]), 3, None, 1),
    "200-truncated-json": (Answer(200, body=b'{"ok": tr'), 3, None, 1),
    "302-loop": (
        Answer(302, body=b"", headers={"Location": "/track"}), 1,
        "undelivered-endpoint-not-found", 1,
    ),
}


@pytest.mark.parametrize("name", sorted(NASTY_ANSWERS))
def test_export_never_raises(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, api_key: str, name: str
) -> None:
    answer, span_requests, reason, log_requests = NASTY_ANSWERS[name]
    server.set_default(answer)
    span_exporter = make_exporter(timeout=1.0, max_batch_size=4)
    log_exporter = AltertableLogExporter(
        api_key=api_key, endpoint=server.endpoint, timeout=1.0, retry=RetryPolicy(total=1)
    )
    try:
        result = span_exporter.export(spans(9))
        sent_for_spans = len(server.requests)
        log_result = log_exporter.export(
            emitted_log_records([{"attributes": {"analytics.event": "Seen", "user.id": "u1"}}])
        )
        log_stats = log_exporter.stats()
    finally:
        log_exporter.shutdown()

    accepted = reason is None
    assert result is (SpanExportResult.SUCCESS if accepted else SpanExportResult.FAILURE)
    assert log_result is (
        LogRecordExportResult.SUCCESS if accepted else LogRecordExportResult.FAILURE
    )
    assert (sent_for_spans, len(server.requests) - sent_for_spans) == (span_requests, log_requests)
    # Every call accounted for: accepted, or dropped with the reason the answer implies.
    for stats, calls in ((span_exporter.stats(), 9), (log_stats, 1)):
        assert stats["calls_built"] == calls
        assert stats["calls_exported"] == (calls if accepted else 0)
        assert stats["calls_dropped"] == (0 if accepted else calls)
        assert stats["calls_spooled"] == 0
        assert stats["dropped_by_reason"] == ({} if accepted else {reason: calls})


# ---------------------------------------------------------------------------- lifecycle


def test_export_after_shutdown_is_a_quiet_no_op(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    logs: pytest.LogCaptureFixture,
) -> None:
    exporter = make_exporter()
    batch = spans(3)
    exporter.shutdown()
    logs.clear()

    result = exporter.export(batch)

    assert result is SpanExportResult.FAILURE
    assert server.requests == []
    assert package_records(logs, logging.WARNING) == []
    assert exporter.stats()["records_seen"] == 0


def test_shutdown_twice_is_fine(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter()
    assert exporter.export(spans(2)) is SpanExportResult.SUCCESS

    started = time.monotonic()
    exporter.shutdown()
    exporter.shutdown()
    exporter.shutdown(timeout_millis=0)

    assert time.monotonic() - started < 0.5
    assert len(server.requests) == 1


def test_sixteen_threads_through_one_exporter_deliver_every_item_once(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter(max_batch_size=10, timeout=5.0)
    batches = [spans(50, start=50 * t) for t in range(16)]
    start_together = threading.Barrier(16)
    results: list[SpanExportResult] = []
    lock = threading.Lock()

    def run(batch: list[ReadableSpan]) -> None:
        start_together.wait()
        result = exporter.export(batch)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == [SpanExportResult.SUCCESS] * 16
    delivered = seqs(server.accepted_items("/track"))
    assert len(delivered) == 800
    assert sorted(delivered) == list(range(800))
    assert len(server.requests) == 80
    assert server.connections_accepted <= 16  # the pool, not a connection per request
    stats = exporter.stats()
    assert stats["calls_exported"] == 800
    assert stats["requests"] == 80


def test_a_hung_server_cannot_hold_the_batch_processor(
    server: FaultServer, make_exporter: MakeExporter
) -> None:
    server.set_default(hang())
    exporter = make_exporter(timeout=0.5)
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests.faults")
    try:
        for seq in range(5):
            tracer.start_span("checkout", attributes={"analytics.event": "Paid", "seq": seq}).end()
        started = time.monotonic()
        processor.force_flush(timeout_millis=1000)
        flush_took = time.monotonic() - started

        for seq in range(5):
            tracer.start_span("again", attributes={"analytics.event": "Paid", "seq": seq}).end()
        started = time.monotonic()
        processor.shutdown()
        shutdown_took = time.monotonic() - started
    finally:
        provider.shutdown()

    assert flush_took < 1.0 + MARGIN
    assert shutdown_took < 0.5 + 1.0 + MARGIN
    # Both batches were attempted once each: the hang outlived each export's deadline.
    assert [len(r.items) for r in server.requests] == [5, 5]
    assert server.accepted_items("/track") == []


# ---------------------------------------------------------------------------- spool


def test_an_outage_is_spooled_and_delivered_once_the_server_recovers(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, tmp_path: Path
) -> None:
    server.script("/track", [ok()])  # the first batch gets through, then an outage
    server.set_default(retry_later(503))
    exporter = make_exporter(spool_dir=tmp_path / "spool", max_batch_size=10)

    assert exporter.export(spans(30)) is SpanExportResult.FAILURE
    assert exporter.export(spans(10, start=30)) is SpanExportResult.FAILURE

    assert seqs(server.accepted_items("/track")) == list(range(10))
    stats = exporter.stats()
    assert stats["calls_spooled"] == 30
    assert stats["calls_dropped"] == 0
    assert stats["spool_files"] == 2
    outage_requests = len(server.requests)

    server.set_default(ok())
    assert exporter.export(spans(5, start=40)) is SpanExportResult.SUCCESS

    delivered = seqs(server.accepted_items("/track"))
    assert delivered == list(range(45))  # oldest first, nothing lost, nothing twice
    stats = exporter.stats()
    assert stats["calls_replayed"] == 30
    assert stats["calls_exported"] == 45
    assert stats["calls_dropped"] == 0
    assert stats["spool_files"] == 0
    assert len(server.requests) - outage_requests == 3 + 1  # 2 + 1 spooled batches, 1 new


def test_calls_pending_at_shutdown_are_delivered_by_the_next_exporter(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    server.set_default(retry_later(503, "5"))
    first = make_exporter(spool_dir=spool, timeout=10.0)
    batch = spans(12)
    results: list[SpanExportResult] = []
    worker = threading.Thread(target=lambda: results.append(first.export(batch)))
    with backoff_started() as waiting:
        worker.start()
        try:
            assert waiting.wait(5)  # the export waits out the five-second Retry-After
            started = time.monotonic()
            first.shutdown(timeout_millis=2000)
            worker.join(1.0)
            export_took = time.monotonic() - started
        finally:
            worker.join(5)
    # The export ended promptly (the wait is cut short; a second of scheduling margin), and
    # every call it held was spooled: none delivered, none dropped.
    assert export_took < 1.0
    assert results == [SpanExportResult.FAILURE]
    stats = first.stats()
    assert (stats["calls_exported"], stats["calls_spooled"], stats["calls_dropped"]) == (0, 12, 0)
    assert stats["spool_files"] == 1
    assert len(server.requests) == 1
    assert server.accepted_items("/track") == []

    server.set_default(ok())
    second = make_exporter(spool_dir=spool)  # as a restarted process would
    assert second.export([]) is SpanExportResult.SUCCESS

    assert seqs(server.accepted_items("/track")) == list(range(12))
    assert second.stats()["calls_replayed"] == 12
    assert second.stats()["spool_files"] == 0


# -------------------------------------------------------------------- exceptions nobody anticipated


def test_an_exception_nobody_anticipated_owes_the_rest_of_the_export(
    server: FaultServer, spans: Spans, api_key: str, tmp_path: Path, logs: Any
) -> None:
    """A user's session hook raising its own exception class: the calls are spooled."""

    class HookFailure(Exception):
        pass

    def hook(response: requests.Response, **_: Any) -> None:
        raise HookFailure("boom")

    session = requests.Session()
    session.hooks["response"].append(hook)
    exporter = AltertableSpanExporter(
        api_key=api_key,
        endpoint=server.endpoint,
        session=session,
        spool_dir=tmp_path / "spool",
        max_batch_size=5,
        timeout=2,
    )
    try:
        assert exporter.export(spans(12)) is SpanExportResult.FAILURE
        stats = exporter.stats()
    finally:
        exporter.shutdown()
        session.close()
    assert len(server.requests) == 1  # the first chunk failed: the rest was not tried
    assert stats["calls_spooled"] == 12
    assert stats["calls_dropped"] == 0
    errors = package_records(logs, logging.ERROR)
    assert len(errors) == 1
    assert "HookFailure" in errors[0].getMessage()
