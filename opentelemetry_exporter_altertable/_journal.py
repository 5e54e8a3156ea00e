"""The per-process journal: every analytics record on disk before the call that ended it returns.

A process can end past every exit hook (``os._exit`` in Celery and ``multiprocessing``
children, SIGKILL from an OOM killer or a serverless platform reaping a frozen sandbox), and
whatever the batch queue held is then gone. With a spool directory, the processors append each
analytics record they accept to a journal file of their own process (one ``write`` per record,
no fsync: it survives the process, not the machine) and retire each record once the
exporter has finished with it (accepted, dropped and counted, or spooled). What a dead
process left unretired is recovered by the next exporter that opens the directory, or by
``altertable-otel replay``.

What is journaled is the *neutral record* (name, attributes, times, ids; the resource once per
file), not the mapped calls: mapping one span costs the calling thread about three times as
much as serialising its attributes (see ``benchmarks/journal_cost.py``). Recovery maps with the
recovering exporter's settings. Already-mapped calls can be journaled too
(:meth:`Journal.append_calls`, for callers that map before they keep, like the bridge).

Files: ``journal-<pid>-<token>-<segment>.v1`` in the spool directory, owner-only. A file
starts with a header line; each entry is one line ``<kind><seq> <crc32> <json>``;
``D<seq>,<seq>...`` lines record retired entries, and a file whose entries are all retired
shrinks back to its header. A torn or damaged line (a process
killed mid-append, a full disk) is skipped, never fatal. A live journal holds a POSIX record
lock (``lockf``) on each of its files: the kernel drops it when the process dies, so a
recoverer tells a dead journal from a live one by the lock, not by the pid (pids are reused,
and every container's first process is pid 1). Two recoverers in different processes exclude
each other the same way; two threads of one process (a span and a log exporter, the bridge's
keeper) cannot, since the lock is the process's, so recovery also takes a lock of the process
per directory (see :func:`recover_directory`).
A file of another format version is left alone and reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._mapping import EMPTY, Attrs, Record
from ._spool import _pid_alive
from ._text import LIMIT, clip
from ._values import json_safe

# POSIX record locks; elsewhere a journal is judged by its pid alone, through the spool's
# check, which never signals there (os.kill(pid, 0) ends a process on Windows) and so counts
# any other process's journal as alive: left for that process's own shutdown to salvage.
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "Journal", "Recovered", "recover_directory"]

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^journal-(\d+)-([0-9a-f]{12})-(\d+)\.v(\d+)$")
_HEADER = b"ALTJOURNAL %d " % FORMAT_VERSION
#: A segment this large is closed and a new one started, so retired entries leave the disk.
SEGMENT_BYTES = 1 << 20
_WARN_INTERVAL = 60.0
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

#: Tokens of the journals this process writes (token -> pid): never recovered by the process
#: that owns them (a POSIX lock does not exclude its own process). Inherited tokens of a
#: parent are told apart by the pid.
_OWN_TOKENS: dict[str, int] = {}

#: One recovery at a time per directory in a process, keyed by (pid, directory's device and
#: inode): a forked child's key differs, so a lock a parent's thread held at the fork is moot.
_RECOVERING: dict[tuple[int, int, int], threading.Lock] = {}


def _dumps(value: Any) -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        text = json.dumps(json_safe(value), separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def _line(kind: bytes, seq: int, body: bytes) -> bytes:
    return b"%s%d %08x %s\n" % (kind, seq, zlib.crc32(body), body)


@dataclass
class _Segment:
    path: Path
    fd: int
    size: int
    header: int
    first: int = 0
    last: int = 0
    pending: int = 0
    resources: dict[int, tuple[object, int]] = field(default_factory=dict)


class JournalFull(Exception):
    """The journal holds ``max_bytes`` already."""


class Journal:
    """One process's journal in ``directory`` (see the module doc).

    ``append_*`` must be called with :attr:`lock` held; each returns the entry's sequence
    number (0 when it could not be journaled), which :meth:`retire` takes back.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        meta: Mapping[str, object] | None = None,
        prepare_dir: Callable[[], object] | None = None,
    ) -> None:
        self.directory = Path(os.fspath(directory))
        self.max_bytes = max(1, int(max_bytes))
        self._segment_bytes = max(4096, min(SEGMENT_BYTES, self.max_bytes // 4))
        self._meta = dict(meta or {})
        self._prepare_dir = prepare_dir
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._token = secrets.token_hex(6)
        self._segments: list[_Segment] = []
        self._next_segment = 0
        self._seq = 0
        self._outstanding: set[int] = set()
        self._bytes = 0
        self._warned_at = -_WARN_INTERVAL
        self._resource_ids = 0
        self.unjournaled = 0

    # ------------------------------------------------------------------ writing

    def prepare(self) -> None:
        """Create the directory now (owner-only), so one that cannot be used shows at once.

        Raises ``OSError``, or ``ValueError`` for a directory that is not safe to use."""
        if self._prepare_dir is not None:
            self._prepare_dir()

    @property
    def free_bytes(self) -> int:
        """Bytes still allowed before ``max_bytes`` (in this process)."""
        return max(0, self.max_bytes - self._bytes) if self._pid == os.getpid() else 0

    @property
    def outstanding(self) -> int:
        """Entries appended and not yet retired (in this process)."""
        return len(self._outstanding) if self._pid == os.getpid() else 0

    def check_fork(self) -> None:
        """In a forked child, start a journal of the child's own (call before taking the lock)."""
        if self._pid != os.getpid():
            # A forked child: the parent's files and their locks are the parent's. Its inherited
            # descriptors are closed (that releases no lock of the parent's: lockf locks belong
            # to a process), and the child journals to files of its own.
            for segment in self._segments:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
            self.lock = threading.Lock()
            self._reset()

    def _segment_for(self, need: int) -> _Segment:
        current = self._segments[-1] if self._segments else None
        if current is not None and (
            current.size + need <= self._segment_bytes or current.first == 0
        ):
            return current
        if self._bytes + need > self.max_bytes:
            raise JournalFull
        return self._open_segment()

    def _open_segment(self) -> _Segment:
        if self._prepare_dir is not None:
            self._prepare_dir()
        name = f"journal-{self._pid}-{self._token}-{self._next_segment}.v{FORMAT_VERSION}"
        path = self.directory / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)
            if fcntl is not None:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            meta = dict(self._meta, pid=self._pid, created=time.time())
            header = _HEADER + _dumps(meta) + b"\n"
            _write_all(fd, header)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            raise
        _OWN_TOKENS[self._token] = self._pid
        self._next_segment += 1
        segment = _Segment(path, fd, len(header), len(header))
        self._segments.append(segment)
        self._bytes += len(header)
        return segment

    def _append(
        self,
        kind: bytes,
        body_of: Callable[[_Segment], bytes],
        *,
        sync: bool = False,
        warn: bool = True,
    ) -> int:
        """Write one entry: its sequence number, 0 (counted, warned about) when not written.

        ``sync`` waits for the entry to reach the disk (``fdatasync``) before returning."""
        try:
            segment = self._segment_for(0)
            body = body_of(segment)
            seq = self._seq + 1
            data = _line(kind, seq, body)
            if len(data) + segment.size > self._segment_bytes and segment.first:
                segment = self._segment_for(len(data))
                body = body_of(segment)  # a resource first seen in the new segment
                data = _line(kind, seq, body)
            if self._bytes + len(data) > self.max_bytes:
                raise JournalFull
            self._write(segment, data)
            if sync:
                self._sync(segment, len(data))
        except JournalFull:
            self._not_journaled("the journal is full (spool_max_bytes)", warn)
            return 0
        except OSError as exc:
            self._not_journaled(f"{type(exc).__name__}: {str(exc)[:200]}", warn)
            return 0
        self._seq = seq
        self._outstanding.add(seq)
        if not segment.first:
            segment.first = seq
        segment.last = seq
        segment.pending += 1
        return seq

    def _write(self, segment: _Segment, data: bytes) -> None:
        try:
            _write_all(segment.fd, data)
        except OSError:
            # A short write (a full disk) must not leave half a line for the next to join.
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, segment.size)
            raise
        segment.size += len(data)
        self._bytes += len(data)

    def _sync(self, segment: _Segment, written: int) -> None:
        """Flush the entry just written to the device; if that fails, take the entry back
        (a caller told 0 must not find it recovered later under a reused number)."""
        try:
            getattr(os, "fdatasync", os.fsync)(segment.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, segment.size - written)
            segment.size -= written
            self._bytes -= written
            raise

    def _not_journaled(self, why: str, warn: bool = True) -> None:
        self.unjournaled += 1
        now = time.monotonic()
        if warn and now - self._warned_at >= _WARN_INTERVAL:
            self._warned_at = now
            _log.warning(
                "Altertable journal in %s: a record could not be journaled (%s); it is still "
                "queued, but lost if this process is killed before it is delivered "
                "(%d so far)",
                self.directory,
                why,
                self.unjournaled,
            )

    def _resource_id(self, segment: _Segment, resource: object, attrs: Attrs) -> int:
        """The resource's id in ``segment``, writing its line first when the segment has not
        seen it. Registered only once the line is on disk: if the write fails (a full disk),
        the next entry writes it again instead of naming a resource the file does not hold."""
        known = segment.resources.get(id(resource))
        if known is not None and known[0] is resource:
            return known[1]
        self._resource_ids += 1
        rid = self._resource_ids
        self._write(segment, _line(b"R", rid, _dumps(dict(attrs))))
        segment.resources[id(resource)] = (resource, rid)
        return rid

    def append_span(
        self,
        span: Any,
        attrs: Attrs,
        resource_attrs: Attrs,
        *,
        kind: str,
        is_record: bool,
        events: Sequence[tuple[str, Attrs, int]],
    ) -> int:
        """Journal a span (and its tagged events) as the neutral records recovery maps."""
        ctx = span.context
        entry = [
            span.name,
            attrs,
            span.end_time or span.start_time or time.time_ns(),
            ctx.trace_id if ctx is not None else 0,
            ctx.span_id if ctx is not None else 0,
            kind,
            is_record,
            events,
        ]
        return self._append_with_resource(b"S", span.resource, resource_attrs, entry)

    def append_log(
        self, record: Any, resource: object, resource_attrs: Attrs, attrs: Attrs
    ) -> int:
        """Journal a log record (its attributes, name, times, ids and dict body)."""
        name = getattr(record, "event_name", None) or attrs.get("event.name")
        body = record.body if isinstance(record.body, Mapping) else None
        entry = [
            name if isinstance(name, str) else None,
            attrs,
            record.timestamp or record.observed_timestamp or time.time_ns(),
            record.trace_id or 0,
            record.span_id or 0,
            body,
        ]
        return self._append_with_resource(b"L", resource, resource_attrs, entry)

    def _append_with_resource(
        self, kind: bytes, resource: object, resource_attrs: Attrs, entry: list[Any]
    ) -> int:
        payload = _dumps(entry)

        def body_of(segment: _Segment) -> bytes:
            rid = self._resource_id(segment, resource, resource_attrs)
            return b"%d %s" % (rid, payload)

        return self._append(kind, body_of)

    def append_calls(
        self,
        calls: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        sync: bool = False,
        warn: bool = True,
    ) -> int:
        """Journal already-mapped calls (``{endpoint: [payload, ...]}``) as one entry.

        When this returns a sequence number (not 0) the calls are on disk (they survive this
        process; with ``sync`` the entry is also flushed to the device, so it survives the
        machine); hand it to :meth:`retire` once they are delivered or spooled. ``warn=False``
        is for a caller that says itself what a 0 means (the bridge answers 503).
        """
        payload = _dumps({k: list(v) for k, v in calls.items() if v})
        return self._append(b"C", lambda _segment: payload, sync=sync, warn=warn)

    # ------------------------------------------------------------------ retiring

    def retire(self, seqs: Sequence[int]) -> None:
        """These entries are finished with (delivered, dropped and counted, or spooled)."""
        if self._pid != os.getpid():  # before the lock: a parent's thread may have held it
            return
        with self.lock:
            if not self._segments:
                return
            done = self._mark_retired(seqs)
            if not done:
                return
            try:
                for index in sorted(done):
                    segment = self._segments[index]
                    if segment.pending <= 0:
                        if segment is not self._segments[-1]:
                            continue  # dropped below
                        if segment.size > segment.header:  # back to the header alone
                            os.ftruncate(segment.fd, segment.header)
                            self._bytes -= segment.size - segment.header
                            segment.size = segment.header
                            segment.first = segment.last = segment.pending = 0
                            segment.resources.clear()
                    else:
                        line = b"D" + b",".join(b"%d" % seq for seq in done[index]) + b"\n"
                        self._write(segment, line)
            except OSError as exc:
                self._not_journaled(f"cannot record a retirement: {str(exc)[:200]}")
            current = self._segments[-1]
            for segment in [s for s in self._segments[:-1] if s.pending <= 0]:
                self._segments.remove(segment)
                self._drop_segment(segment)
            assert self._segments[-1] is current

    def _mark_retired(self, seqs: Sequence[int]) -> dict[int, list[int]]:
        """Forget ``seqs``; the retired ones by the index of the segment holding them."""
        done: dict[int, list[int]] = {}
        for seq in seqs:
            if seq not in self._outstanding:
                continue
            self._outstanding.discard(seq)
            for index in range(len(self._segments) - 1, -1, -1):
                segment = self._segments[index]
                if segment.first and segment.first <= seq <= segment.last:
                    segment.pending -= 1
                    done.setdefault(index, []).append(seq)
                    break
        return done

    def _drop_segment(self, segment: _Segment) -> None:
        self._bytes -= segment.size
        with contextlib.suppress(OSError):
            os.unlink(segment.path)
        with contextlib.suppress(OSError):
            os.close(segment.fd)  # after the unlink: the lock guards the file until gone

    def close(self) -> None:
        """Remove the files when nothing is outstanding, else leave them for recovery."""
        if self._pid != os.getpid():
            return
        with self.lock:
            for segment in self._segments:
                if segment.pending > 0:
                    with contextlib.suppress(OSError):
                        os.close(segment.fd)
                else:
                    self._drop_segment(segment)
            _OWN_TOKENS.pop(self._token, None)
            self._segments = []
            self._outstanding = set()

    def unretired(self) -> Iterator[Recovered]:
        """What this process's own journal still holds (a shutdown salvages it)."""
        if self._pid != os.getpid():
            return iter(())
        with self.lock:
            if not self._outstanding:
                return iter(())
            paths = [s.path for s in self._segments]
            outstanding = set(self._outstanding)
        entries: dict[int, Any] = {}
        resources: dict[int, Attrs] = {}
        for path in paths:
            with contextlib.suppress(OSError):
                _parse(path.read_bytes(), entries, resources, set())
        rec = Recovered(self._pid, len(paths), _meta_scrub(self._meta))
        rec.add({seq: e for seq, e in entries.items() if seq in outstanding}, resources, set())
        rec.seqs = sorted(seq for seq in entries if seq in outstanding)
        return iter((rec,))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _meta_scrub(meta: Mapping[str, object]) -> bool:
    return bool(meta.get("before_send"))


