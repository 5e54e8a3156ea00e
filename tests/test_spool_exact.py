"""The spool's exact outcomes: the bytes on disk, header parsing, claim liveness, how a claim
ends, and how disk warnings are paced. Real files throughout; the clock is injected."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import Records, dead_pid

from opentelemetry_exporter_altertable import _spool
from opentelemetry_exporter_altertable._spool import Spool, SpoolDirectoryError


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


def one_claimed(tmp_path: Path) -> tuple[Path, Spool, str, _spool.SpoolClaim]:
    """A spool under ``tmp_path`` holding one parcel, claimed: its directory, the spool, the
    parcel's file name and the claim."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    claim = spool.claim()
    assert claim is not None
    return directory, spool, name, claim


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


def warning(log: Records) -> tuple[str, tuple[object, ...]]:
    (record,) = log.at(logging.WARNING)
    assert isinstance(record.args, tuple)
    return str(record.msg), record.args


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


def test_decode_header_ends_at_the_first_newline() -> None:
    assert _spool._decode(framed(b"\n" + body())) == ({}, "retryable", 1.0)


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
        (b"\nALTSPOOL1 abc 3", "bad header"),  # an empty first line is a header, and not ours
        (framed(body(), magic=b"ALTSPOOL1 "), "bad header"),  # fields are split on one space
        (framed(body(), magic=b"ALTSPOOL1\t"), "bad header"),
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


def test_damage_reason_and_count_are_logged_exactly(tmp_path: Path, log: Records) -> None:
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
    spool.put(one(1, n=2))
    spool.put(one(2, n=3))
    for name in files(directory):
        (directory / name).write_bytes(b"ALTSPOOL1")
    assert spool.claim() is None
    assert spool.lost == {"spool-damaged": 10}


# -- whether a claimer is alive ----------------------------------------------------------------


def test_pid_alive() -> None:
    assert _spool._pid_alive(0) is False  # not a process (kill(0) would mean our group)
    assert _spool._pid_alive(-1) is False  # not a process (kill(-1) would mean everyone)
    assert _spool._pid_alive(os.getpid()) is True
    assert _spool._pid_alive(dead_pid()) is False


def test_pid_alive_only_probes() -> None:
    """A live process is reported alive, and the probe sends it no real signal."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert _spool._pid_alive(child.pid) is True
    finally:
        assert child.stdin is not None
        child.stdin.close()  # any signal was sent before this: it would be seen first
        assert child.wait(timeout=30) == 0


_EPERM_PROBE = """
import os, sys
from opentelemetry_exporter_altertable._spool import _pid_alive
target = int(sys.argv[1])
assert _pid_alive(os.getpid())  # a first call loads all it needs while it still can
if os.geteuid() == 0:
    os.setuid(65534)  # from now on a root process is out of reach
try:
    os.kill(target, 0)
except PermissionError:
    print(_pid_alive(target))
else:
    print("target not protected")
