"""What the bridge acknowledges it keeps: journaled before 200 / OK, delivered after.

Every span carries a unique ``seq``; the tests count, at the receiving end, which arrived and
how many times, through outages, a full journal, a killed bridge and a slow API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from faultserver import Answer, FaultServer, hang, retry_later
from grpc_support import TRACES_METHOD, call, running_fronts
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from support import (
    CLI,
    KEY,
    ROOT,
    dead_journal,
    free_port,
    otlp_span_exporter,
    running_bridge,
    start_bridge_process,
    tagged_spans,
)

from opentelemetry_exporter_altertable.receiver import LocalReceiver
from opentelemetry_exporter_altertable.receiver._faults import FaultInjector, FaultPlan

# Real bridge processes under attack or outage: the main suite runs them once.
pytestmark = pytest.mark.once

PROTOBUF = {"Content-Type": "application/x-protobuf"}


class Clock:
    """The outage clock of a receiver: the outage lasts until the test ends it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def down_until_told() -> tuple[FaultInjector, Clock]:
    clock = Clock()
    return FaultInjector(FaultPlan(outages=((0.0, 1000.0),)), clock=clock), clock


def delivered(receiver: LocalReceiver) -> Counter[int]:
    """How many times each ``seq`` was stored."""
    rows = receiver.query(
        "SELECT CAST(json_extract(properties, '$.seq') AS INTEGER) FROM altertable.analytics.events"
    )
    return Counter(seq for (seq,) in rows)


def wait_for(receiver: LocalReceiver, expected: set[int], timeout: float) -> Counter[int]:
    deadline = time.monotonic() + timeout
    while True:
        seen = delivered(receiver)
        if expected <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def body(count: int, start: int) -> bytes:
    return encode_spans(tagged_spans(count, start=start)).SerializeToString()


def post(base: str, data: bytes, timeout: float = 10) -> requests.Response:
    return requests.post(f"{base}/v1/traces", data=data, headers=PROTOBUF, timeout=timeout)