# ---------------------------------------------------------------------- recovery


@dataclass
class Recovered:
    """What one dead process's journal held, as neutral records and already-mapped calls."""

    pid: int
    files: int
    before_send: bool
    """The writing exporter had a ``before_send`` hook: only an exporter with one may send it."""
    records: list[Record] = field(default_factory=list)
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    entries: int = 0
    seqs: list[int] = field(default_factory=list)
    """The entries' sequence numbers (for a process salvaging its own journal)."""

    def add(
        self, entries: Mapping[int, Any], resources: Mapping[int, Attrs], retired: set[int]
    ) -> None:
        """Turn the entries not ``retired`` into records and calls, in journal order."""
        introduced: set[int] = set()
        for seq in sorted(entries):
            kind, value = entries[seq]
            if seq in retired:
                continue
            self.entries += 1
            if kind == "C":
                for endpoint, items in value.items():
                    self.calls.setdefault(endpoint, []).extend(items)
                continue
            rid, entry = value
            res = resources.get(rid, EMPTY)
            if rid not in introduced:
                introduced.add(rid)
                self.records.append(Record.resource_only(res, entry[2]))
            if kind == "S":
                name, attrs, end_ns, trace_id, span_id, span_kind, is_record, events = entry
                for ev_name, ev_attrs, ev_time in events:
                    self.records.append(
                        Record(ev_name, ev_attrs, res, ev_time, trace_id, span_id, attrs, span_kind)
                    )
                if is_record:
                    self.records.append(
                        Record(name, attrs, res, end_ns, trace_id, span_id, EMPTY, span_kind)
                    )
            else:
                name, attrs, time_ns, trace_id, span_id, body = entry
                self.records.append(
                    Record(name, attrs, res, time_ns, trace_id, span_id, body=body)
                )