"""


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX users")
def test_pid_alive_when_the_process_belongs_to_another_user() -> None:
    # The probe asks about pid 1, which belongs to root, as another user (run as root, it drops
    # to "nobody" first): kill() says EPERM, so no signal can reach pid 1 whatever the code.
    # The call here ties this test to _pid_alive for mutation testing, which traces this
    # process only.
    assert _spool._pid_alive(os.getpid()) is True
    probe = subprocess.run(
        [sys.executable, "-c", _EPERM_PROBE, "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (probe.returncode, probe.stdout) == (0, "True\n"), probe.stderr


def test_claim_by_pid_0_is_recovered(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(7))
    (name,) = files(directory)
    # Pid 0 names no process: the claim is fresh, yet nobody can hold it.
    (directory / name).rename(directory / f"{name}.claimed-0-{int(time.time())}-deadbeef")
    claim = spool.claim()
    assert claim is not None and claim.items == 1
    (info,) = log.at(logging.INFO)
    assert info.getMessage() == "recovered 1 spooled file(s) left claimed by a stopped process"


# -- how a claim ends --------------------------------------------------------------------------


def _claimed_path(directory: Path) -> Path:
    (path,) = [p for p in directory.iterdir() if ".claimed-" in p.name]
    return path


def test_done_deletes_only_its_own_file(tmp_path: Path, log: Records) -> None:
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
    directory, _, name, claim = one_claimed(tmp_path)
    _claimed_path(directory).rename(directory / name)  # judged stale by another process...
    other = Spool(directory).claim()  # ...and claimed again by it
    assert other is not None
    claim.done()  # our late success must not delete the other's claim
    assert _claimed_path(directory).exists()
    other.done()
    assert files(directory) == []


def test_done_that_cannot_delete_warns_once(tmp_path: Path, log: Records) -> None:
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
    msg, args = warning(log)
    assert msg == "could not delete delivered spool file %s: %s"
    assert args[0] == claimed and isinstance(args[1], IsADirectoryError)
    assert claimed.is_dir()


def test_release_that_cannot_rename_warns_once(tmp_path: Path, log: Records) -> None:
    directory, _, name, claim = one_claimed(tmp_path)
    claimed = _claimed_path(directory)
    (directory / name).mkdir()
    (directory / name / "keep").touch()  # a non-empty directory cannot be replaced by a file
    claim.release()
    claim.release()
    claim.done()
    msg, args = warning(log)
    assert msg == "could not return spool file %s to the spool: %s"
    assert args[0] == claimed and isinstance(args[1], OSError)
    assert claimed.is_file()  # neither returned nor deleted


def test_done_after_release_keeps_the_parcel(tmp_path: Path, log: Records) -> None:
    directory, spool, name, claim = one_claimed(tmp_path)
    claim.release()
    claim.done()  # too late: the parcel is back in the spool, for whoever claims it next
    assert files(directory) == [name]
    again = spool.claim()
    assert again is not None and again.calls == one(0)
    again.done()
    assert files(directory) == []
    assert log.records == []


def test_release_after_stale_recovery_is_quiet(tmp_path: Path, log: Records) -> None:
    directory, _, name, claim = one_claimed(tmp_path)
    _claimed_path(directory).rename(directory / name)
    claim.release()
    assert files(directory) == [name]
    assert log.records == []


# -- disk warnings, paced ----------------------------------------------------------------------


def test_disk_warnings_are_paced_by_the_minute(
    tmp_path: Path, log: Records, monkeypatch: pytest.MonkeyPatch
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
    tmp_path: Path, log: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(_spool, "time", clock)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    clock.mono = 1000.0
    for _ in range(2):
        assert Spool(blocker / "spool").put(one(0)) == 0  # a fresh object warns at once
    assert len(log.at(logging.WARNING)) == 2


# -- exact outcomes with an injected wall clock -------------------------------------------------


class _Wall:
    """Stands in for the spool's ``time`` module: whole seconds, moved by hand."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.mono = 0.0

    def time(self) -> float:
        return float(self.now)

    def time_ns(self) -> int:
        return self.now * 10**9

    def monotonic(self) -> float:
        return self.mono


T = 1_800_000_000


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> _Wall:
    clock = _Wall(T)
    monkeypatch.setattr(_spool, "time", clock)
    return clock


def test_names_are_strictly_increasing_under_a_still_clock(tmp_path: Path, wall: _Wall) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    for i in range(3):
        spool.put(one(i))
    assert [int(name[:20]) for name in files(directory)] == [
        T * 10**9,
        T * 10**9 + 1,
        T * 10**9 + 2,
    ]
    assert [c.created for c in iter(spool.claim, None)] == [T + k / 1e9 for k in range(3)]


def test_claim_age_limit_is_inclusive(tmp_path: Path, wall: _Wall) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)  # the default stale_claim_age: 600 s
    assert spool.stale_claim_age == 600.0 and type(spool.stale_claim_age) is float
    spool.put(one(0))
    spool.put(one(1))
    first, second = files(directory)
    pid = os.getpid()  # alive: only the age can make these claims stale
    (directory / first).rename(directory / f"{first}.claimed-{pid}-{T - 600}-00000000")
    (directory / second).rename(directory / f"{second}.claimed-{pid}-{T - 601}-00000000")
    claim = spool.claim()
    assert claim is not None and claim.calls == one(1)
    assert spool.claim() is None
    assert f"{first}.claimed-{pid}-{T - 600}-00000000" in files(directory)


