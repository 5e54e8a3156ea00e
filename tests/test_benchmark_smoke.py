"""The benchmark still runs end to end (its figures are read by people, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT


@pytest.mark.slow
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
    expected = {"ours", "ours_stdlib", "otlp", "sdk", "floor", "skip", "bridge"}
    assert expected <= set(report["scenarios"])
    for name in ("ours", "otlp", "sdk", "floor", "skip", "bridge"):
        assert max(report["scenarios"][name]["rates"]) > 0, name
    ratios = {"ours/OTLP", "ours/SDK", "ours/floor", "skip/tagged", "bridge/ours"}
    assert set(report["ratios"]) >= ratios
    assert "ours/OTLP" in result.stdout
