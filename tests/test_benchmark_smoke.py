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
    # The rows still to come are printed with their targets.
    assert "journal: calling-thread cost per record" in result.stdout
    assert "median <= 25 us" in result.stdout
    assert "gRPC bridge" in result.stdout


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