def processes_named(recovered: Sequence[Recovered]) -> str:
    """``process 12`` or ``processes 12, 13``, cut to a log line's bound."""
    plural = "es" if len(recovered) > 1 else ""
    return f"process{plural} {clip(', '.join(str(r.pid) for r in recovered), LIMIT)}"


def _parse(
    data: bytes, entries: dict[int, Any], resources: dict[int, Attrs], retired: set[int]
) -> None:
    """Read one file's entries, resources and retired entries into the collections.

    Lines that do not check out (torn by a kill mid-append, damaged) are skipped.
    """
    lines = data.split(b"\n")
    if not lines[0].startswith(_HEADER):
        return
    for line in lines[1:]:
        if not line:
            continue
        kind = line[:1]
        try:
            if kind == b"D":
                retired.update(int(seq) for seq in line[1:].split(b","))
                continue
            head, crc, body = line.split(b" ", 2)
            if int(crc, 16) != zlib.crc32(body):
                continue
            seq = int(head[1:])
            if kind == b"R":
                resources[seq] = json.loads(body)
            elif kind in (b"S", b"L"):
                rid_text, _, payload = body.partition(b" ")
                entries[seq] = (kind.decode(), (int(rid_text), json.loads(payload)))
            elif kind == b"C":
                entries[seq] = ("C", json.loads(body))
        except (ValueError, UnicodeDecodeError):
            continue


