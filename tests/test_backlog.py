"""The backlog: what an exporter still owes, kept in the spool, replayed, or counted lost.

Each test drives one :class:`Backlog` with a real :class:`Spool` on disk and a real
:class:`Transport` talking to a :class:`FaultServer` on loopback, then checks exactly what
the server received, what is left on disk (files, items, reasons), the counters, and the one
drop warning logged.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, bad_request, hang, ok, retry_later, unauthorized
from opentelemetry.sdk.trace.export import SpanExportResult
from support import FAKE_API_KEY, Spans, fast_retry, refusing_endpoint, seqs, spooled_items

from opentelemetry_exporter_altertable import AltertableSpanExporter
from opentelemetry_exporter_altertable._backlog import (
    REPLAY_FILES_PER_EXPORT,
    Backlog,
    parcels,
    recovered_calls,
    spool_reason,
)
from opentelemetry_exporter_altertable._config import ExporterConfig
from opentelemetry_exporter_altertable._journal import Recovered
from opentelemetry_exporter_altertable._mapping import Calls, Record
from opentelemetry_exporter_altertable._spool import Spool
from opentelemetry_exporter_altertable._stats import DropReporter, Stats
from opentelemetry_exporter_altertable._transport import DeliveryReport, Transport

SPOOL_HINT = "set OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR to keep undelivered calls on disk"


def item(seq: int) -> dict[str, Any]:
    return {"event": "Order Placed", "distinct_id": f"user-{seq}", "properties": {"seq": seq}}


def items(start: int, count: int) -> list[dict[str, Any]]:
    return [item(seq) for seq in range(start, start + count)]


class Rig:
    """One backlog with its stats, drop reporter and a transport aimed at ``server``."""

    def __init__(self, config: ExporterConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.drops = DropReporter()
        self.transport = Transport(config, stats=self.stats)
        self.backlog = Backlog(config, self.stats, self.drops)

    def replay(self, seconds: float = 10.0) -> None:
        self.backlog.replay(self.transport, time.monotonic() + seconds)

    def snapshot(self) -> dict[str, object]:
        return self.backlog.stats(self.stats)

    def close(self) -> None:
        self.transport.close()
        self.transport.release()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    built: list[Rig] = []
    yield built
    for rig in built:
        rig.close()


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="opentelemetry_exporter_altertable")
    yield caplog


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


BACKLOG_LOG = "opentelemetry_exporter_altertable._backlog"
DROPS_LOG = "opentelemetry_exporter_altertable._stats"


def make_rig(rigs: list[Rig], server: FaultServer, spool: Path | None, **settings: Any) -> Rig:
    chosen: dict[str, Any] = {"timeout": 2.0, "retry": fast_retry(), **settings}
    config = ExporterConfig(
        api_key=FAKE_API_KEY,
        endpoint=server.endpoint,
        spool_dir=None if spool is None else str(spool),
        **chosen,
    )
    rig = Rig(config)
    rigs.append(rig)
    return rig


def on_disk(directory: Path) -> list[tuple[str, list[int]]]:
    """Every parcel in ``directory``, oldest first: its reason and its items' ``seq``."""
    spool = Spool(directory)
    found: list[tuple[str, list[int]]] = []
    claims = []
    while (claim := spool.claim()) is not None:
        claims.append(claim)
        found.append((claim.reason, seqs(claim.calls.get("track", []))))
    for claim in claims:
        claim.release()
    return found


def spooled(directory: Path, *parcels: tuple[list[dict[str, Any]], str]) -> None:
    spool = Spool(directory)
    for calls, reason in parcels:
        assert spool.put({"track": calls}, reason=reason) == len(calls)


# ---------------------------------------------------------------------------- opening


def test_the_spool_is_opened_with_the_configured_bound_and_claim_age(
    server: FaultServer, rigs: list[Rig], tmp_path: Path
) -> None:
    short = make_rig(rigs, server, tmp_path / "a", timeout=10.0, spool_max_bytes=4096)
    assert short.backlog.spool is not None
    assert short.backlog.spool.directory == tmp_path / "a"
    assert short.backlog.spool.max_bytes == 4096
    assert short.backlog.spool.stale_claim_age == 600.0  # at least ten minutes
    long = make_rig(rigs, server, tmp_path / "b", timeout=200.0)
    assert long.backlog.spool is not None
    assert long.backlog.spool.stale_claim_age == 800.0  # four export timeouts