def test_two_recovered_claims_are_counted(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    spool.put(one(1))
    dead = dead_pid()
    for name in files(directory):
        (directory / name).rename(directory / f"{name}.claimed-{dead}-{int(time.time())}-0000abcd")
    assert spool.claim() is not None
    (info,) = log.at(logging.INFO)
    assert info.getMessage() == "recovered 2 spooled file(s) left claimed by a stopped process"


def test_auth_age_limit_is_inclusive_and_counted(
    tmp_path: Path, wall: _Wall, log: Records
) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)  # the default auth_max_age: one day
    assert spool.auth_max_age == 86400.0 and type(spool.auth_max_age) is float
    wall.now = T - 86402
    spool.put(one(0, n=2), reason="auth")
    wall.now = T - 86401
    spool.put(one(1, n=3), reason="auth")
    wall.now = T - 86400
    spool.put(one(2), reason="auth")
    wall.now = T
    claim = spool.claim()
    assert claim is not None and claim.calls == one(2)
    assert warning(log) == (
        "dropped %d spooled file(s) refused for authentication and older than %g s; "
        "%d events lost",
        (2, 86400.0, 5),
    )
    assert spool.lost == {"spool-expired": 5}
    assert len(files(directory)) == 1  # only the claim left
    wall.now = T - 86401
    Spool(directory).put(one(3, n=4), reason="auth")  # another writer: its own order
    wall.now = T
    assert spool.claim() is None
    assert spool.lost == {"spool-expired": 9}  # counts add up across claims


def test_temp_file_age_limit_and_what_counts_as_temp(tmp_path: Path, wall: _Wall) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    spool = Spool(directory)

    def at(name: str, age: int) -> None:
        (directory / name).write_bytes(b"x")
        os.utime(directory / name, (T - age, T - age))

    at(".edge.tmp", 3600)  # exactly an hour old: may still be written
    at(".old.tmp", 3601)
    at("visible.tmp", 7200)  # not hidden: not a temp file of ours
    at(".hidden", 7200)  # not .tmp: not ours either
    os.symlink(directory / "nowhere", directory / ".link.tmp")  # an old dangling link: ours
    os.utime(directory / ".link.tmp", (T - 7200, T - 7200), follow_symlinks=False)
    assert spool.claim() is None
    assert files(directory) == [".edge.tmp", ".hidden", "visible.tmp"]


# -- put, exactly ------------------------------------------------------------------------------


def test_constructor_checks_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError) as info:
        Spool(tmp_path / "s", max_bytes=0)
    assert str(info.value) == "spool max_bytes must be positive, not 0"
    assert Spool(tmp_path / "s", max_bytes=1).max_bytes == 1
    assert Spool(tmp_path / "s", max_bytes=10.9).max_bytes == 10  # type: ignore[arg-type]
    spool = Spool(tmp_path / "s")
    assert spool.max_bytes == 64 * 1024 * 1024 and spool.lost == {}
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Spool("~/spool").directory == tmp_path / "home" / "spool"
    monkeypatch.chdir(tmp_path)
    relative = Spool("here")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert relative.directory == tmp_path / "here"  # fixed when made, not when used


def test_put_refusals_are_logged_exactly(tmp_path: Path, log: Records) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.put({"track": [1]}) == 0  # type: ignore[list-item]
    assert spool.put({"track": [{"event": object()}, {"event": "ok"}]}) == 0
    first, second = log.at(logging.WARNING)
    assert first.msg == "cannot spool undeliverable calls: %s"
    assert isinstance(first.args, tuple) and isinstance(first.args[0], TypeError)
    assert second.msg == "cannot spool %d items, not JSON-ready (%s); lost"
    assert isinstance(second.args, tuple) and second.args[0] == 2
    assert isinstance(second.args[1], TypeError)
    assert spool.pending() == (0, 0)


