"""Delivery defects found by attacking v1, each reproduced over real loopback HTTP.

One section per defect. Each test failed on the code before its fix; together they pin the
class of bug, not only the one reproduction: an exception class nobody anticipated, an answer
read without its ``Content-Encoding`` undone, a spool file let go before what it still owes is
kept, a 4xx that is about the request bisected as if it were about the items, a TLS failure
retried as if it were an outage, an unbounded value in a log line.
"""

from __future__ import annotations

import gzip
import logging
import re
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FAKE_API_KEY, tagged_spans
from faultserver import (
    Answer,
    FaultServer,
    env_not_found_400,
    ok,
    reject_items,
    retry_later,
    tls_context,
    tls_files,
)
from loopback import refusing_endpoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import emitted_log_records

from opentelemetry_exporter_altertable import AltertableLogExporter, AltertableSpanExporter
from opentelemetry_exporter_altertable._answers import CONFIG_ERRORS
from opentelemetry_exporter_altertable._config import resolve_config
from opentelemetry_exporter_altertable._spool import Spool
from opentelemetry_exporter_altertable._transport import Transport

MakeExporter = Callable[..., AltertableSpanExporter]
Spans = Callable[..., list[ReadableSpan]]

PACKAGE = "opentelemetry_exporter_altertable"
#: Headroom for thread scheduling on a loaded machine, on top of a promised bound.
MARGIN = 0.75


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


def package_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(PACKAGE) and r.levelno >= level]


def spooled_items(directory: Path) -> int:
    """Items waiting in the spool at ``directory`` (read without taking them)."""
    spool = Spool(directory)
    claims = []
    try:
        while (claim := spool.claim()) is not None:
            claims.append(claim)
        return sum(claim.items for claim in claims)
    finally:
        for claim in claims:
            claim.release()


# ---------------------------------------------------------------------------- 1: one classification


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


def test_deliver_itself_never_raises(server: FaultServer, api_key: str) -> None:
    session = requests.Session()

    def hook(response: requests.Response, **_: Any) -> None:
        raise LookupError("not a network error")

    session.hooks["response"].append(hook)
    config = resolve_config(api_key=api_key, endpoint=server.endpoint, timeout=2)
    transport = Transport(config, session)
    items = [{"event": f"e{i}", "distinct_id": "u"} for i in range(3)]
    try:
        report = transport.deliver({"track": items, "alias": items[:1]}, deadline=1e18)
    finally:
        session.close()
    assert report.pending == {"track": items, "alias": items[:1]}
    assert report.accepted == {}


# ---------------------------------------------------------------------------- 2: Content-Encoding


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
def test_an_encoded_ok_false_is_a_refusal(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, encoding: str
) -> None:
    server.set_default(
        Answer(200, body={"ok": False, "error_code": "insert-failed"}, encoding=encoding)
    )
    exporter = make_exporter()

    assert exporter.export(spans(1)) is SpanExportResult.FAILURE

    stats = exporter.stats()
    assert stats["calls_exported"] == 0
    assert stats["dropped_by_reason"] == {"insert-failed": 1}


