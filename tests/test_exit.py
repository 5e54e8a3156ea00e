"""Interpreter exit and Ctrl-C, in real processes: bounded, and nothing lost.

The SDK's exit shutdown joins its batch worker before it calls ``exporter.shutdown()``, so an
exporter that only reacted to ``shutdown()`` would wait out an outage (up to its whole timeout)
with the program already finished. These tests run an application in a child process against
a loopback endpoint that is down or hangs, and measure from the moment its main thread ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultserver import FaultServer, hang
from loopback import refusing_endpoint

from opentelemetry_exporter_altertable._spool import Spool

pytestmark = pytest.mark.usefixtures("no_altertable_settings")

#: What an export may take once the interpreter is exiting (docs/delivery.md: 2 seconds).
EXIT_BUDGET = 2.0
#: Interpreter teardown after the bound (modules, threads) on a loaded 2-core machine.
TEARDOWN = 1.5
#: Longer than any bound here: an exporter that waited it out would be caught.
EXPORT_TIMEOUT = 30

APP = textwrap.dedent(
    """
    import sys, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import {processor}
    from opentelemetry_exporter_altertable import AltertableSpanExporter

    # Built before the provider: its atexit hook is registered after the exporter's would be.
    exporter = AltertableSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor({processor}(exporter{options}))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("shop")
    print("ready", flush=True)
    if {wait_for_go}:
        sys.stdin.readline()
    for seq in range(5):
        attributes = {{"analytics.event": "Checkout", "user.id": f"u{{seq}}", "seq": seq}}
        with tracer.start_as_current_span("checkout", attributes=attributes):
            pass
    if {wait_for_go}:
        print("spans ended", flush=True)
        sys.stdin.readline()
    print(f"main ends {{time.time()}}", flush=True)
    """
)


def _app(processor: str, *, wait_for_go: bool, options: str = "") -> str:
    return APP.format(processor=processor, options=options, wait_for_go=wait_for_go)


def _environment(endpoint: str, spool: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ALTERTABLE_"))}
    env.update(
        OTEL_EXPORTER_ALTERTABLE_API_KEY="pk_test_exit",
        OTEL_EXPORTER_ALTERTABLE_ENDPOINT=endpoint,
        OTEL_EXPORTER_ALTERTABLE_TIMEOUT=str(EXPORT_TIMEOUT),
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    if spool is not None:
        env["OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR"] = str(spool)
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _start(
    processes: list[subprocess.Popen[str]], source: str, env: dict[str, str]
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", source],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(process)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _finish(process: subprocess.Popen[str]) -> tuple[float, str, str]:
    """(seconds from the main thread's end to the process's exit, stdout, stderr)."""
    # Not communicate(): it would miss what readline() already buffered. The output is a few
    # lines, far below a pipe's capacity, so waiting first cannot block the child.
    process.wait(timeout=EXPORT_TIMEOUT * 2)
    exited = time.time()
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    ends = [line for line in out.splitlines() if line.startswith("main ends ")]
    assert ends, (out, err)
    return exited - float(ends[0].split()[-1]), out, err


def _spooled(directory: Path) -> list[int]:
    spool = Spool(directory)
    seqs: list[int] = []
    while (claim := spool.claim()) is not None:
        seqs.extend(item["properties"]["seq"] for item in claim.calls.get("track", []))
        claim.done()
    return sorted(seqs)


def test_exit_with_the_endpoint_down_is_bounded_and_spools(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Spans still queued at exit: the SDK's final export must not wait out the backoff."""
    spool = tmp_path / "spool"
    with refusing_endpoint() as down:
        process = _start(
            processes,
            _app("BatchSpanProcessor", wait_for_go=False, options=", schedule_delay_millis=60000"),
            _environment(down, spool),
        )
        took, _, err = _finish(process)
    assert process.returncode == 0, err
    assert took < EXIT_BUDGET + TEARDOWN, (took, err)
    assert _spooled(spool) == [0, 1, 2, 3, 4]


def test_exit_during_an_export_to_a_hung_server_is_bounded_and_spools(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """An export already waiting on a server that never answers is cut short at exit."""
    spool = tmp_path / "spool"
    with FaultServer() as server:
        server.set_default(hang())
        process = _start(
            processes,
            _app("BatchSpanProcessor", wait_for_go=True, options=", schedule_delay_millis=50"),
            _environment(server.endpoint, spool),
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "spans ended"
        assert server.wait_for_requests(1, timeout=10)  # the worker's export is in flight
        process.stdin.write("\n")
        process.stdin.flush()
        took, _, err = _finish(process)
        assert len(server.requests) == 1
    assert process.returncode == 0, err
    assert took < EXIT_BUDGET + TEARDOWN, (took, err)
    assert _spooled(spool) == [0, 1, 2, 3, 4]


def test_exit_without_a_spool_counts_the_drop_in_one_warning(
    processes: list[subprocess.Popen[str]],
) -> None:
    with refusing_endpoint() as down:
        process = _start(
            processes,
            _app("BatchSpanProcessor", wait_for_go=False, options=", schedule_delay_millis=60000"),
            _environment(down, None),
        )
        took, _, err = _finish(process)
    assert process.returncode == 0, err
    assert took < EXIT_BUDGET + TEARDOWN, (took, err)
    drops = [line for line in err.splitlines() if "dropped" in line]
    assert len(drops) == 1, err
    assert "dropped 5 call(s)" in drops[0]
    assert "undelivered-retryable" in drops[0]


CTRL_C_APP = textwrap.dedent(
    """
    import json, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry_exporter_altertable import AltertableSpanExporter

    exporter = AltertableSpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")
    print("ready", flush=True)
    try:
        with tracer.start_as_current_span(
            "checkout", attributes={"analytics.event": "Checkout", "user.id": "u1", "seq": 7}
        ):
            pass
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True, "stats": exporter.stats()}), flush=True)
        sys.exit(130)
    print(json.dumps({"interrupted": False}), flush=True)
    """
)


@pytest.mark.parametrize("spool", [True, False], ids=["spooled", "counted"])
def test_ctrl_c_mid_export_keeps_the_call_then_re_raises(
    tmp_path: Path, processes: list[subprocess.Popen[str]], spool: bool
) -> None:
    directory = tmp_path / "spool"
    with FaultServer() as server:
        server.set_default(hang())
        process = subprocess.Popen(
            [sys.executable, "-c", CTRL_C_APP],
            env=_environment(server.endpoint, directory if spool else None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        assert server.wait_for_requests(1, timeout=10)  # span.end() is exporting, blocked
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
        assert process.stderr is not None
        out, err = process.stdout.read(), process.stderr.read()
    assert process.returncode == 130, (out, err)
    result = json.loads(out.splitlines()[-1])
    assert result["interrupted"] is True
    stats = result["stats"]
    if spool:
        assert stats["calls_spooled"] == 1
        assert stats["calls_dropped"] == 0
        spooled = Spool(directory)
        claim = spooled.claim()
        assert claim is not None
        assert [item["properties"]["seq"] for item in claim.calls["track"]] == [7]
    else:
        assert stats["calls_spooled"] == 0
        assert stats["dropped_by_reason"] == {"undelivered-retryable": 1}
