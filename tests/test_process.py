"""Process-level behaviour: fork after the exporter exists, and the spool across processes.

Counts are exact: at-least-once delivery must not turn into "twice" when a process forks or
restarts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from faultserver import FaultServer, bad_request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import finished_spans
from support import SUBPROCESS_TIMEOUT, answered, refusing_endpoint

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy
from opentelemetry_exporter_altertable.receiver import LocalReceiver

CHILD_TIMEOUT = 15.0
NO_RETRY = RetryPolicy(total=0)


pytestmark = pytest.mark.usefixtures("no_altertable_settings")


@pytest.fixture
def closed_endpoint() -> Iterator[str]:
    with refusing_endpoint() as endpoint:
        yield endpoint


def _spans(*names: str, **attributes: Any) -> list[ReadableSpan]:
    return finished_spans(
        [(name, {"analytics.event": True, **attributes}, (), 0, 1_000_000) for name in names]
    )


def _spool_files(directory: Path) -> list[Path]:
    """Parcel files, claimed or not (hidden temporary files are not parcels)."""
    if not directory.exists():
        return []
    return sorted(
        p for p in directory.iterdir() if ".json" in p.name and not p.name.startswith(".")
    )


def _events(receiver: LocalReceiver) -> Counter[str]:
    rows = receiver.query("SELECT event FROM altertable.analytics.events")
    return Counter(row[0] for row in rows)


def _wait_for_child(pid: int, timeout: float) -> int:
    """The child's exit code; kills it and fails the test if it hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish within {timeout}s")


# ---------------------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.parametrize("given_session", [False, True], ids=["own-session", "given-session"])
def test_forked_child_exports_on_its_own_connections(given_session: bool) -> None:
    session = requests.Session() if given_session else None
    with FaultServer() as server:
        exporter = AltertableSpanExporter(
            api_key="pk_test_fork", endpoint=server.endpoint, timeout=5, session=session
        )
        try:
            assert exporter.export(_spans("parent-0")) is SpanExportResult.SUCCESS
            assert len(server.requests) == 1  # a pooled connection now exists
            child_batches = [_spans("child-0", "child-1", "child-2"), _spans("child-3")]
            parent_batches = [_spans("parent-1"), _spans("parent-2")]

            pid = os.fork()
            if pid == 0:  # the child: export, then leave without any cleanup of the parent's
                code = 3
                try:
                    results = [exporter.export(batch) for batch in child_batches]
                    code = 0 if all(r is SpanExportResult.SUCCESS for r in results) else 1
                except BaseException:
                    code = 2
                finally:
                    os._exit(code)

            try:
                first = exporter.export(parent_batches[0])  # while the child may be exporting
            finally:
                child_code = _wait_for_child(pid, CHILD_TIMEOUT)
            second = exporter.export(parent_batches[1])
        finally:
            exporter.shutdown()
            if session is not None:
                session.close()

        assert child_code == 0
        assert (first, second) == (SpanExportResult.SUCCESS, SpanExportResult.SUCCESS)
        tracked = server.requests_to("/track")
        events = Counter(item["event"] for r in tracked for item in r.items)
        expected = [f"child-{i}" for i in range(4)] + [f"parent-{i}" for i in range(3)]
        assert events == Counter(expected)  # each exactly once: nothing lost, nothing doubled
        child_connections = {
            r.connection for r in tracked if r.items[0]["event"].startswith("child-")
        }
        parent_connections = {
            r.connection for r in tracked if r.items[0]["event"].startswith("parent-")
        }
        assert len(tracked) == 5
        assert child_connections.isdisjoint(parent_connections)
        # The parent's pooled connection survived the child: it never had to reconnect.
        assert len(parent_connections) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_does_not_repeat_the_parents_held_back_drops(tmp_path: Path) -> None:
    """Drops the parent holds back for its next warning are the parent's to say: the child
    warns about its own drops only (it used to say the parent's again)."""
    said = tmp_path / "child-said.txt"
    with FaultServer() as server:
        server.set_default(bad_request(), "/track")  # every track refused for good: dropped
        exporter = AltertableSpanExporter(
            api_key="pk_test_fork", endpoint=server.endpoint, timeout=5, retry=NO_RETRY
        )
        try:
            exporter.export(_spans("parent-0"))  # said at once
            exporter.export(_spans("parent-1", "parent-2"))  # held back for the interval
            pid = os.fork()
            if pid == 0:  # the child: one drop of its own, then shutdown says what it holds
                code = 3
                try:
                    lines: list[str] = []
                    handler = logging.Handler()
                    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
                    logging.getLogger("opentelemetry_exporter_altertable").addHandler(handler)
                    exporter.export(_spans("child-0"))
                    exporter.shutdown()
                    said.write_text("\n".join(line for line in lines if "dropped" in line))
                    code = 0
                except BaseException:
                    code = 2
                finally:
                    os._exit(code)
            assert _wait_for_child(pid, CHILD_TIMEOUT) == 0
        finally:
            exporter.shutdown()
    [line] = said.read_text().splitlines()
    assert line.startswith("Altertable exporter dropped 1 call(s) (1 invalid-event)"), line
    assert "child-0" in line