@dataclass
class Scan:
    """What a recovery pass left alone, and why (``replay`` reports it)."""

    recovered: int = 0
    """Dead processes' journals recovered (handed to ``keep``)."""
    alive: int = 0
    """Journals of processes still running (or of another recoverer at work)."""
    other_version: int = 0
    """Files of another format version of the package."""
    needs_before_send: int = 0
    """Journals written by an exporter with ``before_send``: left for an exporter with one."""
    not_kept: int = 0
    """Journals whose records ``keep`` could not take (a full or failing spool)."""
    deferred: int = 0
    """Journals not looked at: the caller's deadline came first (a later pass takes them)."""

    @property
    def remaining(self) -> int:
        return (
            self.alive + self.other_version + self.needs_before_send + self.not_kept + self.deferred
        )


#: Dead journals recovered together (one ``keep`` call: few spool parcels, few requests).
RECOVER_BATCH = 64


def recover_directory(
    directory: str | os.PathLike[str],
    keep: Callable[[list[Recovered]], bool],
    *,
    may_send_scrubbed: bool,
    deadline: float | None = None,
) -> Scan:
    """Hand dead processes' journals to ``keep``, a batch at a time; delete them once ``keep``
    returns True (a crash in between sends them again: at least once, never lost).

    With a ``deadline`` (``time.monotonic()``; an export's), no journal is taken once it has
    passed: the batch taken so far is kept, the rest counted as ``deferred`` and left on disk.

    Never raises for disk trouble: a file that cannot be read or locked is left for later.
    While another thread of this process recovers the same directory this returns an empty
    :class:`Scan` at once: the journals are that thread's to take (a POSIX lock would not keep
    the two apart, and would let both send the same journal).
    """
    base = Path(os.fspath(directory))
    try:
        st = os.stat(base)
    except OSError:
        return Scan()
    # setdefault is atomic: two threads get the same lock, with no lock around the dict.
    lock = _RECOVERING.setdefault((os.getpid(), st.st_dev, st.st_ino), threading.Lock())
    if not lock.acquire(blocking=False):
        return Scan()
    try:
        return _recover_locked(base, keep, may_send_scrubbed, deadline)
    finally:
        lock.release()


