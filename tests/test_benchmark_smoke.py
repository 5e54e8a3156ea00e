"""The benchmark still runs end to end (its figures are read by people, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT


@pytest.mark.slow
@pytest.mark.once
def test_quick_benchmark_produces_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_export.py"), "--quick",
         "--no-memory", "--no-burst", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    expected = {"ours", "ours_stdlib", "otlp", "sdk", "floor", "skip", "skip_ids", "bridge"}
    assert expected <= set(report["scenarios"])
    for name in expected:
        scenario = report["scenarios"][name]
        assert len(scenario["rates"]) == report["meta"]["rounds"], name
        assert min(scenario["rates"]) > 0, name
        assert 0 <= scenario["spread"] < 1, name
    ratios = {"ours/OTLP", "ours/SDK", "ours/floor", "skip/tagged", "skip_ids/tagged"}
    assert set(report["ratios"]) >= {*ratios, "bridge/ours"}
    assert "ours/OTLP" in result.stdout
    # Every row prints its target beside it.
    assert "skip_ids/tagged >= 15x" in result.stdout
    assert "ours/OTLP >= 2.5x" in result.stdout
    # The app-overhead rows: each framework with no exporter, OTLP's and ours.
    for framework in ("flask", "fastapi"):
        for setup in ("none", "otlp", "ours"):
            app = report["scenarios"][f"app_{framework}_{setup}"]
            assert app["unit"] == "requests"
            assert min(app["rates"]) > 0 and min(app["cpu_us"]) > 0, (framework, setup)
        overhead = report["app_overheads"][f"app_{framework}_ours"]
        assert overhead["overhead_best"] is not None and overhead["cpu_extra"] is not None
    assert "<= 5% and less than OTLP's" in result.stdout
    # The journal's rows print figures (none "not measured yet"), with their targets.
    for name in ("bridge_grpc", "replay"):
        scenario = report["scenarios"][name]
        assert len(scenario["rates"]) == report["meta"]["rounds"], name
        assert min(scenario["rates"]) > 0, name
        assert scenario["bytes_per_item"], name  # its windows' calls reached the sink
    assert "bridge_grpc/ours >= 0.5x" in result.stdout
    assert "replay: a killed process's journal" in result.stdout
    figures = report["journal_record"]["figures"]
    for key in ("tagged_no_spool_us", "tagged_journal_us", "untagged_journal_us"):
        assert figures[key]["best"] > 0, key
    assert figures["tagged_journal_us"]["best"] > figures["tagged_no_spool_us"]["best"]
    assert "the journal adds" in result.stdout and "target <= 25 us" in result.stdout
    assert "untagged with the journal on / BatchSpanProcessor" in result.stdout
    for framework in ("flask", "fastapi"):
        journal = report["scenarios"][f"app_{framework}_journal"]
        assert min(journal["rates"]) > 0, framework
    assert "<= 5% more than ours" in result.stdout
    ack = report["bridge_ack"]
    assert ack["requests"] > 0 and 0 < ack["p50_ms"] <= ack["p99_ms"]
    assert 0 < ack["no_journal_p50_ms"] <= ack["no_journal_p99_ms"]
    assert "bridge acknowledgement latency" in result.stdout
    assert "not measured yet" not in result.stdout


@pytest.mark.slow
def test_memory_through_the_journal_is_measured(tmp_path: Path) -> None:
    """The journal's memory row: every event ended is exported, none dropped, the journal
    empty after the last flush."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_export.py"), "--memory-child",
         "20480", "--memory-journal"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["events"] == 20480 and figures["failures"] == 0
    assert figures["calls_exported"] == 20480
    assert figures["queue_dropped"] == 0 and figures["calls_spooled"] == 0
    assert figures["rss_at_end_kb"] > 0 and figures["rss_at_checkpoint_kb"] > 0
    assert figures["journal_bytes_before_shutdown"] < 4096  # retired entries leave the disk


def test_interleaved_rounds_give_every_scenario_the_same_rounds() -> None:
    """Each round runs one window of every scenario, starting one later each round."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_export import Result, Scenario, run_interleaved
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    order: list[str] = []

    def window(key: str) -> int:
        order.append(key)
        return 1

    scenarios = [
        Scenario(key, Result(key, "items", 1), lambda key=key: window(key)) for key in "abc"
    ]
    run_interleaved(scenarios, rounds=3)
    assert order == list("abc" + "abc" + "bca" + "cab")  # warm-up, then rotated rounds
    assert all(len(s.result.rates) == 3 for s in scenarios)
