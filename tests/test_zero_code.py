"""Zero-code setup: ``opentelemetry-instrument`` picks the exporters by their entry point name.

Each test runs a small app in a fresh interpreter under ``opentelemetry-instrument`` (the one
installed next to the running Python), configured only through environment variables, and then
looks at what reached a local receiver. The apps never call ``shutdown()``: the SDK's exit hook
must deliver what is still queued.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from faultserver import FaultServer, hang
from support import INSTRUMENT, SUBPROCESS_TIMEOUT, answered

from opentelemetry_exporter_altertable.receiver import LocalReceiver

TRACING_APP = """
from opentelemetry import trace

tracer = trace.get_tracer("zero-code-app")
with tracer.start_as_current_span(
    "checkout", attributes={"analytics.event": "Order Placed", "user.id": "u-zero", "amount": 12}
):
    pass
with tracer.start_as_current_span("untagged"):
    pass
# No shutdown(), no flush: the interpreter exits with the span still queued.
"""

LOGGING_APP = """
import logging

logging.getLogger("zero-code-app").warning(
    "user signed up",
    extra={"analytics.event": "Signed Up", "user.id": "u-log", "plan": "pro"},
)
logging.getLogger("zero-code-app").warning("an ordinary log line")
"""

EMPTY_APP = "print('done')\n"


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as r:
        yield r


def _clean_environment() -> dict[str, str]:
    """The current environment without any OpenTelemetry or Altertable setting."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "ALTERTABLE_"))
    }


def _run(
    tmp_path: Path, app: str, settings: Mapping[str, str], *, instrumented: bool = True
) -> tuple[subprocess.CompletedProcess[str], float]:
    script = tmp_path / "app.py"
    script.write_text(app)
    env = {
        **_clean_environment(),
        "OTEL_SERVICE_NAME": "zero-code-app",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **settings,
    }
    command = [sys.executable, str(script)]
    if instrumented:
        command = [str(INSTRUMENT), *command]
    started = time.monotonic()
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return result, elapsed


def _altertable(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": endpoint,
        "OTEL_EXPORTER_ALTERTABLE_API_KEY": "pk_test_zero_code",
    }


def test_traces_exporter_by_name_delivers_queued_spans_at_exit(
    tmp_path: Path, receiver: LocalReceiver
) -> None:
    _run(
        tmp_path,
        TRACING_APP,
        {"OTEL_TRACES_EXPORTER": "altertable", **_altertable(receiver.endpoint)},
    )
    rows = receiver.query(
        "SELECT event, distinct_id, environment, properties FROM altertable.analytics.events"
    )
    assert len(rows) == 1, rows
    event, distinct_id, environment, properties = rows[0]
    assert (event, distinct_id, environment) == ("Order Placed", "u-zero", "production")
    props = json.loads(properties)
    assert props["amount"] == 12
    assert props["service.name"] == "zero-code-app"
    assert props["$lib"] == "opentelemetry-exporter-altertable"
    assert answered(receiver, "/track", 1) == 1


def test_logs_exporter_by_name_delivers_tagged_log_records(
    tmp_path: Path, receiver: LocalReceiver
) -> None:
    _run(
        tmp_path,
        LOGGING_APP,
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "altertable",
            "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
            **_altertable(receiver.endpoint),
        },
    )
    rows = receiver.query("SELECT event, distinct_id, properties FROM altertable.analytics.events")
    assert len(rows) == 1, rows
    event, distinct_id, properties = rows[0]
    assert (event, distinct_id) == ("Signed Up", "u-log")
    props = json.loads(properties)
    assert props["plan"] == "pro"
    assert props["service.name"] == "zero-code-app"


def test_exit_with_an_empty_queue_adds_no_noticeable_delay(tmp_path: Path) -> None:
    """Nothing queued: the exit hook must not wait on anything, not even a hung server."""
    with FaultServer() as server:
        server.set_default(hang())  # any request at exit would stall the process
        settings = {"OTEL_TRACES_EXPORTER": "altertable", **_altertable(server.endpoint)}
        baseline_settings = {"OTEL_TRACES_EXPORTER": "none"}
        extras: list[float] = []
        for _ in range(2):  # a second pair only if the first was slowed by a busy machine
            _, baseline = _run(tmp_path, EMPTY_APP, baseline_settings)
            result, with_exporter = _run(tmp_path, EMPTY_APP, settings)
            assert result.stdout.strip() == "done"
            extras.append(with_exporter - baseline)
            if extras[-1] < 1.5:
                break
        assert server.requests == []
    assert min(extras) < 1.5, extras
