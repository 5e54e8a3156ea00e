"""What an exporter tells its operator about itself: ``stats()``, self-metrics, drop warnings.

Counts are checked exactly, over real HTTP against a :class:`faultserver.FaultServer`: every
scenario below knows how many requests, retries and drops it must cause. The OpenTelemetry
self-metrics follow the SDK's semantic conventions for exporter health
(``otel.sdk.exporter.span.exported`` and friends). Whether the global meter provider is used
depends on process-wide state, so those cases run in a fresh interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, ok, reject_items, retry_later
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import T0_NS, emitted_log_records, finished_spans
from support import (
    FAKE_API_KEY,
    PACKAGE,
    MakeExporter,
    Spans,
    fast_retry,
    package_records,
    refusing_endpoint,
)

from opentelemetry_exporter_altertable import AltertableLogExporter, AltertableSpanExporter
from opentelemetry_exporter_altertable._answers import CONFIG_ERRORS

EXPORTED = "otel.sdk.exporter.span.exported"
LOG_EXPORTED = "otel.sdk.exporter.log.exported"
INFLIGHT = "otel.sdk.exporter.span.inflight"
DURATION = "otel.sdk.exporter.operation.duration"


def counters(exporter: AltertableSpanExporter | AltertableLogExporter) -> dict[str, object]:
    """The stats the scenarios pin down (spool gauges are checked where a spool exists)."""
    stats = exporter.stats()
    keys = (
        "records_seen",
        "calls_built",
        "calls_exported",
        "requests",
        "retries",
        "calls_spooled",
        "calls_replayed",
        "calls_dropped",
        "dropped_by_reason",
    )
    return {key: stats[key] for key in keys}


def expected(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "records_seen": 0,
        "calls_built": 0,
        "calls_exported": 0,
        "requests": 0,
        "retries": 0,
        "calls_spooled": 0,
        "calls_replayed": 0,
        "calls_dropped": 0,
        "dropped_by_reason": {},
    }
    base.update(values)
    return base


def seq_is(*bad: int) -> Callable[[Any], bool]:
    return lambda item: item.get("properties", {}).get("seq") in bad


# ---------------------------------------------------------------------------- stats()


def test_stats_start_at_zero(make_exporter: MakeExporter) -> None:
    exporter = make_exporter()
    stats = exporter.stats()
    assert counters(exporter) == expected()
    assert stats["records_skipped"] == 0


def test_stats_count_a_clean_export_split_into_batches(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter(max_batch_size=2)

    assert exporter.export(spans(5)) is SpanExportResult.SUCCESS

    assert counters(exporter) == expected(
        records_seen=5, calls_built=5, calls_exported=5, requests=3
    )
    assert len(server.accepted_items("/track")) == 5


def test_stats_count_retries_and_every_answered_request(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.script("/track", [retry_later(503), retry_later(429, retry_after="0"), ok()])
    exporter = make_exporter()

    assert exporter.export(spans(4)) is SpanExportResult.SUCCESS

    assert counters(exporter) == expected(
        records_seen=4, calls_built=4, calls_exported=4, requests=3, retries=2
    )


def test_stats_count_a_refused_item_found_by_bisection(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.add_rule(reject_items(seq_is(2)), path="/track")
    exporter = make_exporter()

    assert exporter.export(spans(4)) is SpanExportResult.FAILURE

    # [0..3] refused -> [0,1] accepted, [2,3] refused -> [2] refused, [3] accepted.
    assert counters(exporter) == expected(
        records_seen=4,
        calls_built=4,
        calls_exported=3,
        requests=5,
        calls_dropped=1,
        dropped_by_reason={"invalid-event": 1},
    )
    assert sorted(item["properties"]["seq"] for item in server.accepted_items("/track")) == [
        0,
        1,
        3,
    ]


def test_stats_count_an_outage_without_spool_as_undelivered_drops(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(retry_later(503))
    exporter = make_exporter()

    assert exporter.export(spans(3)) is SpanExportResult.FAILURE

    attempts = fast_retry().total + 1
    assert counters(exporter) == expected(
        records_seen=3,
        calls_built=3,
        requests=attempts,
        retries=fast_retry().total,
        calls_dropped=3,
        dropped_by_reason={"undelivered-retryable": 3},
    )


def test_stats_count_spooled_then_replayed_calls(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, tmp_path: Path
) -> None:
    server.set_default(retry_later(503))
    exporter = make_exporter(spool_dir=tmp_path / "spool")

    assert exporter.export(spans(3)) is SpanExportResult.FAILURE
    stats = exporter.stats()
    assert counters(exporter) == expected(
        records_seen=3,
        calls_built=3,
        requests=fast_retry().total + 1,
        retries=fast_retry().total,
        calls_spooled=3,
    )
    assert stats["spool_files"] == 1
    assert isinstance(stats["spool_bytes"], int)
    assert stats["spool_bytes"] > 0

    server.set_default(ok())
    assert exporter.export(spans(2, start=3)) is SpanExportResult.SUCCESS

    stats = exporter.stats()
    assert counters(exporter) == expected(
        records_seen=5,
        calls_built=5,
        calls_exported=5,  # the 3 replayed and the 2 new
        requests=fast_retry().total + 1 + 2,  # one replay request, one for the new calls
        retries=fast_retry().total,
        calls_spooled=3,
        calls_replayed=3,
    )
    assert (stats["spool_files"], stats["spool_bytes"]) == (0, 0)
    accepted = [item["properties"]["seq"] for item in server.accepted_items("/track")]
    assert accepted == [0, 1, 2, 3, 4]


def test_stats_count_identifies_and_not_the_ones_already_sent(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter()
    batch = spans(2, **{"user.email": "ada@example.com"})  # users user-0 and user-1

    assert exporter.export(batch) is SpanExportResult.SUCCESS
    assert counters(exporter) == expected(
        records_seen=2, calls_built=4, calls_exported=4, requests=2
    )

    assert exporter.export(batch) is SpanExportResult.SUCCESS  # same identities: tracks only
    assert counters(exporter) == expected(
        records_seen=4, calls_built=6, calls_exported=6, requests=3
    )
    assert len(server.requests_to("/identify")) == 1


def test_stats_count_records_without_analytics_data_as_skipped(
    server: FaultServer, make_exporter: MakeExporter
) -> None:
    batch = finished_spans(
        [
            ("checkout", {"analytics.event": "Order Placed", "user.id": "u1"}, (), T0_NS, T0_NS),
            ("GET /healthz", {"http.route": "/healthz"}, (), T0_NS, T0_NS),
            ("SELECT", {"db.system.name": "postgresql"}, (), T0_NS, T0_NS),
        ]
    )
    exporter = make_exporter()

    assert exporter.export(batch) is SpanExportResult.SUCCESS

    stats = exporter.stats()
    assert (stats["records_seen"], stats["calls_built"], stats["requests"]) == (3, 1, 1)
    assert stats["records_skipped"] == 2


def test_log_exporter_keeps_its_own_stats(server: FaultServer) -> None:
    records = emitted_log_records(
        [
            {"attributes": {"analytics.event": "Signed Up", "user.id": "u1"}},
            {"attributes": {"analytics.event": "Logged In", "user.id": "u1"}},
            {"attributes": {"http.route": "/"}, "body": "an ordinary log line"},
        ]
    )
    exporter = AltertableLogExporter(
        api_key=FAKE_API_KEY, endpoint=server.endpoint, timeout=2.0, retry=fast_retry()
    )
    try:
        assert exporter.export(records) is LogRecordExportResult.SUCCESS
        assert counters(exporter) == expected(
            records_seen=3, calls_built=2, calls_exported=2, requests=1
        )
    finally:
        exporter.shutdown()


# ---------------------------------------------------------------------------- self-metrics


def metric_points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    """``(attributes, point)`` for every data point of metric ``name``."""
    data = reader.get_metrics_data()
    found: list[tuple[dict[str, Any], Any]] = []
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    found.extend(
                        (dict(point.attributes or {}), point) for point in metric.data.data_points
                    )
    return found


def by_error_type(points: list[tuple[dict[str, Any], Any]]) -> dict[str | None, int]:
    return {attrs.get("error.type"): point.value for attrs, point in points}


def test_span_exporter_self_metrics_count_items_with_error_type_on_failure(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    reader = InMemoryMetricReader()
    exporter = make_exporter(meter_provider=MeterProvider(metric_readers=[reader]))

    assert exporter.export(spans(3)) is SpanExportResult.SUCCESS
    server.set_default(retry_later(503))
    assert exporter.export(spans(2, start=3)) is SpanExportResult.FAILURE

    exported = metric_points(reader, EXPORTED)
    counts = by_error_type(exported)
    assert counts.pop(None) == 3
    assert list(counts.values()) == [2], counts
    (error_type,) = counts
    assert isinstance(error_type, str)
    assert error_type
    for attrs, _ in exported:
        assert attrs["otel.component.type"]
        assert attrs["otel.component.name"]

    durations = metric_points(reader, DURATION)
    assert sum(point.count for _, point in durations) == 2
    assert all(point.sum >= 0 for _, point in durations)
    assert {attrs.get("error.type") for attrs, _ in durations} == {None, error_type}

    inflight = metric_points(reader, INFLIGHT)
    assert inflight
    assert sum(point.value for _, point in inflight) == 0


def test_refused_items_are_counted_with_an_error_type(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.add_rule(reject_items(seq_is(1)), path="/track")
    reader = InMemoryMetricReader()
    exporter = make_exporter(meter_provider=MeterProvider(metric_readers=[reader]))

    assert exporter.export(spans(4)) is SpanExportResult.FAILURE

    counts = by_error_type(metric_points(reader, EXPORTED))
    assert None not in counts  # the export failed: none of its items counts as a success
    assert sum(counts.values()) == 4


def test_export_without_api_key_is_counted_as_failed(
    server: FaultServer, spans: Spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export that cannot even start has still finished, unsuccessfully, for its items."""
    monkeypatch.delenv("OTEL_EXPORTER_ALTERTABLE_API_KEY", raising=False)
    monkeypatch.delenv("ALTERTABLE_API_KEY", raising=False)
    reader = InMemoryMetricReader()
    exporter = AltertableSpanExporter(
        endpoint=server.endpoint, meter_provider=MeterProvider(metric_readers=[reader])
    )
    try:
        assert exporter.export(spans(2)) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()

    counts = by_error_type(metric_points(reader, EXPORTED))
    assert None not in counts
    assert sum(counts.values()) == 2
    assert server.requests == []


