"""The gRPC bridge's measurement still runs end to end, beside the HTTP row (figures are read
by people, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.once
def test_quick_grpc_bridge_measurement_gives_both_rows(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grpc_bridge.py"), "--quick", "--json",
         str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert set(rows) == {"bridge over HTTP", "bridge over gRPC"}
    assert all(len(rates) == 3 and min(rates) > 0 for rates in rows.values())
    assert "bridge over gRPC" in result.stdout
