"""The spool's exact outcomes: the bytes on disk, header parsing, claim liveness, how a claim
ends, and how disk warnings are paced. Real files throughout; the clock is injected."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opentelemetry_exporter_altertable import _spool
from opentelemetry_exporter_altertable._spool import Spool

LOGGER = "opentelemetry_exporter_altertable._spool"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]


@pytest.fixture
def log() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger(LOGGER)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class _Clock:
    """Stands in for the spool's ``time`` module: a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.mono = 0.0

    def time(self) -> float:
        return time.time()

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return self.mono


def one(ident: int, n: int = 1) -> dict[str, list[dict[str, Any]]]:
    return {"track": [{"event": "e", "properties": {"id": ident, "j": j}} for j in range(n)]}


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def framed(body: bytes, length: bytes | None = None, magic: bytes = b"ALTSPOOL1") -> bytes:
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    return b"%s %s %s\n%s" % (magic, digest, b"%d" % len(body) if length is None else length, body)


def body(**fields: Any) -> bytes:
    obj: dict[str, Any] = {"v": 1, "reason": "retryable", "created_ns": 1_000_000_000, "calls": {}}
    obj.update(fields)
    return json.dumps(obj).encode("ascii")


def damaged_reason(data: bytes) -> str:
    with pytest.raises(_spool._Damaged) as info:
        _spool._decode(data)
    return str(info.value)


# -- the bytes on disk -------------------------------------------------------------------------


def test_file_bytes_and_name_are_exact(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    assert spool.put({"track": [{"event": "\u00e9"}], "identify": []}, reason="auth") == 1
    (name,) = files(directory)
    data = (directory / name).read_bytes()
    created_ns = int(name[:20])
    expected_body = (
        b'{"v":1,"reason":"auth","created_ns":%d,"calls":{"track":[{"event":"\\u00e9"}]}}'
        % created_ns
    )
    digest = hashlib.sha256(expected_body).hexdigest().encode("ascii")
    assert data == b"ALTSPOOL1 %s %d\n%s" % (digest, len(expected_body), expected_body)
    prefix = f"{created_ns:020d}-{os.getpid()}-"
    assert name.startswith(prefix) and name.endswith(f"-n1-s{len(data)}.json")
    assert len(name) == len(prefix) + 12 + len(f"-n1-s{len(data)}.json")
    assert spool.pending() == (1, len(data))


def test_items_and_repr_of_a_claim(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    assert spool.put({"track": one(0, 3)["track"], "identify": [{"distinct_id": "u"}]}) == 4
    (name,) = files(directory)
    claim = spool.claim()
    assert claim is not None
    assert claim.items == 4
    assert repr(claim) == f"SpoolClaim({name!r}, reason='retryable', items=4)"
    assert claim.created == int(name[:20]) / 1e9
    claim.done()
    assert repr(spool) == f"Spool({str(directory)!r}, max_bytes={64 * 1024 * 1024})"


# -- header parsing ----------------------------------------------------------------------------


def test_decode_returns_exact_values() -> None:
    created_ns = 1_234_567_890_123_456_789
    calls = {"track": [{"event": "e"}], "alias": []}
    assert _spool._decode(framed(body(reason="auth", created_ns=created_ns, calls=calls))) == (
        calls,
        "auth",
        created_ns / 1e9,
    )
    assert _spool._decode(framed(body())) == ({}, "retryable", 1.0)


def test_decode_accepts_a_20_digit_length_and_refuses_21() -> None:
    b = body()
    assert _spool._decode(framed(b, length=b"%020d" % len(b)))[1] == "retryable"
    assert damaged_reason(framed(b, length=b"%021d" % len(b))) == "bad header"


def test_decode_header_must_end_within_128_bytes() -> None:
    # The newline at index 127 is inside the window: the header is read (and is not ours).
    assert damaged_reason(b"ALTSPOOL1 " + b"a" * 117 + b"\n{}") == "bad header"
    # At index 128 it is outside: there is no header at all.
    assert damaged_reason(b"ALTSPOOL1 " + b"a" * 118 + b"\n{}") == "no header"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no header"),
        (b"ALTSPOOL1 abc 3", "no header"),
        (b"\n" + framed(body()), "bad header"),
        (framed(body(), magic=b"ALTSPOOL2"), "bad header"),
        (framed(body(), magic=b""), "bad header"),
        (framed(body(), length=b"%d extra" % len(body())), "bad header"),
        (framed(body(), length=b""), "bad header"),
        (framed(body(), length=b"-5"), "bad header"),
        (framed(body(), length=b"12a"), "bad header"),
        (b"ALTSPOOL1 %d\n{}" % 2, "bad header"),
    ],
)
def test_decode_refuses_bad_headers(data: bytes, reason: str) -> None:
    assert damaged_reason(data) == reason


