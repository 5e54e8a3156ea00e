"""The journal: records on disk before ``span.end()`` returns, recovered when their process died.

Attacks included: SIGKILL in the middle of appends and of a replay, two replayers at once, a
full journal, unsafe directories, pid reuse, a thousand forks, a journal of another format
version. Every event carries a unique id and is counted at a real receiver.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, hang
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from support import ROOT, dead_pid, refusing_endpoint, spooled_calls, spooled_items

from opentelemetry_exporter_altertable import (
    AltertableLogExporter,
    AltertableLogRecordProcessor,
    AltertableSpanExporter,
    AltertableSpanProcessor,
    _backlog,
    _journal,
)
from opentelemetry_exporter_altertable._journal import Journal, recover_directory
from opentelemetry_exporter_altertable.receiver import LocalReceiver

pytestmark = pytest.mark.usefixtures("no_altertable_settings")

BIN = Path(sys.executable).parent
KEY = "pk_journal"

CHILD = '''
import os, signal, sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

how, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
scrub = os.environ.get("SCRUB") == "1"
exporter = AltertableSpanExporter(
    before_send=(lambda endpoint, payload: payload) if scrub else None
)
provider = TracerProvider()
provider.add_span_processor(AltertableSpanProcessor(exporter, schedule_delay_millis=60_000))
tracer = provider.get_tracer("journal-tests")


def end(uid):
    with tracer.start_as_current_span(
        "s", attributes={"analytics.event": uid, "analytics.properties.secret": "s3cret"}
    ):
        pass


if how == "loop":  # until killed, saying how far it got
    i = 0
    while True:
        end(f"{prefix}{i}")
        print(i, flush=True)
        i += 1
elif how == "hold":  # stay alive holding the journal
    end(f"{prefix}0")
    print("ready", flush=True)
    time.sleep(60)
elif how == "forks":
    end(f"{prefix}parent")
    children = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            end(f"{prefix}{i}")
            os._exit(0)
        children.append(pid)
        if len(children) >= 16:
            os.waitpid(children.pop(0), 0)
    for pid in children:
        os.waitpid(pid, 0)
    os._exit(0)
elif how == "exit":  # past every exit hook, as Celery and multiprocessing children leave
    for i in range(n):
        end(f"{prefix}{i}")
    os._exit(0)
else:
    for i in range(n):
        end(f"{prefix}{i}")
    os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as r:
        yield r


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def _env(endpoint: str, spool: Path, **extra: str) -> dict[str, str]:
    # The children import the package under test, not whichever copy is installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "OTEL_EXPORTER_ALTERTABLE_API_KEY": KEY,
        "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": endpoint,
        "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR": str(spool),
        "OTEL_EXPORTER_ALTERTABLE_TIMEOUT": "3",
        **extra,
    }


def _child(
    tmp_path: Path, env: dict[str, str], how: str, prefix: str, n: int = 0
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.run(
        [sys.executable, str(script), how, prefix, str(n)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def _replay(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "altertable-otel"), "replay"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def _counts(receiver: LocalReceiver, prefix: str) -> Counter[str]:
    rows = receiver.query("SELECT event FROM altertable.analytics.events")
    return Counter(r[0] for r in rows if str(r[0]).startswith(prefix))


def _journals(spool: Path) -> list[Path]:
    return sorted(spool.glob("journal-*")) if spool.exists() else []


# ------------------------------------------------------------------ in process


def test_tagged_records_are_journaled_before_end_returns_and_a_clean_shutdown_leaves_none(
    spool: Path, receiver: LocalReceiver
) -> None:
    exporter = AltertableSpanExporter(api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool)
    processor = AltertableSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(10):
        with tracer.start_as_current_span(f"plain-{i}"):
            pass
    assert _journals(spool) == []  # untagged records never touch it
    for i in range(5):
        with tracer.start_as_current_span("s", attributes={"analytics.event": f"clean-{i}"}):
            pass
        journal = _journals(spool)
        assert len(journal) == 1
        assert journal[0].read_bytes().count(b"\nS") == i + 1  # on disk as end() returned
    assert stat.S_IMODE(journal[0].stat().st_mode) == 0o600
    provider.shutdown()
    assert _journals(spool) == []
    assert _counts(receiver, "clean-") == Counter({f"clean-{i}": 1 for i in range(5)})


def test_retired_records_leave_the_journal(spool: Path, receiver: LocalReceiver) -> None:
    exporter = AltertableSpanExporter(api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool)
    processor = AltertableSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("s", attributes={"analytics.event": "retired-0"}):
        pass
    header = _journals(spool)[0].read_bytes().split(b"\n")[0]
    assert provider.force_flush(5000)
    (journal,) = _journals(spool)
    assert journal.read_bytes() == header + b"\n"  # back to the header alone
    provider.shutdown()


def test_force_flush_returns_by_its_deadline_and_what_is_undelivered_stays_journaled(
    spool: Path, tmp_path: Path, receiver: LocalReceiver
) -> None:
    """The SDK's batch processor ignores the timeout: this one returns by it."""
    with FaultServer() as server:
        server.add_rule(lambda request: hang(30))
        exporter = AltertableSpanExporter(
            api_key=KEY, endpoint=server.endpoint, spool_dir=spool, timeout=2
        )
        provider = TracerProvider()
        provider.add_span_processor(
            AltertableSpanProcessor(exporter, schedule_delay_millis=60_000)
        )
        tracer = provider.get_tracer("t")
        for i in range(3):
            with tracer.start_as_current_span("s", attributes={"analytics.event": f"dl-{i}"}):
                pass
        started = time.monotonic()
        assert provider.force_flush(500) is False
        assert time.monotonic() - started < 1.0
        # Journaled still: a process reaped now loses nothing (recovery sees its lock gone
        # only when it is dead, so read the file here).
        (journal,) = _journals(spool)
        assert journal.read_bytes().count(b"\nS") == 3
        provider.shutdown()  # the export ends at its own deadline and spools what it owes
    replay = _replay(_env(receiver.endpoint, spool))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert set(_counts(receiver, "dl-")) == {"dl-0", "dl-1", "dl-2"}