# ---------------------------------------------------------------------------- spool


PROCESS_ONE = textwrap.dedent(
    """
    import json, sys
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy

    finished = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "restart-app"}))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("restart-app")
    for name, attributes in [
        ("spooled-a", {"user.id": "u-a"}),
        ("spooled-b", {"user.id": "u-b", "user.email": "b@example.com"}),
        ("spooled-c", {"user.id": "u-c"}),
    ]:
        with tracer.start_as_current_span(name, attributes={"analytics.event": True, **attributes}):
            pass
    # Endpoint, key and spool directory come from the environment.
    exporter = AltertableSpanExporter(timeout=2, retry=RetryPolicy(total=0))
    results = [exporter.export([span]).name for span in finished.get_finished_spans()]
    exporter.shutdown()
    provider.shutdown()
    print(json.dumps(results))
    """
)


def test_spool_is_replayed_by_the_next_process(
    tmp_path: Path, closed_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": closed_endpoint,
        "OTEL_EXPORTER_ALTERTABLE_API_KEY": "pk_test_restart",
        "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR": str(spool),
    }
    first = subprocess.run(
        [sys.executable, "-c", PROCESS_ONE],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == ["FAILURE"] * 3
    files = _spool_files(spool)
    assert len(files) == 3, files  # one parcel per failed export
    assert stat.S_IMODE(spool.stat().st_mode) & 0o077 == 0
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    assert "pk_test_restart" not in first.stderr

    # Process two (this one): a single export against a live receiver delivers the backlog.
    caplog.set_level(logging.WARNING)
    with LocalReceiver() as receiver:
        exporter = AltertableSpanExporter(
            api_key="pk_test_restart", endpoint=receiver.endpoint, spool_dir=spool
        )
        try:
            assert exporter.export(_spans("fresh-d")) is SpanExportResult.SUCCESS
            stats = exporter.stats()
        finally:
            exporter.shutdown()
        assert _events(receiver) == Counter(["spooled-a", "spooled-b", "spooled-c", "fresh-d"])
        identities = receiver.query(
            "SELECT distinct_id, traits FROM altertable.analytics.identities"
        )
        assert [(d, json.loads(t)) for d, t in identities] == [("u-b", {"email": "b@example.com"})]
        assert answered(receiver, "/identify", 1) == 1
    assert stats["calls_replayed"] == 4  # three tracks and one identify
    assert _spool_files(spool) == []
    assert stats["spool_files"] == 0


def test_full_spool_drops_the_oldest_and_says_how_many_events(
    tmp_path: Path, closed_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    older = _spans("old-1", "old-2")  # one parcel of two events
    newer = _spans("new-1")

    # Measure the two parcels with a roomy spool first.
    measure = tmp_path / "measure"
    exporter = AltertableSpanExporter(
        api_key="pk_test_full", endpoint=closed_endpoint, spool_dir=measure, retry=NO_RETRY
    )
    try:
        exporter.export(older)
        exporter.export(newer)
    finally:
        exporter.shutdown()
    sizes = [p.stat().st_size for p in _spool_files(measure)]
    assert len(sizes) == 2
    limit = max(sizes) + 64  # either parcel fits alone; both do not
    assert limit < sum(sizes)

    spool = tmp_path / "spool"
    caplog.set_level(logging.WARNING)
    exporter = AltertableSpanExporter(
        api_key="pk_test_full",
        endpoint=closed_endpoint,
        spool_dir=spool,
        spool_max_bytes=limit,
        retry=NO_RETRY,
    )
    try:
        assert exporter.export(older) is SpanExportResult.FAILURE
        assert len(_spool_files(spool)) == 1
        caplog.clear()
        assert exporter.export(newer) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert len(_spool_files(spool)) == 1
    lost = [
        int(m.group(1))
        for r in caplog.records
        if r.levelno == logging.WARNING
        for m in [re.search(r"(\d+) events? lost", r.getMessage())]
        if m
    ]
    assert lost == [2], caplog.text

    # What survived is the newest parcel, and only it is delivered later.
    with LocalReceiver() as receiver:
        exporter = AltertableSpanExporter(
            api_key="pk_test_full", endpoint=receiver.endpoint, spool_dir=spool
        )
        try:
            assert exporter.export(_spans("after")) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        assert _events(receiver) == Counter(["new-1", "after"])
    assert _spool_files(spool) == []