def test_decode_reports_torn_writes_and_checksums_exactly() -> None:
    b = body()
    torn = "length {} instead of {}: torn write"
    assert damaged_reason(framed(b)[:-3]) == torn.format(len(b) - 3, len(b))
    assert damaged_reason(framed(b) + b"xy") == torn.format(len(b) + 2, len(b))
    good = framed(b)
    flipped = good[:-2] + (b"0" if good[-2:-1] != b"0" else b"1") + good[-1:]
    assert damaged_reason(flipped) == "checksum mismatch"
    with pytest.raises(ValueError) as info:
        json.loads(b"{not json")
    assert damaged_reason(framed(b"{not json")) == f"invalid JSON: {info.value}"


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b"1",
        b'"s"',
        body(calls=[]),
        body(calls=None),
        body(reason=None),
        body(reason=1),
        body(created_ns=1.5),
        body(created_ns="1"),
        body(created_ns=True),
        body(created_ns=None),
        body(calls={"track": {}}),
        body(calls={"track": None}),
        body(calls={"track": [1]}),
        body(calls={"track": [{"event": "e"}, []]}),
        body(calls={"track": [], "identify": [None]}),
    ],
)
def test_decode_refuses_unexpected_content(content: bytes) -> None:
    assert damaged_reason(framed(content)) == "unexpected content"


def test_damage_reason_and_count_are_logged_exactly(tmp_path: Path, log: _Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0, n=5))
    (name,) = files(directory)
    (directory / name).write_bytes(b"")
    assert spool.claim() is None
    (record,) = log.at(logging.WARNING)
    assert record.getMessage() == (
        f"deleted damaged spool file {directory / name} (no header); 5 events lost"
    )
    assert spool.lost == {"spool-damaged": 5}
    assert files(directory) == []


# -- whether a claimer is alive ----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pid_alive() -> None:
    assert _spool._pid_alive(0) is False  # not a process (kill(0) would mean our group)
    assert _spool._pid_alive(-1) is False  # not a process (kill(-1) would mean everyone)
    assert _spool._pid_alive(os.getpid()) is True
    # pid 1 exists; as root kill(1, 0) succeeds, as anyone else it fails with EPERM.
    assert _spool._pid_alive(1) is True
    assert _spool._pid_alive(_dead_pid()) is False


@pytest.mark.parametrize("pid", [0, -1])
def test_claim_of_a_non_process_is_recovered(tmp_path: Path, pid: int, log: _Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(7))
    (name,) = files(directory)
    # A pid that names no process: the claim is fresh, yet nobody can hold it.
    (directory / name).rename(directory / f"{name}.claimed-{pid}-{int(time.time())}-deadbeef")
    if pid < 0:  # the pattern only admits digits: such a file is not ours and stays put
        assert spool.claim() is None
        return
    claim = spool.claim()
    assert claim is not None and claim.items == 1
    (info,) = log.at(logging.INFO)
    assert info.getMessage() == "recovered 1 spooled file(s) left claimed by a stopped process"


# -- how a claim ends --------------------------------------------------------------------------


def _claimed_path(directory: Path) -> Path:
    (path,) = [p for p in directory.iterdir() if ".claimed-" in p.name]
    return path