def test_a_full_journal_still_queues_and_warns(
    spool: Path, receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    exporter = AltertableSpanExporter(
        api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool, spool_max_bytes=600
    )
    provider = TracerProvider()
    provider.add_span_processor(AltertableSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("t")
    for i in range(20):
        with tracer.start_as_current_span("s", attributes={"analytics.event": f"full-{i}"}):
            pass
    assert sum(p.stat().st_size for p in _journals(spool)) <= 600
    assert any("could not be journaled" in r.getMessage() for r in caplog.records)
    provider.shutdown()
    assert len(_counts(receiver, "full-")) == 20


def test_an_unsafe_directory_is_refused_and_spans_still_flow(
    tmp_path: Path, receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    unsafe = tmp_path / "shared"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    if os.geteuid() == 0:  # as root (CI), the directory of another user as well
        os.chown(unsafe, 65534, 65534)
        os.chmod(unsafe, 0o700)
    exporter = AltertableSpanExporter(api_key=KEY, endpoint=receiver.endpoint, spool_dir=unsafe)
    provider = TracerProvider()
    provider.add_span_processor(AltertableSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span(
        "s", attributes={"analytics.event": "unsafe-0"}
    ):
        pass
    provider.shutdown()
    assert list(unsafe.iterdir()) == []
    assert any("spool disabled" in r.getMessage() for r in caplog.records)
    assert _counts(receiver, "unsafe-") == Counter({"unsafe-0": 1})


def test_log_records_are_journaled_and_recovered(
    tmp_path: Path, spool: Path, receiver: LocalReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BLRP_MAX_QUEUE_SIZE", "7")
    monkeypatch.setenv("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "5")
    exporter = AltertableLogExporter(api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool)
    processor = AltertableLogRecordProcessor(exporter, schedule_delay_millis=60_000)
    assert processor._batch_processor._queue.maxlen == 7  # the SDK's OTEL_BLRP_* settings
    provider = LoggerProvider()
    provider.add_log_record_processor(processor)
    logger = provider.get_logger("t")
    logger.emit(body="plain", severity_number=SeverityNumber.INFO, attributes={"k": 1})
    assert len(processor._batch_processor._queue) == 0  # untagged: neither queued
    assert _journals(spool) == []  # nor journaled
    for i in range(3):
        logger.emit(body={"n": i}, attributes={"analytics.event": f"log-{i}"})
    assert len(processor._batch_processor._queue) == 3
    (journal,) = _journals(spool)
    assert journal.read_bytes().count(b"\nL") == 3
    # As if the process had died: recovery by another exporter, once this journal is closed.
    exporter._core.backlog.recover(exporter._core.calls_from_records, before_send=False)
    assert _journals(spool) == [journal]  # ours, alive: never taken
    provider.shutdown()
    assert set(_counts(receiver, "log-")) == {"log-0", "log-1", "log-2"}


def test_importing_the_package_does_not_import_celery() -> None:
    run = subprocess.run(
        [sys.executable, "-c",
         "import sys, opentelemetry_exporter_altertable as m\n"
         "from opentelemetry.sdk.trace import TracerProvider\n"
         "m.AltertableSpanProcessor(m.AltertableSpanExporter(api_key='k'))\n"
         "assert 'celery' not in sys.modules, 'celery imported'"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr


_SCAN_ALIVE = """
import sys
from pathlib import Path
from opentelemetry_exporter_altertable._journal import recover_directory
scan = recover_directory(Path(sys.argv[1]), lambda records: True, may_send_scrubbed=False)
sys.exit(0 if (scan.alive, scan.recovered) == (1, 0) else 1)
"""


def test_append_calls_is_durable_and_recovered(spool: Path) -> None:
    """The API for callers that map before they keep (the bridge): append, learn, retire."""
    spool.mkdir(mode=0o700)
    journal = Journal(spool, max_bytes=1 << 20)
    with journal.lock:
        first = journal.append_calls({"track": [{"event": "c-0"}, {"event": "c-1"}]})
        assert first
        assert journal.append_calls({"identify": [{"distinct_id": "u"}]})
    journal.retire([first])  # the first batch delivered
    kept: list[Any] = []
    # Another process finds the journal alive (its owner holds the lock): it leaves it be.
    other = subprocess.run(
        [sys.executable, "-c", _SCAN_ALIVE, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.returncode == 0, other.stderr
    journal.close()  # outstanding: left for recovery
    scan = recover_directory(spool, lambda recs: kept.extend(recs) or True, may_send_scrubbed=False)
    assert scan.recovered == 1
    (rec,) = kept
    assert rec.calls == {"identify": [{"distinct_id": "u"}]}
    assert _journals(spool) == []


_RESOURCE_WRITE_FAILS = """
import os, resource, signal, sys
from types import SimpleNamespace
from opentelemetry_exporter_altertable._journal import Journal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
journal = Journal(sys.argv[1], max_bytes=1 << 20)
res = {"service.name": "svc", "service.version": "1.2.3"}


def log(uid):
    record = SimpleNamespace(
        event_name=uid, body=None, timestamp=1, observed_timestamp=1, trace_id=0, span_id=0
    )
    return journal.append_log(record, res, res, {"analytics.event": uid})


with journal.lock:
    assert journal.append_calls({"track": [{"event": "first"}]})  # the segment is open
    (path,) = [s.path for s in journal._segments]
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size, limits[1]))
    assert log("res-lost") == 0  # its resource line could not be written: not journaled
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert log("res-kept")
os._exit(0)
"""


def test_a_resource_line_that_could_not_be_written_is_written_with_the_next_entry(
    spool: Path,
) -> None:
    """A failed write of a resource's line must not leave later entries naming a resource
    the file does not hold (they would be recovered without service.name or $release)."""
    spool.mkdir(mode=0o700)
    child = subprocess.run(
        [sys.executable, "-c", _RESOURCE_WRITE_FAILS, str(spool)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert child.returncode == 0, child.stderr
    kept: list[Any] = []
    scan = recover_directory(spool, lambda recs: kept.extend(recs) or True, may_send_scrubbed=False)
    assert scan.recovered == 1
    (rec,) = kept
    assert rec.calls == {"track": [{"event": "first"}]}
    (record,) = [r for r in rec.records if r.name]
    assert record.name == "res-kept"
    assert record.resource == {"service.name": "svc", "service.version": "1.2.3"}


def test_without_posix_locks_recovery_never_signals_the_journals_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where there are no record locks (Windows) a journal is judged by its pid, and there
    ``os.kill(pid, 0)`` would end the process that has the pid, not probe it: the journal's
    check is the spool's, which never signals off POSIX and counts the pid as alive."""
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    monkeypatch.setattr(os, "name", "nt")  # only around the call: pathlib reads it too
    try:
        alive = _journal._pid_alive(dead_pid())
    finally:
        monkeypatch.undo()
    assert signalled == []
    assert alive is True


# ------------------------------------------------------------------ dead processes


def test_a_torn_last_line_is_skipped_and_the_rest_recovered(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    env = _env(receiver.endpoint, spool)
    assert _child(tmp_path, env, "kill", "torn-", 10).returncode == -signal.SIGKILL
    (journal,) = _journals(spool)
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    with open(journal, "ab") as fh:  # a process killed in the middle of an append
        fh.write(last[: len(last) // 2])
    # and a damaged line in the middle
    journal.write_bytes(journal.read_bytes().replace(b'"torn-3"', b'"torn-X"', 1))
    replay = _replay(env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    counts = _counts(receiver, "torn-")
    assert set(counts) == {f"torn-{i}" for i in range(10)} - {"torn-3"}
    assert max(counts.values()) == 1


def test_sigkill_in_the_middle_of_appends(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    env = _env(receiver.endpoint, spool)
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), "loop", "loop-", "0"],
        env=env, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    done = -1
    for line in proc.stdout:
        done = int(line)
        if done >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    replay = _replay(env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    counts = _counts(receiver, "loop-")
    got = {int(name.split("-")[1]) for name in counts}
    assert set(range(done + 1)) <= got  # every record whose end() returned
    assert got == set(range(len(got)))  # nothing else, no gap
    assert max(counts.values()) == 1


def test_two_replayers_at_once_deliver_each_record_once(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    env = _env(receiver.endpoint, spool)
    for k in range(4):
        assert _child(tmp_path, env, "kill", f"pair-{k}-", 40).returncode == -signal.SIGKILL
    # Each child's exporter recovered the journal before it into the spool: both kinds left.
    assert len(_journals(spool)) == 1
    assert len(list(spool.glob("*.json"))) == 3
    cmd = [str(BIN / "altertable-otel"), "replay"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    codes = [p.wait(60) for p in (first, second)]
    for p in (first, second):
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()
        p.stderr.close()
    assert 0 in codes
    counts = _counts(receiver, "pair-")
    assert len(counts) == 160
    assert max(counts.values()) == 1


def test_two_threads_recovering_at_once_take_each_dead_journal_once(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    """POSIX record locks belong to a process: two threads of one (a span and a log exporter
    looking for dead journals at the same moment) must not both take the same journal."""
    env = _env(receiver.endpoint, spool)
    assert _child(tmp_path, env, "exit", "threads-", 50).returncode == 0
    assert len(_journals(spool)) == 1
    kept: list[Any] = []
    start = threading.Barrier(2)

    def keep(recs: list[Any]) -> bool:
        kept.extend(recs)
        time.sleep(0.3)  # a slow spool: the other thread has every chance to look meanwhile
        return True

    def recover() -> None:
        start.wait(10)
        recover_directory(spool, keep, may_send_scrubbed=False)

    threads = [threading.Thread(target=recover) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = Counter(r.attrs["analytics.event"] for rec in kept for r in rec.records if r.name)
    assert set(ids) == {f"threads-{i}" for i in range(50)}
    assert max(ids.values()) == 1
    assert _journals(spool) == []


def test_sigkill_in_the_middle_of_a_replay(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    with FaultServer() as server:
        server.add_rule(lambda request: hang(30))
        env = _env(server.endpoint, spool, OTEL_EXPORTER_ALTERTABLE_TIMEOUT="20")
        assert _child(tmp_path, env, "kill", "midreplay-", 30).returncode == -signal.SIGKILL
        replay = subprocess.Popen(
            [str(BIN / "altertable-otel"), "replay"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not server.requests:
            time.sleep(0.05)
        assert server.requests, "the replay never sent"
        replay.send_signal(signal.SIGKILL)  # claimed, half sent
        replay.wait()
    again = _replay(_env(receiver.endpoint, spool))
    assert again.returncode == 0, again.stdout + again.stderr
    counts = _counts(receiver, "midreplay-")
    assert len(counts) == 30
    assert max(counts.values()) == 1


def test_a_live_process_journal_is_left_alone_and_pid_reuse_does_not_fool_recovery(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    env = _env(receiver.endpoint, spool)
    assert _child(tmp_path, env, "kill", "reused-", 5).returncode == -signal.SIGKILL
    (dead,) = _journals(spool)
    # The dead journal now names a live pid (this test's own): the pid was reused.
    token_part = dead.name.split("-", 2)[2]
    dead.rename(spool / f"journal-{os.getpid()}-{token_part}")
    (tmp_path / "child.py").write_text(CHILD)
    live = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), "hold", "alive-", "0"],
        env=env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "ready"
        replay = _replay(env)
        assert replay.returncode == 1  # the running process's journal remains
        assert "1 journal(s) of running processes" in replay.stdout
        assert set(_counts(receiver, "reused-")) == {f"reused-{i}" for i in range(5)}
        assert _counts(receiver, "alive-") == Counter()
    finally:
        live.kill()
        live.wait()
        assert live.stdout is not None
        live.stdout.close()
    assert _replay(env).returncode == 0
    assert _counts(receiver, "alive-") == Counter({"alive-0": 1})


def test_a_journal_of_another_format_version_is_left_alone_and_reported(
    spool: Path, receiver: LocalReceiver
) -> None:
    spool.mkdir(mode=0o700)
    newer = spool / "journal-12345-0123456789ab-0.v2"
    newer.write_bytes(b"ALTJOURNAL 2 {}\nwhatever a newer release writes\n")
    replay = _replay(_env(receiver.endpoint, spool))
    assert replay.returncode == 1
    assert "1 journal(s) of another version of the package" in replay.stdout
    assert newer.exists()


def test_a_journal_written_with_before_send_waits_for_an_exporter_with_one(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    env = _env(receiver.endpoint, spool, SCRUB="1")
    assert _child(tmp_path, env, "kill", "scrub-", 3).returncode == -signal.SIGKILL
    replay = _replay(env)
    assert replay.returncode == 1
    assert "before_send" in replay.stdout
    assert _counts(receiver, "scrub-") == Counter()

    def scrub(endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        payload["properties"].pop("secret", None)
        return payload

    exporter = AltertableSpanExporter(
        api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool, before_send=scrub
    )
    exporter.export([])  # delivers what it recovered
    exporter.shutdown()
    rows = receiver.query(
        "SELECT event, properties FROM altertable.analytics.events WHERE event LIKE 'scrub-%'"
    )
    assert sorted(r[0] for r in rows) == ["scrub-0", "scrub-1", "scrub-2"]
    assert all("s3cret" not in str(r[1]) for r in rows)


@pytest.mark.slow
def test_a_thousand_forks_each_journal_their_own_and_lose_nothing(
    tmp_path: Path, spool: Path, receiver: LocalReceiver
) -> None:
    env = _env(receiver.endpoint, spool)
    run = _child(tmp_path, env, "forks", "fork-", 1000)
    assert run.returncode == 0, run.stderr
    assert len(_journals(spool)) == 1001  # one per process
    replay = _replay(env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    counts = _counts(receiver, "fork-")
    assert len(counts) == 1001
    assert max(counts.values()) == 1
    assert _journals(spool) == []


def test_held_back_drop_counts_are_said_when_the_interval_ends_without_an_exit_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process SIGKILLed after its interval has still said every drop: no shutdown needed."""
    from opentelemetry_exporter_altertable._stats import DropReporter

    caplog.set_level(logging.WARNING)
    drops = DropReporter(interval=0.3)
    drops.report({"invalid-event": 1})
    drops.report({"invalid-event": 2})  # within the interval: held back
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(said) == 1 and "dropped 1 call(s)" in said[0]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(said) < 2:
        time.sleep(0.05)
        said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(said) == 2 and "dropped 2 call(s)" in said[1]


def test_drop_counts_held_for_the_exit_summary_stay_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry_exporter_altertable._stats import DropReporter

    caplog.set_level(logging.WARNING)
    drops = DropReporter(interval=0.2)
    drops.report({"x": 1})
    drops.report({"x": 1})
    drops.hold()  # the interpreter is exiting: one warning, at shutdown
    time.sleep(0.4)
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
    drops.flush()
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 2


def test_records_the_full_queue_dropped_leave_the_journal_with_the_rest(
    spool: Path, receiver: LocalReceiver
) -> None:
    """The journal mirrors the queue, drops included: a flush leaves nothing outstanding."""
    exporter = AltertableSpanExporter(api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool)
    processor = AltertableSpanProcessor(
        exporter, max_queue_size=4, max_export_batch_size=2, schedule_delay_millis=60_000
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(10):
        with tracer.start_as_current_span("s", attributes={"analytics.event": f"qfull-{i}"}):
            pass
    journal = processor._keeper.journal if processor._keeper else None
    assert journal is not None
    # The worker may export batches meanwhile: how many the queue dropped varies, not the sum
    # (counted exactly, when the queue discards, not guessed from its length beforehand).
    dropped = exporter.stats()["queue_dropped"]
    assert isinstance(dropped, int) and dropped >= 4
    assert provider.force_flush(5000)
    assert journal.outstanding == 0
    provider.shutdown()
    assert _journals(spool) == []
    counts = _counts(receiver, "qfull-")
    assert len(counts) == 10 - dropped
    assert max(counts.values()) == 1
    with tracer.start_as_current_span("s", attributes={"analytics.event": "after-shutdown"}):
        pass
    assert _journals(spool) == []  # refused by the SDK, so not journaled either


def test_segments_rotate_and_retired_entries_leave_disk_and_recovery(
    spool: Path, tmp_path: Path, receiver: LocalReceiver
) -> None:
    """Past a segment's size a new file starts; a fully retired old one is deleted; what a
    copy of the files (as a dead process would leave them) recovers is exactly the rest."""
    exporter = AltertableSpanExporter(
        api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool, spool_max_bytes=64 * 1024
    )
    processor = AltertableSpanProcessor(
        exporter, max_queue_size=4096, max_export_batch_size=4096, schedule_delay_millis=60_000
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")

    def end(first: int, last: int) -> None:
        for i in range(first, last):
            with tracer.start_as_current_span("s", attributes={"analytics.event": f"seg-{i}"}):
                pass

    end(0, 300)
    assert len(_journals(spool)) >= 2  # 16 KiB segments: rotated
    assert provider.force_flush(5000)
    (only,) = _journals(spool)  # the old segments went; the current one is back to its header
    assert only.read_bytes().count(b"\n") == 1
    end(300, 320)
    journal = processor._keeper.journal
    assert journal is not None
    # Retire some of them by hand, as exports finishing out of order would.
    retired = sorted(journal._outstanding)[:5]
    journal.retire(retired)
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    for path in _journals(spool):
        parts = path.name.split("-")
        parts[2] = "f" * 12  # another token: not this process's journal
        (copy / "-".join(parts)).write_bytes(path.read_bytes())
    kept: list[Any] = []
    scan = recover_directory(copy, lambda recs: kept.extend(recs) or True, may_send_scrubbed=False)
    assert scan.recovered == 1
    names = sorted(r.attrs["analytics.event"] for r in kept[0].records if r.name)
    assert names == sorted(f"seg-{i}" for i in range(305, 320))
    provider.shutdown()
    assert _journals(spool) == []
    counts = _counts(receiver, "seg-")
    assert len(counts) == 320 and max(counts.values()) == 1


class _RecordOnly(Sampler):
    """Records every span but samples none (``RECORD_ONLY``): processors see them end."""

    def should_sample(  # noqa: PLR0917 (the SDK's signature)
        self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
        attributes: Any = None, links: Any = None, trace_state: Any = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY, attributes)  # the span keeps its attributes

    def get_description(self) -> str:
        return "RecordOnly"


def test_unsampled_spans_are_neither_journaled_nor_delivered(
    spool: Path, receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A recorded but unsampled span is ignored as ``BatchSpanProcessor`` ignores it: no
    journal entry, so no salvage at shutdown and no delivery later."""
    caplog.set_level(logging.WARNING)
    exporter = AltertableSpanExporter(api_key=KEY, endpoint=receiver.endpoint, spool_dir=spool)
    processor = AltertableSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider = TracerProvider(sampler=_RecordOnly())
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(3):
        with tracer.start_as_current_span("s", attributes={"analytics.event": f"unsampled-{i}"}):
            pass
    journal = processor._keeper.journal
    assert journal is not None and journal.outstanding == 0
    provider.shutdown()
    assert _journals(spool) == []
    assert spooled_items(spool) == 0
    assert not any("were not exported" in r.getMessage() for r in caplog.records)
    replay = _replay(_env(receiver.endpoint, spool))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert _counts(receiver, "unsampled-") == Counter()


@pytest.mark.parametrize("journaled", [True, False], ids=["journal", "no-journal"])
def test_log_records_the_full_queue_dropped_are_counted(spool: Path, journaled: bool) -> None:
    """The log processor counts its queue's drops into ``queue_dropped`` as the span processor
    does (with a journal or without): delivered + dropped == emitted, none lost unsaid."""
    with FaultServer() as server:
        server.script("/track", [hang(1.0)])  # the first export is held while the queue fills
        exporter = AltertableLogExporter(
            api_key=KEY, endpoint=server.endpoint, spool_dir=spool if journaled else None
        )
        processor = AltertableLogRecordProcessor(
            exporter, max_queue_size=2, max_export_batch_size=1, schedule_delay_millis=60_000
        )
        provider = LoggerProvider()
        provider.add_log_record_processor(processor)
        logger = provider.get_logger("t")
        logger.emit(body="first", attributes={"analytics.event": "logdrop-0"})
        assert server.wait_for_requests(1)  # the worker is in the held export now
        for i in range(1, 11):
            logger.emit(body="burst", attributes={"analytics.event": f"logdrop-{i}"})
        assert provider.force_flush(10_000)
        journal = processor._keeper.journal
        assert (journal is not None) == journaled
        assert journal is None or journal.outstanding == 0
        provider.shutdown()
        delivered = Counter(item["event"] for item in server.accepted_items("/track"))
    dropped = exporter.stats()["queue_dropped"]
    assert dropped == 8  # 10 records into a queue of 2 while the export is held
    assert max(delivered.values()) == 1
    assert len(delivered) + dropped == 11
    assert _journals(spool) == []


@pytest.mark.parametrize("refusal", ["no-api-key", "shutdown"])
def test_records_a_refused_export_did_not_keep_stay_journaled_and_are_spooled_at_shutdown(
    spool: Path, receiver: LocalReceiver, refusal: str
) -> None:
    """An export the exporter refused (no key; the exporter shut down first) neither sent,
    spooled nor counted its records: they stay journaled, the processor's shutdown spools
    them, and the next exporter with a key (here ``altertable-otel replay``) delivers them."""
    key = None if refusal == "no-api-key" else KEY
    exporter = AltertableSpanExporter(api_key=key, endpoint=receiver.endpoint, spool_dir=spool)
    processor = AltertableSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(3):
        with tracer.start_as_current_span("s", attributes={"analytics.event": f"refused-{i}"}):
            pass
    if refusal == "shutdown":
        exporter.shutdown()
    journal = processor._keeper.journal
    assert journal is not None
    provider.force_flush(5000)  # the export runs, and is refused
    assert journal.outstanding == 3
    provider.shutdown()
    assert _journals(spool) == []
    assert spooled_items(spool) == 3
    assert _counts(receiver, "refused-") == Counter()
    replay = _replay(_env(receiver.endpoint, spool))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert _counts(receiver, "refused-") == Counter({f"refused-{i}": 1 for i in range(3)})


PAGE_CHILD = """
import os, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

provider = TracerProvider()
provider.add_span_processor(
    AltertableSpanProcessor(AltertableSpanExporter(), schedule_delay_millis=60_000)
)
page = {
    "http.request.method": "GET",
    "http.response.status_code": 200,
    "http.response.header.content-type": ("text/html; charset=utf-8",),
    "url.scheme": "https",
    "server.address": "shop.example",
    "url.path": "/pricing",
}
tracer = provider.get_tracer("t")
with tracer.start_as_current_span("GET /pricing", kind=SpanKind.SERVER, attributes=page) as span:
    span.add_event("seen", {"analytics.event": "Pricing Seen", "user.id": "u1"})
with tracer.start_as_current_span("GET /plain", kind=SpanKind.SERVER, attributes=page):
    pass
if sys.argv[1] == "kill":
    os._exit(0)  # before any export: only the journal holds the spans
provider.shutdown()
"""


def test_a_recovered_page_span_with_tagged_events_sends_what_the_live_export_sends(
    tmp_path: Path,
) -> None:
    """The journal decides whether a span is a record (a page view) as the live mapping does:
    a server HTML span with tagged events is their context, never a ``$pageview`` too."""
    script = tmp_path / "page.py"
    script.write_text(PAGE_CHILD)
    events: dict[str, Counter[str]] = {}
    for how in ("live", "kill"):
        spool = tmp_path / f"spool-{how}"
        with LocalReceiver() as receiver:
            env = _env(receiver.endpoint, spool, OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS="true")
            run = subprocess.run(
                [sys.executable, str(script), how],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )
            assert run.returncode == 0, run.stderr
            if how == "kill":
                assert _counts(receiver, "") == Counter()
                assert _journals(spool)
                replay = _replay(env)
                assert replay.returncode == 0, replay.stdout + replay.stderr
            events[how] = _counts(receiver, "")
    assert events["live"] == Counter({"Pricing Seen": 1, "$pageview": 1})  # the plain page
    assert events["kill"] == events["live"]


# ------------------------------------------------------------------ recovery within a deadline

#: A process that leaves ``journals`` dead journals of ``per`` tagged log records each.
_MANY_JOURNALS = """
import os, sys
from types import SimpleNamespace
from opentelemetry_exporter_altertable._journal import Journal

directory, prefix, journals, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
res = {"service.name": "svc"}
os.makedirs(directory, mode=0o700, exist_ok=True)
for j in range(journals):
    journal = Journal(directory, max_bytes=1 << 24)
    with journal.lock:
        for i in range(per):
            uid = f"{prefix}{j}-{i}"
            record = SimpleNamespace(
                event_name=uid, body=None, timestamp=1, observed_timestamp=1, trace_id=0, span_id=0
            )
            assert journal.append_log(record, res, res, {"analytics.event": uid})
    journal.close()  # outstanding entries: the files stay, as a dead process leaves them
os._exit(0)
"""
JOURNALS, PER_JOURNAL = 1000, 40  # about 1.5 s of recovery, far past the export's deadline
EXPORT_TIMEOUT, MARGIN = 0.25, 0.5


def _leave_journals(spool: Path, prefix: str) -> None:
    subprocess.run(
        [sys.executable, "-c", _MANY_JOURNALS, str(spool), prefix, str(JOURNALS), str(PER_JOURNAL)],
        check=True, timeout=120,
    )


def _each_once(events: Counter[str], prefix: str) -> None:
    assert set(events) == {f"{prefix}{j}-{i}" for j in range(JOURNALS) for i in range(PER_JOURNAL)}
    assert max(events.values()) == 1


def test_recovery_in_an_export_keeps_the_exports_deadline(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many dead journals: an export takes what it has time for, the next ones the rest,
    each record once."""
    with refusing_endpoint() as endpoint:
        exporter = AltertableSpanExporter(
            api_key=KEY, endpoint=endpoint, spool_dir=spool, timeout=EXPORT_TIMEOUT
        )
        try:
            _leave_journals(spool, "late-")
            monkeypatch.setattr(_backlog, "RECOVER_INTERVAL", 0.0)  # this export looks
            started = time.monotonic()
            exporter.export([])
            assert time.monotonic() - started < EXPORT_TIMEOUT + MARGIN
            assert _journals(spool)  # the rest waits for the next exports
            for _ in range(200):
                if not _journals(spool):
                    break
                started = time.monotonic()
                exporter.export([])
                assert time.monotonic() - started < EXPORT_TIMEOUT + MARGIN
            assert _journals(spool) == []
        finally:
            exporter.shutdown()
    events = Counter(call["event"] for call in spooled_calls(spool)["track"])
    _each_once(events, "late-")


_FORKED_EXPORT = """
import os, subprocess, sys, time
from opentelemetry_exporter_altertable import AltertableSpanExporter

spool, endpoint, timeout, maker = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
exporter = AltertableSpanExporter(api_key="k", endpoint=endpoint, spool_dir=spool, timeout=timeout)
subprocess.run([sys.executable, "-c", maker, spool, *sys.argv[5:]], check=True)
pid = os.fork()
if pid == 0:  # a pool child's first export looks for dead journals, within its deadline
    started = time.monotonic()
    exporter.export([])
    print(time.monotonic() - started, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_the_first_export_after_a_fork_recovers_within_its_deadline(spool: Path) -> None:
    with refusing_endpoint() as endpoint:
        run = subprocess.run(
            [
                sys.executable, "-c", _FORKED_EXPORT, str(spool), endpoint, str(EXPORT_TIMEOUT),
                _MANY_JOURNALS, "forked-", str(JOURNALS), str(PER_JOURNAL),
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout) < EXPORT_TIMEOUT + MARGIN
    assert _journals(spool)  # the rest waits for a later export (here: the look below)
    kept: list[Any] = []
    scan = recover_directory(spool, lambda recs: kept.extend(recs) or True, may_send_scrubbed=False)
    assert scan.remaining == 0
    events = Counter(call["event"] for call in spooled_calls(spool).get("track", []))
    events.update(r.name for rec in kept for r in rec.records if r.name)
    _each_once(events, "forked-")