def test_no_spool_dir_no_spool(server: FaultServer, rigs: list[Rig]) -> None:
    rig = make_rig(rigs, server, None)
    assert rig.backlog.spool is None
    rig.backlog.after_fork()
    assert rig.backlog.spool is None
    rig.replay()
    assert server.requests == []
    assert "spool_files" not in rig.snapshot()


def test_an_unsafe_spool_directory_is_refused_with_one_error(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    rig = make_rig(rigs, server, directory)
    assert rig.backlog.spool is None
    assert messages(warnings, BACKLOG_LOG) == [
        (
            logging.ERROR,
            f"Altertable spool disabled: spool directory {directory} is writable by group or "
            f"others (mode 0777): refusing to use it; run `chmod 700 {directory}` or set "
            f"spool_dir to a private directory",
        )
    ]


def test_after_fork_opens_a_fresh_spool_on_the_same_directory(
    server: FaultServer, rigs: list[Rig], tmp_path: Path
) -> None:
    spooled(tmp_path, (items(0, 2), "retryable"))
    rig = make_rig(rigs, server, tmp_path)
    before = rig.backlog.spool
    rig.backlog.after_fork()
    after = rig.backlog.spool
    assert after is not None
    assert after is not before
    assert after.directory == tmp_path
    rig.replay()
    assert seqs(server.accepted_items("/track")) == [0, 1]


# ---------------------------------------------------------------------------- replay


def test_replay_sends_eight_files_per_export_oldest_first(
    server: FaultServer, rigs: list[Rig], tmp_path: Path
) -> None:
    spooled(tmp_path, *[([item(seq)], "retryable") for seq in range(10)])
    rig = make_rig(rigs, server, tmp_path)

    rig.replay()
    assert REPLAY_FILES_PER_EXPORT == 8
    assert seqs(server.accepted_items("/track")) == list(range(8))
    assert len(server.requests) == 8
    assert rig.snapshot()["calls_replayed"] == 8
    assert on_disk(tmp_path) == [("retryable", [8]), ("retryable", [9])]

    rig.replay()
    assert seqs(server.accepted_items("/track")) == list(range(10))
    assert rig.snapshot()["calls_replayed"] == 10
    assert on_disk(tmp_path) == []
    rig.replay()
    assert len(server.requests) == 10


def test_nothing_is_replayed_past_the_deadline_when_closed_or_at_exit(
    server: FaultServer, rigs: list[Rig], tmp_path: Path
) -> None:
    spooled(tmp_path, (items(0, 3), "retryable"))
    late = make_rig(rigs, server, tmp_path)
    late.backlog.replay(late.transport, time.monotonic() - 1.0)
    closed = make_rig(rigs, server, tmp_path)
    closed.transport.close()
    closed.replay()
    exiting = make_rig(rigs, server, tmp_path)
    exiting.transport.begin_exit(time.monotonic() + 30.0)
    exiting.replay()

    assert server.requests == []
    assert on_disk(tmp_path) == [("retryable", [0, 1, 2])]
    for rig in (late, closed, exiting):
        assert rig.snapshot()["calls_replayed"] == 0
    # The same backlog replays the file once it has time and a transport that is not closing.
    late.replay()
    assert seqs(server.accepted_items("/track")) == [0, 1, 2]
    assert on_disk(tmp_path) == []


def test_a_file_the_api_still_refuses_is_kept_whole_in_its_place(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    spooled(tmp_path, (items(0, 3), "retryable"), (items(3, 2), "retryable"))
    names = sorted(os.listdir(tmp_path))
    server.set_default(retry_later(503))
    rig = make_rig(rigs, server, tmp_path)

    rig.replay()

    assert len(server.requests) == 4  # the oldest file, sent once and retried 3 times: no more
    assert [seqs(request.items) for request in server.requests] == [[0, 1, 2]] * 4
    assert sorted(os.listdir(tmp_path)) == names
    assert rig.snapshot()["calls_replayed"] == 0
    assert messages(warnings, DROPS_LOG) == []


@pytest.mark.parametrize(
    "case",
    [("retryable", unauthorized(), "auth"), ("auth", retry_later(503), "retryable")],
    ids=["now-auth", "now-retryable"],
)
def test_a_partly_delivered_file_is_re_spooled_with_only_what_is_owed(
    server: FaultServer,
    rigs: list[Rig],
    tmp_path: Path,
    warnings: pytest.LogCaptureFixture,
    case: tuple[str, Any, str],
) -> None:
    was, then, now = case
    spooled(tmp_path, (items(0, 10), was))
    server.script("/track", [ok()])  # the first chunk of 4 goes through, then the API fails
    server.set_default(then)
    rig = make_rig(rigs, server, tmp_path, max_batch_size=4)

    rig.replay()

    assert seqs(server.accepted_items("/track")) == [0, 1, 2, 3]
    # The reason of the new file is why the rest was not delivered this time.
    assert on_disk(tmp_path) == [(now, [4, 5, 6, 7, 8, 9])]
    stats = rig.snapshot()
    assert stats["calls_replayed"] == 4
    assert stats["calls_dropped"] == 0
    assert messages(warnings, DROPS_LOG) == []


def test_a_refused_call_of_a_replayed_file_is_dropped_and_said(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    spooled(tmp_path, (items(0, 2), "retryable"))
    server.script("/track", [bad_request("invalid-event")])  # the first call is refused
    server.set_default(retry_later(503))  # the second cannot be delivered now
    rig = make_rig(rigs, server, tmp_path, max_batch_size=1)

    rig.replay()

    assert on_disk(tmp_path) == [("retryable", [1])]
    stats = rig.snapshot()
    assert stats["calls_replayed"] == 0
    assert stats["dropped_by_reason"] == {"invalid-event": 1}
    assert messages(warnings, DROPS_LOG) == [
        (
            logging.WARNING,
            "Altertable exporter dropped 1 call(s) (1 invalid-event); last: track "
            "'Order Placed' refused with HTTP 400 invalid-event",
        )
    ]


def test_a_re_spool_that_fails_keeps_the_original_whole_and_says_so(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    spooled(tmp_path, (items(0, 10), "retryable"))
    names = sorted(os.listdir(tmp_path))
    server.script("/track", [ok()])  # 3 delivered, then an outage: 7 owed
    server.set_default(retry_later(503))
    # The spool is now too small for what is still owed: re-spooling it fails.
    rig = make_rig(rigs, server, tmp_path, max_batch_size=3, spool_max_bytes=200)

    rig.replay()

    assert seqs(server.accepted_items("/track")) == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == names
    assert on_disk(tmp_path) == [("retryable", list(range(10)))]
    assert rig.snapshot()["calls_replayed"] == 3
    assert messages(warnings, BACKLOG_LOG) == [
        (
            logging.WARNING,
            "could not re-spool the 7 call(s) still owed from a spool file; it is kept whole, "
            "so 3 delivered call(s) will be sent again",
        )
    ]


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_ctrl_c_during_replay_keeps_the_file_and_re_raises(
    server: FaultServer, rigs: list[Rig], tmp_path: Path
) -> None:
    spooled(tmp_path, (items(0, 3), "retryable"), (items(3, 1), "retryable"))
    server.set_default(hang())
    rig = make_rig(rigs, server, tmp_path)
    main = threading.get_ident()

    def interrupt() -> None:
        if server.wait_for_requests(1, timeout=10):  # the replay is blocked on the answer
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt)
    # Python's own Ctrl-C, whatever handler the process running the tests installed.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            rig.replay(seconds=20.0)
    finally:
        interrupter.join()
        signal.signal(signal.SIGINT, handler)
    assert len(server.requests) == 1
    assert on_disk(tmp_path) == [("retryable", [0, 1, 2]), ("retryable", [3])]


def test_a_spool_directory_that_turns_unsafe_disables_the_spool(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    rig = make_rig(rigs, server, directory)  # not there yet: created on first use
    directory.mkdir()
    directory.chmod(0o777)  # created by someone else, writable by all

    rig.replay()

    assert rig.backlog.spool is None
    assert server.requests == []
    assert messages(warnings, BACKLOG_LOG) == [
        (
            logging.ERROR,
            f"Altertable spool disabled: spool directory {directory} is writable by group or "
            f"others (mode 0777): refusing to use it; run `chmod 700 {directory}` or set "
            f"spool_dir to a private directory",
        )
    ]
    report = DeliveryReport()
    report.owe("track", items(0, 2), "retryable")
    assert rig.backlog.keep(report) == 0
    assert rig.snapshot()["dropped_by_reason"] == {"undelivered-retryable": 2}


def test_a_file_another_process_adds_later_waits_for_this_backlogs_next_put(
    server: FaultServer, rigs: list[Rig], tmp_path: Path
) -> None:
    """An empty spool costs no directory listing per export: once replay found it empty, a
    file another process adds is picked up at this backlog's next own put (or next start)."""
    spooled(tmp_path, ([item(0)], "retryable"))
    rig = make_rig(rigs, server, tmp_path)
    rig.replay()
    assert seqs(server.accepted_items("/track")) == [0]

    spooled(tmp_path, ([item(1)], "retryable"))  # another process's parcel
    rig.replay()
    assert len(server.requests) == 1
    refused = DeliveryReport()
    refused.owe("track", [{"bad": object()}], "retryable")  # the spool cannot take it
    assert rig.backlog.keep(refused) == 0
    rig.replay()
    assert len(server.requests) == 1

    owed = DeliveryReport()
    owed.owe("track", [item(2)], "retryable")  # one call: the spool may hold files again
    assert rig.backlog.keep(owed) == 1
    rig.replay()
    assert seqs(server.accepted_items("/track")) == [0, 1, 2]
    assert on_disk(tmp_path) == []


# ---------------------------------------------------------------------------- keep


def test_keep_with_nothing_owed_keeps_nothing_and_says_nothing(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(rigs, server, tmp_path)
    assert rig.backlog.keep(DeliveryReport(accepted={"track": 5})) == 0
    assert on_disk(tmp_path) == []
    stats = rig.snapshot()
    assert (stats["calls_spooled"], stats["calls_dropped"]) == (0, 0)
    assert warnings.records == []


@pytest.mark.parametrize(
    "case",
    [("retryable", "retryable"), ("auth", "auth"), ("tls", "auth"), ("endpoint-not-found", "auth")],
    ids=lambda case: f"{case[0]}-as-{case[1]}",
)
def test_keep_spools_what_is_owed_and_only_logs_the_refused(
    server: FaultServer,
    rigs: list[Rig],
    tmp_path: Path,
    warnings: pytest.LogCaptureFixture,
    case: tuple[str, str],
) -> None:
    reason, kept_as = case
    rig = make_rig(rigs, server, tmp_path)
    report = DeliveryReport(detail="last: track 'Order Placed' refused with HTTP 400 bad")
    report.rejected["invalid-event"] += 1
    report.owe("track", items(0, 3), reason)

    assert rig.backlog.keep(report) == 3

    assert on_disk(tmp_path) == [(kept_as, [0, 1, 2])]
    stats = rig.snapshot()
    assert stats["calls_spooled"] == 3
    assert stats["calls_dropped"] == 0  # the refused call was counted by the transport
    assert stats["spool_files"] == 1
    assert messages(warnings, DROPS_LOG) == [
        (
            logging.WARNING,
            "Altertable exporter dropped 1 call(s) (1 invalid-event); "
            "last: track 'Order Placed' refused with HTTP 400 bad",
        )
    ]


def test_calls_the_spool_refuses_are_dropped_as_spool_refused(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(rigs, server, tmp_path, spool_max_bytes=100)
    report = DeliveryReport(detail="last: track 'Order Placed' refused with HTTP 400 bad")
    report.owe("track", items(0, 3), "retryable")

    assert rig.backlog.keep(report) == 0

    assert on_disk(tmp_path) == []
    stats = rig.snapshot()
    assert stats["calls_spooled"] == 0
    assert stats["calls_dropped"] == 3
    assert stats["dropped_by_reason"] == {"spool-refused": 3}
    assert messages(warnings, DROPS_LOG) == [
        (
            logging.WARNING,
            "Altertable exporter dropped 3 call(s) (3 spool-refused); "
            "last: track 'Order Placed' refused with HTTP 400 bad",
        )
    ]


@pytest.mark.parametrize("reason", ["retryable", "auth", "environment-not-found"])
def test_without_a_spool_owed_calls_are_dropped_with_the_fix_named(
    server: FaultServer, rigs: list[Rig], warnings: pytest.LogCaptureFixture, reason: str
) -> None:
    rig = make_rig(rigs, server, None)
    report = DeliveryReport(detail="last: track 'Order Placed' refused with HTTP 400 bad")
    report.rejected["invalid-event"] += 2
    report.owe("track", items(0, 3), reason)

    assert rig.backlog.keep(report) == 0

    stats = rig.snapshot()
    assert stats["calls_spooled"] == 0
    assert stats["calls_dropped"] == 3  # the two refused were counted by the transport
    assert stats["dropped_by_reason"] == {f"undelivered-{reason}": 3}
    assert messages(warnings, DROPS_LOG) == [
        (
            logging.WARNING,
            f"Altertable exporter dropped 5 call(s) (2 invalid-event, 3 undelivered-{reason}); "
            f"{SPOOL_HINT}",
        )
    ]


def test_a_spool_directory_that_turns_unsafe_at_keep_counts_the_calls_undelivered(
    server: FaultServer, rigs: list[Rig], tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    rig = make_rig(rigs, server, directory)
    directory.mkdir()
    directory.chmod(0o777)
    report = DeliveryReport()
    report.owe("track", items(0, 4), "auth")

    assert rig.backlog.keep(report) == 0

    assert rig.backlog.spool is None
    assert os.listdir(directory) == []
    stats = rig.snapshot()
    assert (stats["calls_spooled"], stats["dropped_by_reason"]) == (0, {"undelivered-auth": 4})
    assert messages(warnings, BACKLOG_LOG) == [
        (
            logging.ERROR,
            f"Altertable spool disabled: spool directory {directory} is writable by group or "
            f"others (mode 0777): refusing to use it; run `chmod 700 {directory}` or set "
            f"spool_dir to a private directory",
        )
    ]
    assert messages(warnings, DROPS_LOG) == [
        (
            logging.WARNING,
            f"Altertable exporter dropped 4 call(s) (4 undelivered-auth); {SPOOL_HINT}",
        )
    ]


# ---------------------------------------------------------------------------- stats


def test_stats_add_the_spools_losses_and_what_it_holds(
    server: FaultServer, rigs: list[Rig], tmp_path: Path
) -> None:
    rig = make_rig(rigs, server, tmp_path, spool_max_bytes=600)
    first = DeliveryReport()
    first.owe("track", items(0, 2), "retryable")
    second = DeliveryReport()
    second.owe("track", items(2, 3), "retryable")
    rig.stats.drop("invalid-event", 1)

    assert rig.backlog.keep(first) == 2
    assert rig.backlog.keep(second) == 3  # the limit evicts the first file

    assert on_disk(tmp_path) == [("retryable", [2, 3, 4])]
    (name,) = os.listdir(tmp_path)
    stats = rig.snapshot()
    assert stats["calls_spooled"] == 5
    assert stats["calls_dropped"] == 3
    assert stats["dropped_by_reason"] == {"invalid-event": 1, "spool-full": 2}
    assert stats["spool_files"] == 1
    assert stats["spool_bytes"] == (tmp_path / name).stat().st_size


@pytest.mark.parametrize("spool", [True, False], ids=["spool-refused", "undelivered"])
def test_a_refusal_named_like_a_drop_reason_adds_up_with_it(
    server: FaultServer,
    rigs: list[Rig],
    tmp_path: Path,
    warnings: pytest.LogCaptureFixture,
    spool: bool,
) -> None:
    """The API's error codes are free text: one may read like a reason this module counts."""
    name = "spool-refused" if spool else "undelivered-retryable"
    rig = make_rig(rigs, server, tmp_path if spool else None, spool_max_bytes=100)
    report = DeliveryReport()
    report.rejected[name] += 2
    report.owe("track", items(0, 3), "retryable")

    assert rig.backlog.keep(report) == 0

    logged = messages(warnings, DROPS_LOG)
    assert [message.split(";")[0] for _, message in logged] == [
        f"Altertable exporter dropped 5 call(s) (5 {name})"
    ]


# ----------------------------------------------------------------------- replay through an exporter


def test_a_failing_re_spool_keeps_the_original_file(
    server: FaultServer, spans: Spans, api_key: str, tmp_path: Path
) -> None:
    """Replay delivers half a file, the rest cannot be re-spooled: nothing may be lost."""
    spool = tmp_path / "spool"
    with refusing_endpoint() as down:
        first = AltertableSpanExporter(
            api_key=api_key, endpoint=down, spool_dir=spool, timeout=1, max_batch_size=100
        )
        assert first.export(spans(10)) is SpanExportResult.FAILURE
        first.shutdown()
    assert spooled_items(spool) == 10

    server.script("/track", [ok()])  # the first half goes through, then an outage
    server.set_default(retry_later(503))
    # A spool now too small for what is still owed: its put fails.
    second = AltertableSpanExporter(
        api_key=api_key,
        endpoint=server.endpoint,
        spool_dir=spool,
        spool_max_bytes=200,
        max_batch_size=5,
        timeout=1,
    )
    try:
        second.export([])
    finally:
        second.shutdown()

    assert len(server.accepted_items("/track")) == 5
    assert spooled_items(spool) == 10  # kept whole: 5 are sent again, none is lost


@pytest.mark.parametrize(
    ("reason", "kept_as"),
    [("auth", "auth"), ("environment-not-found", "auth"), ("endpoint-not-found", "auth"),
     ("tls", "auth"), ("retryable", "retryable"), ("invalid-event", "retryable")],
)  # fmt: skip
def test_calls_owed_for_a_setting_are_spooled_as_auth_parcels(reason: str, kept_as: str) -> None:
    assert spool_reason(reason) == kept_as


def test_recovered_calls_go_out_in_parcels_identifies_first() -> None:
    """One definition for the spool and the bridge: mapped records, then already-mapped calls,
    merged by endpoint, then parcels of at most ``size``, identifies, aliases, tracks, then any
    other endpoint."""
    mapped_from: list[list[Record]] = []

    def to_calls(records: list[Record]) -> Calls:
        mapped_from.append(records)
        return Calls(tracks=[{"event": r.name} for r in records])

    first = Recovered(1, 1, False, records=[Record("r-0", {}, {}, 0)])
    first.calls = {"page": [{"p": 0}], "track": [{"event": "c-0"}]}
    second = Recovered(2, 1, False)  # calls only: nothing to map
    second.calls = {"alias": [{"a": 0}], "identify": [{"i": n} for n in range(3)]}
    calls = recovered_calls([first, second], to_calls)
    assert mapped_from == [first.records]
    assert calls == {
        "track": [{"event": "r-0"}, {"event": "c-0"}],
        "page": [{"p": 0}],
        "alias": [{"a": 0}],
        "identify": [{"i": 0}, {"i": 1}, {"i": 2}],
    }
    assert list(parcels(calls, 2)) == [
        {"identify": [{"i": 0}, {"i": 1}]},
        {"identify": [{"i": 2}]},
        {"alias": [{"a": 0}]},
        {"track": [{"event": "r-0"}, {"event": "c-0"}]},
        {"page": [{"p": 0}]},
    ]


def test_the_bridge_recovers_with_the_backlogs_parcels() -> None:
    from opentelemetry_exporter_altertable.bridge import _acknowledged

    assert _acknowledged.parcels is parcels
    assert _acknowledged.recovered_calls is recovered_calls