def test_done_deletes_only_its_own_file(tmp_path: Path, log: _Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    spool.put(one(1))
    first = spool.claim()
    assert first is not None
    first.done()
    first.done()
    assert len(files(directory)) == 1
    second = spool.claim()
    assert second is not None and second.calls == one(1)
    second.done()
    assert files(directory) == []
    assert log.at(logging.WARNING) == []


def test_done_after_recovery_and_reclaim_leaves_the_new_claim_alone(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    claim = spool.claim()
    assert claim is not None
    _claimed_path(directory).rename(directory / name)  # judged stale by another process...
    other = Spool(directory).claim()  # ...and claimed again by it
    assert other is not None
    claim.done()  # our late success must not delete the other's claim
    assert _claimed_path(directory).exists()
    other.done()
    assert files(directory) == []


def test_done_that_cannot_delete_warns_once(tmp_path: Path, log: _Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    claim = spool.claim()
    assert claim is not None
    claimed = _claimed_path(directory)
    claimed.unlink()
    claimed.mkdir()  # unlink() of a directory fails, for root too
    claim.done()
    claim.done()
    claim.release()
    (record,) = log.at(logging.WARNING)
    assert record.msg == "could not delete delivered spool file %s: %s"
    assert record.args is not None and record.args[0] == claimed
    assert isinstance(record.args[1], IsADirectoryError)
    assert claimed.is_dir()


def test_release_that_cannot_rename_warns_once(tmp_path: Path, log: _Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    claim = spool.claim()
    assert claim is not None
    claimed = _claimed_path(directory)
    (directory / name).mkdir()
    (directory / name / "keep").touch()  # a non-empty directory cannot be replaced by a file
    claim.release()
    claim.release()
    claim.done()
    (record,) = log.at(logging.WARNING)
    assert record.msg == "could not return spool file %s to the spool: %s"
    assert record.args is not None and record.args[0] == claimed
    assert isinstance(record.args[1], OSError)
    assert claimed.is_file()  # neither returned nor deleted


def test_done_after_release_keeps_the_parcel(tmp_path: Path, log: _Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    claim = spool.claim()
    assert claim is not None
    claim.release()
    claim.done()  # too late: the parcel is back in the spool, for whoever claims it next
    assert files(directory) == [name]
    again = spool.claim()
    assert again is not None and again.calls == one(0)
    again.done()
    assert files(directory) == []
    assert log.records == []


def test_release_after_stale_recovery_is_quiet(tmp_path: Path, log: _Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    claim = spool.claim()
    assert claim is not None
    _claimed_path(directory).rename(directory / name)
    claim.release()
    assert files(directory) == [name]
    assert log.records == []


# -- disk warnings, paced ----------------------------------------------------------------------


def test_disk_warnings_are_paced_by_the_minute(
    tmp_path: Path, log: _Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(_spool, "time", clock)
    blocker = tmp_path / "blocker"
    directory = blocker / "spool"
    spool = Spool(directory)
    blocker.write_text("a file where the parent directory should be")
    template = "cannot write to spool %s (%s); %d events lost"

    def attempt(n: int) -> None:
        assert spool.put(one(0, n=n)) == 0

    clock.mono = 0.0  # the very first problem is always logged
    attempt(1)
    clock.mono = 30.0
    attempt(2)
    clock.mono = 59.5
    attempt(3)
    clock.mono = 60.0  # exactly a minute after the last warning: logged again
    attempt(4)
    clock.mono = 119.5
    attempt(5)
    clock.mono = 180.0
    attempt(6)
    clock.mono = 240.0  # nothing suppressed since the last warning: no suffix
    attempt(7)

    warnings = log.at(logging.WARNING)
    assert [r.msg for r in warnings] == [
        template,
        template + " (%d similar warnings suppressed)",
        template + " (%d similar warnings suppressed)",
        template,
    ]
    assert [r.args[2] for r in warnings if isinstance(r.args, tuple)] == [1, 4, 6, 7]
    assert [r.args[3:] for r in warnings if isinstance(r.args, tuple)] == [(), (2,), (1,), ()]
    assert all(isinstance(r.args, tuple) and r.args[0] == directory for r in warnings)
    assert all(isinstance(r.args, tuple) and isinstance(r.args[1], OSError) for r in warnings)
    debug = log.at(logging.DEBUG)
    assert [r.msg for r in debug] == [template] * 3
    assert [r.args[2] for r in debug if isinstance(r.args, tuple)] == [2, 3, 5]
    assert spool.pending() == (0, 0)


def test_disk_warning_pacing_is_per_spool(
    tmp_path: Path, log: _Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(_spool, "time", clock)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    clock.mono = 1000.0
    for _ in range(2):
        assert Spool(blocker / "spool").put(one(0)) == 0  # a fresh object warns at once
    assert len(log.at(logging.WARNING)) == 2
