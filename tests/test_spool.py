"""The disk spool, on real files: crash safety, order, bounds, permissions, concurrency."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import Records, dead_pid

from opentelemetry_exporter_altertable import _spool
from opentelemetry_exporter_altertable._spool import Spool, SpoolClaim, SpoolDirectoryError


def parcel(ident: int, n: int = 1) -> dict[str, list[dict[str, Any]]]:
    return {
        "track": [
            {"environment": "production", "event": "e", "properties": {"id": ident, "j": j}}
            for j in range(n)
        ]
    }


def ident(claim: SpoolClaim) -> int:
    value = claim.calls["track"][0]["properties"]["id"]
    assert isinstance(value, int)
    return value


def drain(spool: Spool) -> list[int]:
    out = []
    while (claim := spool.claim()) is not None:
        out.append(ident(claim))
        claim.done()
    return out


def parcel_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".json"))


def test_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    assert not directory.exists()  # created on first use only
    calls: dict[str, list[dict[str, Any]]] = {
        "identify": [{"environment": "production", "distinct_id": "u1", "traits": {"n": "Zoë"}}],
        "alias": [{"environment": "production", "distinct_id": "a", "new_user_id": "u1"}],
        "track": [
            {
                "environment": "production",
                "event": "Signed Up ✓",
                "properties": {"x": 1.5, "l": [1, None, True], "s": "\ud800", "o": {"k": "v"}},
                "timestamp": "2025-06-15T14:30:00.123Z",
            },
            {"environment": "production", "event": "e2", "properties": {}},
        ],
    }
    before = time.time()
    assert spool.put(calls, reason="retryable") == 4
    assert spool.pending()[0] == 1
    assert spool.pending()[1] == parcel_files(directory)[0].stat().st_size

    claim = spool.claim()
    assert claim is not None
    assert claim.calls == calls
    assert claim.reason == "retryable"
    assert claim.items == 4
    assert before - 1 <= claim.created <= time.time() + 1
    assert spool.claim() is None  # claimed: nobody else gets it
    assert spool.pending()[0] == 1  # still on disk until done
    claim.done()
    assert spool.pending() == (0, 0)
    assert list(directory.iterdir()) == []
    assert spool.claim() is None


def test_put_nothing_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.put({}) == 0
    assert spool.put({"track": [], "identify": []}) == 0
    assert not (tmp_path / "spool").exists()
    assert spool.claim() is None
    assert spool.pending() == (0, 0)


def test_unserializable_payload_is_logged_not_raised(tmp_path: Path, log: Records) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.put({"track": [{"event": "e", "properties": {"bad": object()}}]}) == 0
    assert any("not JSON-ready" in w for w in log.warnings())
    assert spool.pending() == (0, 0)


def test_oldest_first_across_many_puts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(60):
        assert spool.put(parcel(i)) == 1
    # Another object (e.g. the next process) sees the same order.
    assert drain(Spool(tmp_path / "spool")) == list(range(60))


def test_release_keeps_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.put(parcel(i))
    first = spool.claim()
    second = spool.claim()
    assert first is not None and second is not None
    assert (ident(first), ident(second)) == (0, 1)
    first.release()
    first.release()  # idempotent
    again = spool.claim()
    assert again is not None and ident(again) == 0
    assert again.calls == first.calls
    second.release()
    again.release()
    assert drain(spool) == [0, 1, 2]


def _damage_truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _damage_flip_body(data: bytes) -> bytes:
    pos = len(data) - 10
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


def _damage_flip_checksum(data: bytes) -> bytes:
    pos = len(b"ALTSPOOL1 ")
    return data[:pos] + (b"0" if data[pos : pos + 1] != b"0" else b"1") + data[pos + 1 :]


def _damage_append(data: bytes) -> bytes:
    return data + b'{"track": []}'


def _damage_empty(data: bytes) -> bytes:
    return b""


def _damage_no_header(data: bytes) -> bytes:
    return data[data.index(b"\n") + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        _damage_truncate,
        _damage_flip_body,
        _damage_flip_checksum,
        _damage_append,
        _damage_empty,
        _damage_no_header,
    ],
)
def test_damaged_file_is_never_replayed(tmp_path: Path, log: Records, damage: Any) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(parcel(0, n=7))
    spool.put(parcel(1))
    oldest = parcel_files(directory)[0]
    oldest.write_bytes(damage(oldest.read_bytes()))

    claim = spool.claim()
    assert claim is not None and ident(claim) == 1  # the damaged one is skipped
    assert not oldest.exists()
    assert not any(p.name.startswith(oldest.name) for p in directory.iterdir())
    warnings = log.warnings()
    assert len(warnings) == 1
    assert "damaged" in warnings[0] and oldest.name in warnings[0]
    assert "7 events lost" in warnings[0]
    claim.done()
    assert spool.claim() is None


def test_temp_files_are_ignored_and_stale_ones_removed(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(parcel(0))
    spool.put(parcel(1))
    fresh, stale = parcel_files(directory)
    # Complete, valid content under temp names, as a crash before the rename would leave.
    fresh_tmp = directory / f".{fresh.name}.tmp"
    stale_tmp = directory / f".{stale.name}.tmp"
    fresh.rename(fresh_tmp)
    stale.rename(stale_tmp)
    two_hours_ago = time.time() - 7200
    os.utime(stale_tmp, (two_hours_ago, two_hours_ago))

    assert spool.claim() is None
    assert fresh_tmp.exists()  # might still be being written: left alone
    assert not stale_tmp.exists()  # left by a crash long ago: cleaned
    assert spool.pending() == (0, 0)


def test_permissions_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "missing" / "parents" / "spool"
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        spool = Spool(directory)
        spool.put(parcel(0))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    (file,) = parcel_files(directory)
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    claim = spool.claim()
    assert claim is not None
    claim.release()
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o707, 0o777])
def test_refuses_group_or_other_writable_directory(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, mode)
    with pytest.raises(ValueError, match="writable by group or others") as info:
        Spool(directory)
    assert str(directory) in str(info.value)
    assert f"chmod 700 {directory}" in str(info.value)


def test_accepts_private_existing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "mine"
    directory.mkdir()
    os.chmod(directory, 0o755)  # readable by others is fine: the files are 0600
    spool = Spool(directory)
    assert spool.put(parcel(0)) == 1
    assert drain(spool) == [0]


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX ownership")
def test_refuses_directory_of_another_user(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        directory = tmp_path / "theirs"
        directory.mkdir(mode=0o700)
        os.chown(directory, 65534, 65534)
    else:
        directory = Path("/")  # owned by root
    with pytest.raises(ValueError, match="belongs to uid") as info:
        Spool(directory)
    assert str(directory) in str(info.value)
    assert isinstance(info.value, SpoolDirectoryError)


def test_refuses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Spool(path)


def test_unsafe_directory_created_after_construction_is_refused_on_use(tmp_path: Path) -> None:
    directory = tmp_path / "later"
    spool = Spool(directory)
    directory.mkdir()
    os.chmod(directory, 0o777)
    with pytest.raises(SpoolDirectoryError, match=str(directory)):
        spool.put(parcel(0))
    with pytest.raises(SpoolDirectoryError):
        spool.claim()


def test_size_bound_evicts_oldest_with_one_warning(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    probe = Spool(tmp_path / "probe")
    probe.put(parcel(0, n=10))
    small = probe.pending()[1]
    probe.put(parcel(9, n=30))
    big = probe.pending()[1] - small

    spool = Spool(directory, max_bytes=5 * small + 10)
    for i in range(5):
        assert spool.put(parcel(i, n=10)) == 10
    assert log.warnings() == []
    assert spool.pending() == (5, 5 * small)

    assert spool.put(parcel(9, n=30)) == 30
    kept_small = (5 * small + 10 - big) // small
    lost = 5 - kept_small
    assert lost >= 2
    warnings = log.warnings()
    assert len(warnings) == 1
    assert f"dropped the {lost} oldest file(s)" in warnings[0]
    assert f"{lost * 10} events lost" in warnings[0]
    files, size = spool.pending()
    assert size <= spool.max_bytes
    assert files == kept_small + 1
    assert drain(spool) == [*range(lost, 5), 9]  # the newest survive, oldest first


def test_oversize_parcel_is_refused(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=2000)
    assert spool.put(parcel(0)) == 1
    assert spool.put(parcel(1, n=50)) == 0
    warnings = log.warnings()
    assert len(warnings) == 1 and "50 events lost" in warnings[0]
    assert drain(spool) == [0]  # what was already there is untouched


_CLAIMER = textwrap.dedent(
    """
    import os, sys, time
    from opentelemetry_exporter_altertable._spool import Spool
    directory, go = sys.argv[1], sys.argv[2]
    spool = Spool(directory)
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.001)
    got = []
    while (claim := spool.claim()) is not None:
        got.append(claim.calls["track"][0]["properties"]["id"])
        claim.done()
    print(" ".join(map(str, got)))
    """
)


def test_two_processes_claim_disjoint_sets(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    for i in range(200):
        spool.put(parcel(i))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(directory), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:  # both started, both waiting at the line
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        go.touch()
        results = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    got = [[int(x) for x in out.split()] for out, _ in results]
    assert set(got[0]).isdisjoint(got[1])
    assert sorted(got[0] + got[1]) == list(range(200))
    for ids in got:
        assert ids == sorted(ids)  # each one still went oldest first
    assert list(directory.iterdir()) == []


def test_claim_of_dead_process_is_recovered(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(parcel(0))
    spool.put(parcel(1))
    first, _ = parcel_files(directory)
    pid = dead_pid()
    first.rename(directory / f"{first.name}.claimed-{pid}-{int(time.time())}-deadbeef")

    claim = spool.claim()
    assert claim is not None and ident(claim) == 0  # recovered, and still the oldest
    claim.done()
    assert drain(spool) == [1]
    assert any(
        "recovered 1" in r.getMessage() for r in log.records if r.levelno == logging.INFO
    )


def test_claim_of_live_process_is_respected(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    holder = Spool(directory)
    other = Spool(directory)  # same process, another object: same live pid
    holder.put(parcel(0))
    held = holder.claim()
    assert held is not None
    assert other.claim() is None
    assert holder.claim() is None
    held.release()
    again = other.claim()
    assert again is not None and ident(again) == 0
    again.done()


def test_claim_older_than_stale_age_is_recovered(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, stale_claim_age=600)
    spool.put(parcel(0))
    (file,) = parcel_files(directory)
    # A live pid (ours) whose claim is an hour old: a stuck or reused-pid claim.
    file.rename(directory / f"{file.name}.claimed-{os.getpid()}-{int(time.time()) - 3600}-0badf00d")
    assert drain(spool) == [0]


def test_done_after_a_stale_recovery_prevents_a_second_send(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(parcel(0))
    (file,) = parcel_files(directory)
    claim = spool.claim()
    assert claim is not None
    (claimed,) = directory.iterdir()
    claimed.rename(file)  # what another process does when it judges the claim stale
    claim.done()
    assert spool.claim() is None
    assert list(directory.iterdir()) == []


class _Clock:
    """The spool's ``time`` module, ``ahead`` seconds in the future (wall clocks only)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def time(self) -> float:
        return time.time() + self.ahead

    def time_ns(self) -> int:
        return time.time_ns() + int(self.ahead * 1e9)

    def monotonic(self) -> float:
        return time.monotonic()