def test_an_encoded_acceptance_is_an_acceptance(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(Answer(200, body={"ok": True, "task_id": "t"}, encoding="gzip"))
    exporter = make_exporter()
    assert exporter.export(spans(3)) is SpanExportResult.SUCCESS
    assert exporter.stats()["calls_exported"] == 3


def test_a_gzipped_environment_not_found_is_a_setting_error_not_bisected(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, logs: Any
) -> None:
    server.set_default(Answer(400, body=env_not_found_400().body, encoding="gzip"))
    exporter = make_exporter(max_batch_size=50, environment="qa-7")

    assert exporter.export(spans(50)) is SpanExportResult.FAILURE

    assert len(server.requests) == 1
    stats = exporter.stats()
    assert stats["dropped_by_reason"] == {"undelivered-environment-not-found": 50}
    errors = [r.getMessage() for r in package_records(logs, logging.ERROR)]
    assert len(errors) == 1
    assert "'qa-7'" in errors[0]


def test_a_gzipped_answer_still_cannot_outlive_the_deadline(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    import time

    server.set_default(Answer(200, trickle=0.2, encoding="gzip"))
    exporter = make_exporter(timeout=1.0)
    started = time.monotonic()
    assert exporter.export(spans(2)) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 1.0 + MARGIN


def test_a_decompression_bomb_is_not_decoded_past_the_bound(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    """64 MiB of zeros in 64 KiB of gzip: read at most 1 MiB decoded; the status decides."""
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    server.set_default(
        Answer(200, body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "x/y"})
    )
    exporter = make_exporter()
    tracemalloc.start()
    try:
        result = exporter.export(spans(1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result is SpanExportResult.SUCCESS
    assert peak < 8 * 1024 * 1024


# ---------------------------------------------------------------------------- 3: replay


def test_a_failing_re_spool_keeps_the_original_file(
    server: FaultServer, spans: Spans, api_key: str, tmp_path: Path
) -> None:
    """Replay delivers half a file, the rest cannot be re-spooled: nothing may be lost."""
    spool = tmp_path / "spool"
    with refusing_endpoint() as down:
        first = AltertableSpanExporter(
            api_key=api_key, endpoint=down, spool_dir=spool, timeout=1, max_batch_size=100
        )
        assert first.export(spans(10)) is SpanExportResult.FAILURE
        first.shutdown()
    assert spooled_items(spool) == 10

    server.script("/track", [ok()])  # the first half goes through, then an outage
    server.set_default(retry_later(503))
    # A spool now too small for what is still owed: its put fails.
    second = AltertableSpanExporter(
        api_key=api_key,
        endpoint=server.endpoint,
        spool_dir=spool,
        spool_max_bytes=200,
        max_batch_size=5,
        timeout=1,
    )
    try:
        second.export([])
    finally:
        second.shutdown()

    assert len(server.accepted_items("/track")) == 5
    assert spooled_items(spool) == 10  # kept whole: 5 are sent again, none is lost


# ---------------------------------------------------------------------------- 4: other 4xx


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


def test_400_still_finds_the_bad_item(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.add_rule(reject_items(lambda item: item["properties"]["seq"] == 3, status=422))
    exporter = make_exporter(max_batch_size=8)
    assert exporter.export(spans(8)) is SpanExportResult.FAILURE
    assert len(server.accepted_items("/track")) == 7
    assert exporter.stats()["dropped_by_reason"] == {"invalid-event": 1}


# ---------------------------------------------------------------------------- 5: TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """A certificate for 127.0.0.1 and one for another name, both self-signed."""
    right = tmp_path_factory.mktemp("tls-right")
    wrong = tmp_path_factory.mktemp("tls-wrong")
    return {
        "right": tls_files(right, "IP:127.0.0.1"),
        "wrong": tls_files(wrong, "DNS:elsewhere.example"),
    }


def _tls_export(endpoint: str, tmp_path: Path) -> tuple[SpanExportResult, dict[str, object]]:
    exporter = AltertableSpanExporter(
        api_key=FAKE_API_KEY, endpoint=endpoint, spool_dir=tmp_path / "spool", timeout=3
    )
    try:
        return exporter.export(tagged_spans(3)), exporter.stats()
    finally:
        exporter.shutdown()


TLS_CAUSES = {
    "self-signed": "not trusted",
    "wrong-host": "another host name",
    "plain-http": "does not speak TLS",
}


@pytest.mark.parametrize("case", list(TLS_CAUSES))
def test_a_tls_failure_is_a_setting_error_said_once_with_the_fix(
    certificates: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logs: Any,
    case: str,
) -> None:
    cause = TLS_CAUSES[case]
    if case == "plain-http":
        server = FaultServer()
    else:
        cert, key = certificates["right" if case == "self-signed" else "wrong"]
        server = FaultServer(tls=tls_context(cert, key))
        if case == "wrong-host":
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trusted, but not for this host
    with server:
        endpoint = f"https://127.0.0.1:{server.port}"
        result, stats = _tls_export(endpoint, tmp_path)
        connections = server.connections_accepted

    assert result is SpanExportResult.FAILURE
    assert connections == 1  # no retry storm
    assert stats["calls_spooled"] == 3
    assert stats["calls_dropped"] == 0
    errors = [r.getMessage() for r in package_records(logs, logging.ERROR)]
    assert len(errors) == 1, errors
    assert cause in errors[0]
    assert "REQUESTS_CA_BUNDLE" in errors[0]
    assert "OTEL_EXPORTER_ALTERTABLE_ENDPOINT" in errors[0]
    assert FAKE_API_KEY not in logs.text


def test_a_trusted_certificate_delivers(
    certificates: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cert, key = certificates["right"]
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with FaultServer(tls=tls_context(cert, key)) as server:
        result, stats = _tls_export(server.endpoint, tmp_path)
        assert len(server.accepted_items("/track")) == 3
    assert result is SpanExportResult.SUCCESS
    assert stats["calls_exported"] == 3


# ---------------------------------------------------------------------------- 9: bounded logs


def test_no_log_line_carries_an_unbounded_value(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    logs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    huge = "x" * 1_000_000
    monkeypatch.setenv("OTEL_EXPORTER_ALTERTABLE_TIMEOUT", huge)  # a bad setting, echoed
    server.add_rule(reject_items(lambda item: item["event"] == huge))
    server.script("/identify", [Answer(400, body={"ok": False, "error_code": huge})])
    exporter = make_exporter(max_batch_size=4)

    exporter.export(spans(3, event=huge) + spans(1, start=3, **{"user.email": "a@b.c"}))
    exporter.export(spans(1, start=10, event=" " * 100_000))
    server.set_default(env_not_found_400())
    other = make_exporter(environment=huge)
    other.export(spans(1, start=20))
    other.shutdown()
    exporter.shutdown()

    records = package_records(logs, logging.DEBUG)
    assert records
    longest = max(len(r.getMessage()) for r in records)
    assert longest < 1500, longest


# ---------------------------------------------------------------------------- 10: environment


def test_environment_not_found_names_the_refused_environment(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, logs: Any
) -> None:
    server.set_default(env_not_found_400())
    exporter = make_exporter(environment="qa-7")

    exporter.export(spans(2))

    (error,) = [r.getMessage() for r in package_records(logs, logging.ERROR)]
    assert "'qa-7'" in error
    assert "OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT" in error


# ---------------------------------------------------------------------------- 11: counters


def test_log_records_without_analytics_data_are_counted_as_skipped(
    server: FaultServer, api_key: str
) -> None:
    records = emitted_log_records(
        [
            {"attributes": {"http.route": "/a"}, "body": "plain"},
            {"attributes": {}, "body": "plain"},
            {"attributes": {"analytics.event": "Signed Up", "user.id": "u1"}},
            {"attributes": {"user.email": "u2@example.com", "user.id": "u2"}},
        ]
    )
    exporter = AltertableLogExporter(api_key=api_key, endpoint=server.endpoint, timeout=2)
    try:
        exporter.export(records)
        stats = exporter.stats()
    finally:
        exporter.shutdown()
    assert stats["records_seen"] == 4
    assert stats["records_skipped"] == 2  # an identity with a trait is analytics data


def test_an_event_name_of_only_spaces_is_skipped_with_one_warning(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, logs: Any
) -> None:
    exporter = make_exporter()

    assert exporter.export(spans(2, event="   ")) is SpanExportResult.SUCCESS
    assert exporter.export(spans(1, start=2, event="\t ")) is SpanExportResult.SUCCESS
    assert exporter.export(spans(1, start=3)) is SpanExportResult.SUCCESS

    tracked = server.items("/track")
    assert [item["event"] for item in tracked] == ["Order Placed"]
    warnings = [r.getMessage() for r in package_records(logs, logging.WARNING)]
    assert len([w for w in warnings if "only spaces" in w]) == 1, warnings


def test_the_docs_name_the_drop_reasons_the_code_counts(
    spans: Spans, api_key: str
) -> None:
    """The docs' dropped_by_reason keys are the ones stats() reports."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "counters.md").read_text()
    with refusing_endpoint() as down:
        exporter = AltertableSpanExporter(api_key=api_key, endpoint=down, timeout=0.5)
        exporter.export(spans(1))
        reasons = exporter.stats()["dropped_by_reason"]
        exporter.shutdown()
    assert reasons == {"undelivered-retryable": 1}
    assert "`undelivered-retryable`" in readme
    assert "undelivered (retryable)" not in readme
    # Every reason of the exporter's own the docs list is one the code can count.
    table = readme.split("The keys of `dropped_by_reason`")[1].split("\n\n")[1]
    own = [
        key
        for row in table.splitlines()[4:]  # past the header and the API's own codes
        for key in re.findall(r"`([a-z-]+)`", row.split("|")[1])
    ]
    assert own, table
    source = "\n".join(
        path.read_text()
        for path in (Path(__file__).resolve().parents[1] / PACKAGE).glob("*.py")
    )
    settings = set(CONFIG_ERRORS) | {"retryable"}
    for key in own:
        if key.startswith("undelivered-"):
            assert key.removeprefix("undelivered-") in settings, key
        else:
            assert f'"{key}"' in source, key
