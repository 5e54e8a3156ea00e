"""The soak benchmark, scaled down: 20,000 events through the SDK's BatchSpanProcessor into a
receiver that refuses, drops and goes down on purpose, behind a proxy that sends answers slowly,
stalls them mid-body and refuses gzipped; nothing may be lost."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def soak() -> Iterator[Any]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import soak as module

        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _stat(stats: dict[str, object], name: str) -> int:
    value = stats.get(name, 0)
    assert isinstance(value, int)
    return value


@pytest.mark.slow
@pytest.mark.once
def test_twenty_thousand_events_survive_faults_and_an_outage(soak: Any) -> None:
    config = soak.SoakConfig.quick(events=20_000)
    assert config.outage_seconds == 2.0
    result = soak.run_soak(config)
    report = soak.format_report(result)

    assert result.events_ended == 20_000, report
    assert result.sdk_queue_dropped == 0, report
    assert result.lost == 0, report
    assert result.stored_distinct == 20_000, report
    assert result.stored_out_of_range == 0, report
    assert result.stored_rows == 20_000 + result.duplicated, report
    assert result.spool_files_left == 0, report
    assert result.passed
    assert "RESULT: PASS" in report

    faults = result.faults
    assert faults["errors"] > 0, report
    assert faults["drops"] > 0, report
    assert faults["outage_drops"] > 0, report
    assert faults["injected"] == (
        faults["errors"] + faults["drops"] + faults["outage_errors"] + faults["outage_drops"]
    )
    assert result.receiver_answers.get("/track 503", 0) == faults["errors"], report
    broken = result.body_faults  # answers the proxy broke between receiver and exporter
    for kind in ("slow", "stall", "gzip-retry", "gzip-environment"):
        assert broken.get(kind, 0) > 0, (kind, report)

    running, drain = result.exporter_stats, result.drain_stats
    assert _stat(running, "retries") > 0, report
    spooled = _stat(running, "calls_spooled") + _stat(drain, "calls_spooled")
    replayed = _stat(running, "calls_replayed") + _stat(drain, "calls_replayed")
    assert spooled > 0, report
    assert replayed >= spooled, report  # everything spooled came back out
    assert _stat(running, "calls_dropped") + _stat(drain, "calls_dropped") == 0, report
    assert result.exporter_peak_mib > 0
    assert result.receiver_peak_mib > 0


@pytest.mark.slow
@pytest.mark.once
def test_the_soak_sees_losses_when_the_spool_cannot_keep_them(soak: Any) -> None:
    """The counting is real: with a spool too small for any parcel, the outage loses events."""
    config = soak.SoakConfig.quick(
        events=3_000,
        outage_start=0.0,
        outage_seconds=1.0,
        error_rate=0.0,
        drop_rate=0.0,
        spool_max_bytes=1,
    )
    result = soak.run_soak(config)
    report = soak.format_report(result)

    assert result.sdk_queue_dropped == 0, report
    assert result.lost > 0, report
    assert result.lost == 3_000 - result.stored_distinct
    assert result.lost_sample, report
    assert min(result.lost_sample) == 0, report  # the first batches met the outage
    dropped = result.exporter_stats["dropped_by_reason"]
    assert isinstance(dropped, dict)
    assert dropped.get("spool-refused", 0) == result.lost, report
    assert not result.passed
    assert "RESULT: FAIL" in report


@pytest.mark.slow
@pytest.mark.once
def test_what_shutdown_leaves_in_the_spool_is_replayed_by_the_final_drain(soak: Any) -> None:
    """The outage outlasts the producer and the provider's shutdown: only the drain delivers."""
    config = soak.SoakConfig.quick(events=1_000, outage_start=0.0, outage_seconds=3.0)
    result = soak.run_soak(config)
    report = soak.format_report(result)

    assert result.lost == 0, report
    assert result.stored_distinct == 1_000, report
    assert result.spool_files_left == 0, report
    assert _stat(result.exporter_stats, "calls_spooled") == 1_000, report
    assert _stat(result.exporter_stats, "calls_replayed") == 0, report
    assert _stat(result.drain_stats, "calls_replayed") == 1_000, report
    assert result.drain_exports >= 2, report  # the first ones still met the outage
