"""The receiver's memory under hostile bodies, measured in a real ``altertable-otel serve``.

The bound: a 16 MiB array of ``{}`` sent gzipped (about 16 KiB on the wire), three at once,
leaves the receiver process's peak resident memory (``VmHWM``) below 1 GiB, and so does a
plain 16 MiB body; each is refused with a 4xx, never a 5xx. Before the limits on values and
items, three such requests took the process from ~95 MB to 3.8 GB.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from opentelemetry_exporter_altertable.receiver._app import DEFAULT_MAX_BODY_BYTES

SERVE = (sys.executable, "-m", "opentelemetry_exporter_altertable.cli", "serve")
PEAK_BOUND_BYTES = 1 << 30  # 1 GiB
ARRAY_OF_EMPTY_OBJECTS = b"[" + b"{}," * ((DEFAULT_MAX_BODY_BYTES - 4) // 3) + b"{}]"


def peak_rss_bytes(pid: int) -> int:
    """``VmHWM``: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    stderr = (tmp_path / "serve.stderr").open("w")
    process = subprocess.Popen(
        [*SERVE, "--port", "0", "--db", ":memory:", "--no-otlp-ports"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on " in line, line
        yield process, line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.communicate(timeout=30)
        stderr.close()


def _post(endpoint: str, body: bytes, headers: dict[str, str], answers: list[int]) -> None:
    response = requests.post(
        endpoint + "/track", data=body, headers={"X-API-Key": "k", **headers}, timeout=120
    )
    answers.append(response.status_code)


def test_compressed_array_attack_three_at_once_stays_below_the_bound(
    serve: tuple[subprocess.Popen[str], str],
) -> None:
    process, endpoint = serve
    before = peak_rss_bytes(process.pid)
    assert len(ARRAY_OF_EMPTY_OBJECTS) <= DEFAULT_MAX_BODY_BYTES
    bomb = gzip.compress(ARRAY_OF_EMPTY_OBJECTS, 9)
    assert len(bomb) < 64 * 1024
    answers: list[int] = []
    threads = [
        threading.Thread(target=_post, args=(endpoint, bomb, {"Content-Encoding": "gzip"}, answers))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert answers == [413, 413, 413]
    _post(endpoint, ARRAY_OF_EMPTY_OBJECTS, {}, answers)
    assert answers[3] == 413
    peak = peak_rss_bytes(process.pid)
    print(f"receiver peak RSS (VmHWM): {before / 2**20:.0f} MiB idle, {peak / 2**20:.0f} MiB after")
    assert peak < PEAK_BOUND_BYTES
    health = requests.get(endpoint + "/health", timeout=10)
    assert health.status_code == 200