def test_log_exporter_self_metrics(server: FaultServer) -> None:
    reader = InMemoryMetricReader()
    exporter = AltertableLogExporter(
        api_key=FAKE_API_KEY,
        endpoint=server.endpoint,
        timeout=2.0,
        retry=fast_retry(),
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    tagged = [
        {"attributes": {"analytics.event": "Signed Up", "user.id": f"u{i}"}} for i in range(3)
    ]
    try:
        assert exporter.export(emitted_log_records(tagged)) is LogRecordExportResult.SUCCESS
        server.set_default(retry_later(503))
        assert exporter.export(emitted_log_records(tagged[:1])) is LogRecordExportResult.FAILURE
    finally:
        exporter.shutdown()

    counts = by_error_type(metric_points(reader, LOG_EXPORTED))
    assert counts.pop(None) == 3
    assert list(counts.values()) == [1]
    assert metric_points(reader, EXPORTED) == []  # a log exporter does not report spans
    durations = metric_points(reader, DURATION)
    assert sum(point.count for _, point in durations) == 2
    inflight = metric_points(reader, "otel.sdk.exporter.log.inflight")
    assert sum(point.value for _, point in inflight) == 0


GLOBAL_METRICS_APP = textwrap.dedent(
    """
    import json

    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from opentelemetry_exporter_altertable import AltertableSpanExporter

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(AltertableSpanExporter()))
    tracer = provider.get_tracer("app")
    for _ in range(3):
        with tracer.start_as_current_span("buy", attributes={"analytics.event": "Bought"}):
            pass
    provider.shutdown()

    found = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = metric.data.data_points
                # Sums and gauges have a value; histograms count their recordings.
                found[metric.name] = sum(
                    p.value if hasattr(p, "value") else p.count for p in points
                )
    print(json.dumps(found))
    """
)


@pytest.mark.parametrize("enabled", [True, False], ids=["internal-metrics-on", "off"])
def test_global_meter_provider_is_used_only_when_internal_metrics_are_enabled(
    server: FaultServer, tmp_path: Path, enabled: bool
) -> None:
    """The switch is the SDK's own; a fresh interpreter keeps the global provider contained."""
    script = tmp_path / "app.py"
    script.write_text(GLOBAL_METRICS_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ALTERTABLE_"))}
    env.update(
        {
            "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": server.endpoint,
            "OTEL_EXPORTER_ALTERTABLE_API_KEY": FAKE_API_KEY,
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    if enabled:
        env["OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"] = "true"

    result = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(server.accepted_items("/track")) == 3  # delivered either way
    ours = {name: value for name, value in found.items() if name.startswith("otel.sdk.exporter.")}
    if enabled:
        assert ours[EXPORTED] == 3
        assert ours[DURATION] == 3
        assert ours[INFLIGHT] == 0
    else:
        assert ours == {}


# ---------------------------------------------------------------------------- drop warnings


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith(PACKAGE) and r.levelno == logging.WARNING
    ]


def drop_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in warnings_logged(caplog) if "dropped" in r.getMessage()]


def test_refused_items_of_one_export_make_one_warning_with_their_count(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=PACKAGE)
    server.add_rule(reject_items(seq_is(1, 3, 4)), path="/track")
    exporter = make_exporter()

    assert exporter.export(spans(6)) is SpanExportResult.FAILURE

    assert exporter.stats()["calls_dropped"] == 3
    logged = warnings_logged(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    message = logged[0].getMessage()
    assert "dropped 3 call(s)" in message, message
    assert "invalid-event" in message
    assert FAKE_API_KEY not in caplog.text


def test_drops_in_a_row_are_reported_at_most_once_a_minute(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=PACKAGE)
    server.add_rule(reject_items(lambda item: True), path="/track")
    exporter = make_exporter()

    for start in range(4):
        assert exporter.export(spans(1, start=start)) is SpanExportResult.FAILURE

    stats = exporter.stats()
    assert stats["calls_dropped"] == 4
    assert stats["dropped_by_reason"] == {"invalid-event": 4}
    assert len(drop_warnings(caplog)) == 1, drop_warnings(caplog)


def test_undelivered_calls_are_reported_once_with_their_count(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=PACKAGE)
    server.set_default(retry_later(503))
    exporter = make_exporter(max_batch_size=2)

    assert exporter.export(spans(5)) is SpanExportResult.FAILURE

    messages = drop_warnings(caplog)
    assert len(messages) == 1, messages
    assert "dropped 5 call(s)" in messages[0]
    assert "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR" in messages[0]  # the fix is named
    assert FAKE_API_KEY not in caplog.text


# ------------------------------------------------------------ what is counted as skipped or dropped


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