@contextmanager
def bridge_process(endpoint: str, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``altertable-otel bridge`` (HTTP only) on a free port, delivering to ``endpoint``."""
    process, base, _ = start_bridge_process(endpoint, "--no-grpc", *extra)
    try:
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


# ------------------------------------------------------------------------ a full journal


def test_a_full_journal_answers_503_and_evicts_nothing_it_acknowledged(tmp_path: Path) -> None:
    injector, clock = down_until_told()
    per_request, requests_sent = 100, 40
    everything = set(range(per_request * requests_sent))
    with (
        LocalReceiver(faults=injector) as receiver,
        running_bridge(
            receiver.endpoint,
            timeout=0.3,
            spool_dir=str(tmp_path / "journal"),
            spool_max_bytes=256 * 1024,
        ) as bridge,
    ):
        bodies = {n: body(per_request, n * per_request) for n in range(requests_sent)}
        statuses: Counter[int] = Counter()
        resend: list[int] = []
        for n, data in bodies.items():  # Altertable is down throughout
            answer = post(bridge.endpoint, data)
            statuses[answer.status_code] += 1
            if answer.status_code != 200:
                assert answer.status_code == 503
                assert answer.headers["Retry-After"] == "5"
                resend.append(n)
        assert statuses[200] >= 1
        assert statuses[503] >= 1  # the journal's bound said no, rather than evict
        clock.now = 2000.0  # Altertable is back
        deadline = time.monotonic() + 60
        while resend and time.monotonic() < deadline:  # the sender retries what got 503
            time.sleep(0.2)
            resend = [n for n in resend if post(bridge.endpoint, bodies[n]).status_code != 200]
        assert not resend
        seen = wait_for(receiver, everything, 60)
        stats = bridge.bridge.delivery.stats()
    assert set(seen) == everything  # every span acknowledged was delivered: none evicted
    assert sum(seen.values()) == len(everything)  # and each once
    assert stats["journal_refused"] >= statuses[503]
    assert "spool-full" not in json.dumps(stats)


# ------------------------------------------------------------------------ a slow API


def test_without_journal_a_collector_batch_behind_a_slow_api_is_answered_in_time() -> None:
    count = 8192  # the Collector's default batch
    with FaultServer() as api, running_bridge(api.endpoint, timeout=5.0) as bridge:
        api.set_default(Answer(200, delay=0.1), "/track")
        assert not bridge.bridge.delivery.journaled
        data = body(count, 0)
        started = time.monotonic()
        answer = post(bridge.endpoint, data, timeout=10)  # an OTLP sender's default timeout
        took = time.monotonic() - started
        seqs = Counter(item["properties"]["seq"] for item in api.accepted_items("/track"))
    assert answer.status_code == 200, answer.text
    assert took < 10
    assert set(seqs) == set(range(count))
    assert sum(seqs.values()) - count == 0  # duplicates


def test_with_journal_the_same_batch_is_answered_at_once_and_delivered(tmp_path: Path) -> None:
    count = 8192
    with (
        FaultServer() as api,
        running_bridge(api.endpoint, timeout=5.0, spool_dir=str(tmp_path / "journal")) as bridge,
    ):
        api.set_default(Answer(200, delay=0.1), "/track")
        assert bridge.bridge.delivery.journaled
        started = time.monotonic()
        answer = post(bridge.endpoint, body(count, 0), timeout=10)
        took = time.monotonic() - started
        deadline = time.monotonic() + 60
        while len(api.accepted_items("/track")) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        seqs = Counter(item["properties"]["seq"] for item in api.accepted_items("/track"))
    assert answer.status_code == 200
    assert took < 3.0  # mapping and one journal write: not 82 requests to a slow API
    assert set(seqs) == set(range(count))
    assert sum(seqs.values()) == count


# ------------------------------------------------------------------------ the stock sender


def test_the_python_sender_loses_nothing_through_an_outage_with_the_default_journal() -> None:
    # Altertable refuses everything for 8 s while the stock OTLP/HTTP exporter (a 5 s
    # timeout, as a latency-minded service sets it) sends through a bridge started with no
    # flag about durability at all. Delivering before answering, the bridge would spend the
    # sender's whole budget on its own attempts.
    plan = FaultPlan(outages=((0.0, 8.0),))
    total = 450
    with LocalReceiver(faults=plan) as receiver, bridge_process(receiver.endpoint) as (_p, base):
        assert receiver.faults is not None
        receiver.faults.begin()
        provider = TracerProvider(resource=Resource({"service.name": "outage"}))
        provider.add_span_processor(
            BatchSpanProcessor(otlp_span_exporter(base, timeout=5), schedule_delay_millis=500)
        )
        tracer = provider.get_tracer("outage")
        for seq in range(total):
            with tracer.start_as_current_span(
                "work", attributes={"analytics.event": "Outage Survived", "seq": seq}
            ):
                pass
            time.sleep(8.0 / total)
        provider.force_flush(30_000)
        provider.shutdown()
        seen = wait_for(receiver, set(range(total)), 60)
    assert set(seen) == set(range(total))


# ------------------------------------------------------------------------ a killed bridge


def test_a_killed_bridge_s_acknowledged_calls_are_delivered_by_the_next(tmp_path: Path) -> None:
    injector, clock = down_until_told()
    journal = str(tmp_path / "journal")
    with LocalReceiver(faults=injector) as receiver:
        with bridge_process(receiver.endpoint, "--spool-dir", journal) as (process, base):
            for n in range(5):
                assert post(base, body(20, n * 20)).status_code == 200
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        assert delivered(receiver) == Counter()
        assert any(name.startswith("journal-") for name in os.listdir(journal))
        clock.now = 2000.0  # Altertable is back; a new bridge starts on the same directory
        with bridge_process(receiver.endpoint, "--spool-dir", journal):
            seen = wait_for(receiver, set(range(100)), 30)
    assert set(seen) == set(range(100))
    assert sum(seen.values()) == 100


def test_sigterm_keeps_what_was_acknowledged_for_the_next_start(tmp_path: Path) -> None:
    injector, clock = down_until_told()
    journal = str(tmp_path / "journal")
    with LocalReceiver(faults=injector) as receiver:
        with bridge_process(receiver.endpoint, "--spool-dir", journal) as (process, base):
            assert post(base, body(30, 0)).status_code == 200
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
            assert time.monotonic() - started < 5  # prompt, even with Altertable down
            assert process.returncode == 0, err
            assert "Bridge stopped." in out
        clock.now = 2000.0
        with bridge_process(receiver.endpoint, "--spool-dir", journal):
            seen = wait_for(receiver, set(range(30)), 30)
    assert set(seen) == set(range(30))


def test_sigterm_exits_promptly_while_altertable_hangs(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    with FaultServer() as api:
        api.set_default(hang(), "/track")
        with bridge_process(api.endpoint, "--spool-dir", journal) as (process, base):
            assert post(base, body(10, 0)).status_code == 200
            assert api.wait_for_requests(1, timeout=10)  # a delivery attempt is under way
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=30)
            assert time.monotonic() - started < 6, err
            assert process.returncode == 0, err
        api.set_default(Answer(200), "/track")
        with bridge_process(api.endpoint, "--spool-dir", journal):
            deadline = time.monotonic() + 30
            while len(api.accepted_items("/track")) < 10 and time.monotonic() < deadline:
                time.sleep(0.2)
        seqs = Counter(item["properties"]["seq"] for item in api.accepted_items("/track"))
    assert set(seqs) == set(range(10))
    assert sum(seqs.values()) == 10


def test_two_live_bridges_on_one_directory_send_each_call_once(tmp_path: Path) -> None:
    injector, clock = down_until_told()
    journal = str(tmp_path / "journal")
    with (
        LocalReceiver(faults=injector) as receiver,
        running_bridge(receiver.endpoint, timeout=0.3, spool_dir=journal) as first,
        running_bridge(receiver.endpoint, timeout=0.3, spool_dir=journal) as second,
    ):
        for n in range(10):
            bridge = first if n % 2 else second
            assert post(bridge.endpoint, body(10, n * 10)).status_code == 200
        # Each looks for dead journals in the directory: the other's is alive, never taken.
        for server in (first, second):
            acknowledged = server.bridge.delivery.acknowledged
            assert acknowledged is not None
            acknowledged._recover()
        clock.now = 2000.0
        seen = wait_for(receiver, set(range(100)), 30)
        time.sleep(0.5)
        seen = delivered(receiver)
    assert set(seen) == set(range(100))
    assert sum(seen.values()) == 100


def test_a_second_bridge_process_never_takes_a_live_bridge_s_journal(tmp_path: Path) -> None:
    injector, clock = down_until_told()
    journal = str(tmp_path / "journal")
    with (
        LocalReceiver(faults=injector) as receiver,
        bridge_process(receiver.endpoint, "--spool-dir", journal) as (_a, first),
        bridge_process(receiver.endpoint, "--spool-dir", journal) as (_b, second),
    ):
        for n in range(6):
            assert post(first if n % 2 else second, body(10, n * 10)).status_code == 200
        # A third starts on the directory while both live: it recovers nothing.
        with bridge_process(receiver.endpoint, "--spool-dir", journal):
            clock.now = 2000.0
            wait_for(receiver, set(range(60)), 30)
            time.sleep(1.0)
            seen = delivered(receiver)
    assert set(seen) == set(range(60))
    assert sum(seen.values()) == 60


# ------------------------------------------------------------------------ gRPC


def test_grpc_ok_once_journaled_and_unavailable_when_the_journal_is_full(tmp_path: Path) -> None:
    settings: dict[str, Any] = {
        "timeout": 0.3,
        "spool_dir": str(tmp_path / "journal"),
        "spool_max_bytes": 64 * 1024,
    }
    with FaultServer() as api, running_fronts(api.endpoint, **settings) as fronts:
        api.set_default(retry_later(503))
        codes = [
            call(fronts.grpc.target, TRACES_METHOD, body(100, n * 100)).code for n in range(10)
        ]
        full = call(fronts.grpc.target, TRACES_METHOD, body(100, 5000))
        api.set_default(Answer(200))
        deadline = time.monotonic() + 30
        acked = 100 * codes.count(grpc.StatusCode.OK)
        while len(api.accepted_items("/track")) < acked and time.monotonic() < deadline:
            time.sleep(0.2)
        seqs = Counter(item["properties"]["seq"] for item in api.accepted_items("/track"))
    assert codes[0] is grpc.StatusCode.OK
    assert grpc.StatusCode.UNAVAILABLE in codes
    assert full.code is grpc.StatusCode.UNAVAILABLE
    assert "google.rpc.retryinfo-bin" in full.trailers
    assert "journal is full" in (full.details or "")
    ok = [n for n, code in enumerate(codes) if code is grpc.StatusCode.OK]
    assert set(seqs) == {n * 100 + i for n in ok for i in range(100)}


def test_a_dead_journal_too_big_for_the_bridge_s_room_waits_whole_on_disk(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    dead_journal(journal, 1000)  # about 300 KB of calls
    with LocalReceiver() as receiver:
        with running_bridge(
            receiver.endpoint, spool_dir=str(journal), spool_max_bytes=64 * 1024
        ) as small:
            time.sleep(0.5)
            assert delivered(receiver) == Counter()  # not taken in part
            assert small.bridge.delivery.stats()["journal_owed"] == 0
        assert any(name.startswith("journal-") for name in os.listdir(journal))
        with running_bridge(receiver.endpoint, spool_dir=str(journal)):
            seen = wait_for(receiver, set(range(1000)), 30)
    assert set(seen) == set(range(1000))
    assert sum(seen.values()) == 1000


def _banner(extra: list[str], env: dict[str, str]) -> str:
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "bridge", "--port", str(port), "--no-grpc", *extra],
        env={**os.environ, "OTEL_EXPORTER_ALTERTABLE_API_KEY": KEY, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    return "".join(lines)


def test_the_journal_s_directory_default_variable_flag_and_off(tmp_path: Path) -> None:
    state = tmp_path / "state"
    default = _banner([], {"XDG_STATE_HOME": str(state)})
    assert f"journal:       {state / 'altertable-otel' / 'bridge'} (200 once" in default
    assert (state / "altertable-otel" / "bridge").stat().st_mode & 0o777 == 0o700
    variable = _banner([], {"OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR": str(tmp_path / "v")})
    assert f"journal:       {tmp_path / 'v'} (200 once" in variable
    flag = _banner(["--spool-dir", str(tmp_path / "f")], {})
    assert f"journal:       {tmp_path / 'f'} (200 once" in flag
    off = _banner(["--no-journal"], {})
    assert "journal:       off" in off
    assert "spool: off" in off


def test_a_journal_directory_others_may_write_stops_the_bridge(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = subprocess.run(
        [*CLI, "bridge", "--port", str(free_port()), "--no-grpc", "--spool-dir", str(shared)],
        env={**os.environ, "OTEL_EXPORTER_ALTERTABLE_API_KEY": KEY},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "--no-journal" in result.stderr
    assert "writable by group or others" in result.stderr


def test_side_by_side_tracks_never_overtake_their_identifies() -> None:
    spans = tagged_spans(1000, **{"user.email": "someone@example.com"})
    with (
        FaultServer() as api,
        running_bridge(api.endpoint, timeout=5.0, max_batch_size=50) as bridge,
    ):
        api.set_default(Answer(200, delay=0.02))
        answer = post(bridge.endpoint, encode_spans(spans).SerializeToString())
        paths = [request.path for request in api.requests]
        seqs = Counter(item["properties"]["seq"] for item in api.accepted_items("/track"))
    assert answer.status_code == 200
    assert paths[0] == "/identify"
    assert "/identify" not in paths[1:]
    assert set(seqs) == set(range(1000))
    assert sum(seqs.values()) == 1000