def _recover_locked(
    base: Path,
    keep: Callable[[list[Recovered]], bool],
    may_send_scrubbed: bool,
    deadline: float | None,
) -> Scan:
    """:func:`recover_directory`, with this process's recovery lock on ``base`` held."""
    scan = Scan()
    try:
        names = os.listdir(base)
    except OSError:
        return scan
    groups: dict[tuple[int, str], list[tuple[int, str]]] = {}
    for name in names:
        m = _NAME_RE.match(name)
        if m is None:
            continue
        if int(m.group(4)) != FORMAT_VERSION:
            scan.other_version += 1
            continue
        groups.setdefault((int(m.group(1)), m.group(2)), []).append((int(m.group(3)), name))
    me = os.getpid()
    batch: list[tuple[Recovered, list[tuple[Path, int]]]] = []
    try:
        others = [
            (key, files) for key, files in sorted(groups.items()) if _OWN_TOKENS.get(key[1]) != me
        ]
        for index, ((pid, _token), files) in enumerate(others):
            if deadline is not None and time.monotonic() >= deadline:
                scan.deferred += len(others) - index
                break
            names_in_order = [name for _, name in sorted(files)]
            found = _take_one(base, pid, names_in_order, may_send_scrubbed, scan)
            if found is not None:
                batch.append(found)
            if len(batch) >= RECOVER_BATCH:
                _finish(batch, keep, scan)
        _finish(batch, keep, scan)
    finally:
        for _rec, held in batch:
            _release(held)
    return scan