def test_auth_parcels_past_max_age_are_dropped(
    tmp_path: Path, log: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(_spool, "time", clock)
    directory = tmp_path / "spool"
    spool = Spool(directory, auth_max_age=60.0)
    spool.put(parcel(0, n=3), reason="auth")
    spool.put(parcel(1, n=2), reason="retryable")
    clock.ahead = 120.0  # two minutes later: parcel 0 is twice the max age, parcel 2 is new
    spool.put(parcel(2), reason="auth")

    claim = spool.claim()
    assert claim is not None and ident(claim) == 1 and claim.reason == "retryable"
    claim.done()
    claim = spool.claim()
    assert claim is not None and ident(claim) == 2 and claim.reason == "auth"
    claim.done()
    assert spool.claim() is None
    warnings = log.warnings()
    assert len(warnings) == 1
    assert "authentication" in warnings[0] and "3 events lost" in warnings[0]


def test_eight_threads_put_and_claim_concurrently(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spools = [Spool(directory), Spool(directory)]  # two objects, one directory
    claimed: list[list[int]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            spool = spools[t % 2]
            start.wait()
            for k in range(25):
                assert spool.put(parcel(t * 100 + k)) == 1
                if k % 2:
                    claim = spool.claim()
                    if claim is not None:
                        claimed[t].append(ident(claim))
                        if k % 3 == 0:
                            claim.release()
                            claimed[t].pop()
                        else:
                            claim.done()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    every = [i for ids in claimed for i in ids] + drain(spools[0])
    assert sorted(every) == sorted(t * 100 + k for t in range(8) for k in range(25))
    assert list(directory.iterdir()) == []


def test_disk_errors_are_logged_once_and_never_raised(tmp_path: Path, log: Records) -> None:
    blocker = tmp_path / "blocker"
    spool = Spool(blocker / "spool")
    blocker.write_text("a file where the parent directory should be")
    assert spool.put(parcel(0, n=4)) == 0
    assert spool.put(parcel(1)) == 0
    assert spool.claim() is None
    assert spool.pending() == (0, 0)
    warnings = log.warnings()
    assert len(warnings) == 1  # repeated failures do not flood the log
    assert "4 events lost" in warnings[0]


def test_directory_removed_while_running_is_recreated(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.put(parcel(0))
    shutil.rmtree(directory)
    assert spool.claim() is None
    assert spool.pending() == (0, 0)
    assert log.warnings() == []
    assert spool.put(parcel(1)) == 1
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert drain(spool) == [1]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_no_file_descriptor_outlives_a_call(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    before = len(os.listdir("/proc/self/fd"))
    spool.put(parcel(0))
    claim = spool.claim()
    assert claim is not None
    spool.pending()
    assert len(os.listdir("/proc/self/fd")) == before
    claim.done()


def test_claimed_parcels_and_the_new_one_are_never_evicted(tmp_path: Path, log: Records) -> None:
    directory = tmp_path / "spool"
    probe = Spool(tmp_path / "probe")
    probe.put(parcel(0))
    size = probe.pending()[1]
    spool = Spool(directory, max_bytes=2 * size + 10)
    spool.put(parcel(0))
    spool.put(parcel(1))
    held = [spool.claim(), spool.claim()]  # both in flight
    assert spool.put(parcel(2)) == 1  # over the limit only because of in-flight files
    assert log.warnings() == []
    assert spool.pending() == (3, 3 * size)
    newest = spool.claim()
    assert newest is not None and ident(newest) == 2
    newest.done()
    for claim in held:
        assert claim is not None
        claim.done()
    assert spool.pending() == (0, 0)