def test_size_limit_is_inclusive(tmp_path: Path, wall: _Wall, log: Records) -> None:
    probe = Spool(tmp_path / "probe")
    probe.put(one(0))
    size = probe.pending()[1]
    assert Spool(tmp_path / "fits", max_bytes=size).put(one(0)) == 1
    assert Spool(tmp_path / "over", max_bytes=size - 1).put(one(0)) == 0
    (record,) = log.at(logging.WARNING)
    assert record.getMessage() == (
        f"cannot spool 1 items: {size} bytes exceed the spool limit of {size - 1} bytes; "
        "1 events lost"
    )


def test_eviction_stops_exactly_at_the_limit(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    probe = Spool(tmp_path / "probe")
    probe.put(one(0))
    size = probe.pending()[1]
    spool = Spool(directory, max_bytes=3 * size)
    for i in range(3):
        assert spool.put(one(i)) == 1
    assert log.records == []
    assert spool.put(one(3)) == 1
    assert warning(log) == (
        "spool %s exceeded its limit of %d bytes: dropped the %d oldest file(s); "
        "%d events lost",
        (directory, 3 * size, 1, 1),
    )
    assert spool.lost == {"spool-full": 1}
    assert spool.pending() == (3, 3 * size)
    assert spool.put(one(4)) == 1
    assert spool.lost == {"spool-full": 2}  # counts add up across puts
    assert [c.calls for c in iter(spool.claim, None)] == [one(2), one(3), one(4)]


def test_eviction_skips_the_new_parcel_wherever_it_sorts(
    tmp_path: Path, wall: _Wall, log: Records
) -> None:
    directory = tmp_path / "spool"
    wall.now = T + 100  # another writer whose clock is ahead
    Spool(directory).put(one(0, n=2))
    (ahead,) = files(directory)
    wall.now = T
    probe = Spool(tmp_path / "probe")
    probe.put(one(1))
    spool = Spool(directory, max_bytes=probe.pending()[1])
    assert spool.put(one(1)) == 1
    (new,) = [name for name in files(directory) if name != ahead]
    assert new < ahead  # the new parcel sorts first, and is still the one kept
    assert files(directory) == [new]
    assert spool.lost == {"spool-full": 2}


def test_eviction_that_fails_stops_and_warns(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    Spool(directory).put(one(0))
    (older,) = files(directory)
    stuck = f"{0:020d}-1-{0:012d}-n3-s500.json"
    (directory / stuck).mkdir()  # sorts first and cannot be unlinked
    probe = Spool(tmp_path / "probe")
    probe.put(one(1))
    spool = Spool(directory, max_bytes=probe.pending()[1] + 10)
    assert spool.put(one(1)) == 1
    msg, args = warning(log)
    assert msg == "cannot evict %s from spool: %s"
    assert args[0] == stuck and isinstance(args[1], IsADirectoryError)
    assert older in files(directory)  # the first failure ends this eviction pass
    assert len(files(directory)) == 3 and spool.lost == {}


class _Tokens:
    """Stands in for the spool's ``secrets`` module: the same token every time."""

    @staticmethod
    def token_hex(n: int) -> str:
        return "ab" * n


def test_an_existing_temp_name_is_never_reused(
    tmp_path: Path, wall: _Wall, log: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_spool, "secrets", _Tokens)
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    spool = Spool(directory)
    data = _spool._encode(one(0), "retryable", T * 10**9)
    name = f"{T * 10**9:020d}-{os.getpid()}-{'ab' * 6}-n1-s{len(data)}.json"
    (directory / f".{name}.tmp").write_bytes(b"another writer's")
    assert spool.put(one(0)) == 0
    msg, args = warning(log)
    assert msg == "cannot write to spool %s (%s); %d events lost"
    assert isinstance(args[1], FileExistsError)
    assert files(directory) == [f".{name}.tmp"]
    assert (directory / f".{name}.tmp").read_bytes() == b"another writer's"


def test_a_failed_write_leaves_no_temp_file(
    tmp_path: Path, wall: _Wall, log: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_spool, "secrets", _Tokens)
    directory = tmp_path / "spool"
    spool = Spool(directory)
    data = _spool._encode(one(0), "retryable", T * 10**9)
    target = directory / f"{T * 10**9:020d}-{os.getpid()}-{'ab' * 6}-n1-s{len(data)}.json"
    target.mkdir(parents=True)
    (target / "keep").touch()  # the final name is taken by a non-empty directory
    os.chmod(directory, 0o700)
    assert spool.put(one(0)) == 0
    msg, args = warning(log)
    assert msg == "cannot write to spool %s (%s); %d events lost"
    assert args[0] == directory and isinstance(args[1], OSError) and args[2] == 1
    assert files(directory) == [target.name]


def test_put_recreates_a_removed_directory_by_itself(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    for p in directory.iterdir():
        p.unlink()
    directory.rmdir()
    assert spool.put(one(1)) == 1  # no claim in between to notice the loss
    assert log.records == []
    assert [c.calls for c in iter(spool.claim, None)] == [one(1)]


def test_modes_are_exact_under_a_strict_umask(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    old_umask = os.umask(0o277)  # would leave a read-only 0400 file and a 0500 directory
    try:
        spool = Spool(directory)
        assert spool.put(one(0)) == 1
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    (name,) = files(directory)
    assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o600


# -- claim, exactly ----------------------------------------------------------------------------


def test_claim_never_creates_the_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.claim() is None
    assert not (tmp_path / "spool").exists()


def test_directory_replaced_after_loss_is_checked_again(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    shutil.rmtree(directory)
    assert spool.claim() is None  # noticed the loss
    directory.mkdir()
    os.chmod(directory, 0o777)
    with pytest.raises(SpoolDirectoryError):
        spool.claim()


def test_directory_replaced_by_a_file_is_a_warning(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    assert spool.claim() is None
    msg, args = warning(log)
    assert msg == "cannot read spool %s: %s"
    assert args[0] == directory and isinstance(args[1], NotADirectoryError)


def test_claim_rename_failure_is_a_warning(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    # A valid name so long that the claimed name would exceed the file name limit.
    long_name = f"{name[:20]}-{'9' * 200}-{'a' * 12}-n1-s{name.split('-s')[1]}"
    (directory / name).rename(directory / long_name)
    assert spool.claim() is None
    msg, args = warning(log)
    assert msg == "cannot claim spool file %s: %s"
    assert args[0] == directory / long_name and isinstance(args[1], OSError)
    assert files(directory) == [long_name]


def test_unreadable_parcel_is_put_back(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    name = f"{1:020d}-1-{0:012d}-n1-s100.json"
    spool.put(one(0))
    (directory / name).mkdir()  # claimable by name, unreadable as a file
    claim = spool.claim()
    assert claim is not None and claim.calls == one(0)  # the next one is still served
    msg, args = warning(log)
    assert msg == "cannot read spool file %s: %s"
    assert isinstance(args[0], Path) and args[0].parent == directory
    assert args[0].name.startswith(f"{name}.claimed-{os.getpid()}-")
    assert isinstance(args[1], IsADirectoryError)
    assert (directory / name).is_dir()  # put back under its own name
    assert spool.lost == {}


def test_symlinked_parcel_is_not_followed(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    outside = tmp_path / "outside.json"
    (directory / name).rename(outside)
    (directory / name).symlink_to(outside)
    assert spool.claim() is None
    msg, args = warning(log)
    assert msg == "cannot read spool file %s: %s" and isinstance(args[1], OSError)
    assert (directory / name).is_symlink() and outside.is_file()


def test_stale_claim_that_cannot_be_recovered_is_a_warning(
    tmp_path: Path, log: Records
) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(one(0))
    (name,) = files(directory)
    claimed = f"{name}.claimed-{dead_pid()}-{int(time.time())}-0000abcd"
    (directory / name).rename(directory / claimed)
    (directory / name).mkdir()
    (directory / name / "keep").touch()  # the way back is blocked
    assert spool.claim() is None
    first = log.at(logging.WARNING)[0]
    assert first.msg == "cannot recover stale spool claim %s: %s"
    assert isinstance(first.args, tuple) and first.args[0] == claimed
    assert isinstance(first.args[1], OSError)
    assert claimed in files(directory)
    assert log.at(logging.INFO) == []


def test_every_unrecoverable_claim_is_tried(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    dead = dead_pid()
    claimed = []
    for i in range(3):
        spool.put(one(i))
    for name in files(directory):
        claimed.append(f"{name}.claimed-{dead}-{int(time.time())}-0000abcd")
        (directory / name).rename(directory / claimed[-1])
        (directory / name).mkdir()
        (directory / name / "keep").touch()
    assert spool.claim() is None
    tried = [
        str(r.args[0])  # type: ignore[index]
        for r in log.records
        if r.msg == "cannot recover stale spool claim %s: %s"
    ]
    assert sorted(tried) == claimed  # one warning, the rest at debug level: none skipped


# -- the directory checks, word for word -------------------------------------------------------


def test_directory_refusals_word_for_word(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SpoolDirectoryError) as info:
        Spool(path)
    assert str(info.value) == (
        f"spool directory {path} exists but is not a directory; set spool_dir to a directory"
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o770)
    with pytest.raises(SpoolDirectoryError) as info:
        Spool(shared)
    assert str(info.value) == (
        f"spool directory {shared} is writable by group or others (mode 0770): refusing to "
        f"use it; run `chmod 700 {shared}` or set spool_dir to a private directory"
    )


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX ownership")
def test_foreign_directory_refusal_word_for_word(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        directory = tmp_path / "theirs"
        directory.mkdir(mode=0o700)
        os.chown(directory, 65534, 65534)
    else:
        directory = Path("/")
    owner = os.stat(directory).st_uid
    with pytest.raises(SpoolDirectoryError) as info:
        Spool(directory)
    assert str(info.value) == (
        f"spool directory {directory} belongs to uid {owner}, not to this process's user "
        f"(uid {os.geteuid()}): refusing to use it; set spool_dir to a directory owned by "
        f"this user"
    )


def test_an_expired_parcel_without_items_is_still_reported(
    tmp_path: Path, wall: _Wall, log: Records
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    data = framed(body(reason="auth", created_ns=(T - 86401) * 10**9))
    name = f"{(T - 86401) * 10**9:020d}-1-{0:012d}-n0-s{len(data)}.json"
    (directory / name).write_bytes(data)
    assert Spool(directory).claim() is None
    assert warning(log)[1] == (1, 86400.0, 0)
    assert files(directory) == []


def test_claimed_parcels_count_toward_the_limit(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    probe = Spool(tmp_path / "probe")
    probe.put(one(0))
    size = probe.pending()[1]
    spool = Spool(directory, max_bytes=3 * size + 10)
    for i in range(3):
        spool.put(one(i))
    held = [spool.claim(), spool.claim()]  # in flight: never evicted, but they take room
    assert spool.put(one(3)) == 1
    assert spool.lost == {"spool-full": 1}
    assert spool.pending() == (3, 3 * size)
    assert [c.calls for c in iter(spool.claim, None)] == [one(3)]  # parcel 2 made room
    for claim in held:
        assert claim is not None
        claim.done()


def test_eviction_reports_what_it_dropped_before_a_failure(
    tmp_path: Path, wall: _Wall, log: Records
) -> None:
    directory = tmp_path / "spool"
    Spool(directory).put(one(0))  # the oldest: evicted
    (oldest,) = files(directory)
    stuck = f"{T * 10**9 + 5:020d}-1-{0:012d}-n3-s500.json"
    (directory / stuck).mkdir()  # next in line, and cannot be unlinked
    wall.now = T + 1
    probe = Spool(tmp_path / "probe")
    probe.put(one(1))
    spool = Spool(directory, max_bytes=probe.pending()[1] + 10)
    assert spool.put(one(1)) == 1
    evict, report = log.at(logging.WARNING)
    assert evict.msg == "cannot evict %s from spool: %s"
    assert report.getMessage() == (
        f"spool {directory} exceeded its limit of {spool.max_bytes} bytes: dropped the 1 "
        "oldest file(s); 1 events lost"
    )
    assert spool.lost == {"spool-full": 1}
    assert oldest not in files(directory) and stuck in files(directory)