def _finish(
    batch: list[tuple[Recovered, list[tuple[Path, int]]]],
    keep: Callable[[list[Recovered]], bool],
    scan: Scan,
) -> None:
    """Keep a batch of taken journals, then delete them; release their locks either way."""
    try:
        wanted = [rec for rec, _held in batch if rec.entries]
        if wanted and not keep(wanted):
            scan.not_kept += len(wanted)
            return
        scan.recovered += len(wanted)
        for _rec, held in batch:
            for path, _fd in held:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # before the lock goes: a waiting recoverer sees it gone
    finally:
        for _rec, held in batch:
            _release(held)
        batch.clear()


def _release(held: list[tuple[Path, int]]) -> None:
    for _path, fd in held:
        with contextlib.suppress(OSError):
            os.close(fd)
    held.clear()


def _lock_all(base: Path, names: list[str], pid: int, held: list[tuple[Path, int]]) -> bool:
    """Open and lock every file of one journal into ``held``; False if its owner is alive."""
    for name in names:
        path = base / name
        try:
            fd = os.open(path, os.O_RDWR | _O_NOFOLLOW)
        except FileNotFoundError:
            continue  # recovered by someone else, or retired by its owner
        except OSError:
            return False
        held.append((path, fd))
        st = os.fstat(fd)
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            return False  # not ours to take
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # its process (or another recoverer) holds it
        elif _pid_alive(pid):  # pragma: no cover - Windows
            return False
        try:
            same = os.stat(path).st_ino == st.st_ino
        except FileNotFoundError:
            same = False  # finished by the recoverer that held the lock before us
        if not same:
            held.pop()
            os.close(fd)
    return True


def _take_one(
    base: Path,
    pid: int,
    names: list[str],
    may_send_scrubbed: bool,
    scan: Scan,
) -> tuple[Recovered, list[tuple[Path, int]]] | None:
    """Lock and read one dead journal; None when it is alive, not ours to send, or gone."""
    held: list[tuple[Path, int]] = []
    try:
        if not _lock_all(base, names, pid, held):
            scan.alive += 1
        elif held:
            entries: dict[int, Any] = {}
            resources: dict[int, Attrs] = {}
            retired: set[int] = set()
            meta: dict[str, Any] = {}
            for _path, fd in held:
                data = _read_fd(fd)
                meta = meta or _header_meta(data)
                _parse(data, entries, resources, retired)
            recovered = Recovered(pid, len(held), _meta_scrub(meta))
            recovered.add(entries, resources, retired)
            if recovered.entries and recovered.before_send and not may_send_scrubbed:
                scan.needs_before_send += 1
            else:
                taken, held = held, []
                return recovered, taken
    except OSError as exc:
        _log.warning("cannot recover Altertable journal of process %d: %s", pid, str(exc)[:200])
    finally:
        _release(held)
    return None


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _header_meta(data: bytes) -> dict[str, Any]:
    first = data.split(b"\n", 1)[0]
    if not first.startswith(_HEADER):
        return {}
    try:
        meta = json.loads(first[len(_HEADER) :])
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}
