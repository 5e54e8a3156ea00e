"""Crash-safe disk spool for calls that could not be delivered.

A *parcel* is what one export could not deliver: ``{endpoint name: [payload, ...]}`` plus a
``reason``. Each parcel is one file, written to a hidden temporary name, fsynced, then renamed
into place, so a crash leaves either the whole parcel or nothing. File names sort oldest first
and carry the item count and file size, so ordering, size accounting and eviction never need to
open a file. Every file starts with a header line ``ALTSPOOL1 <sha256-hex> <length>`` that is
verified before a parcel is handed out: a torn or corrupted file is deleted, never replayed.

Processes (and ``Spool`` objects) sharing a directory coordinate through atomic renames only:
claiming a parcel renames it to ``<name>.claimed-<pid>-<unix-time>-<token>``; whoever loses the
rename race moves on to the next file. A claim whose process is gone, or that is older than
``stale_claim_age``, is renamed back and becomes claimable again. No file descriptor outlives a
call and there is no module state, so forking is harmless.

This module knows nothing of OpenTelemetry or HTTP; it stores JSON-ready dicts.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Spool", "SpoolClaim", "SpoolDirectoryError"]

_log = logging.getLogger(__name__)

_MAGIC = b"ALTSPOOL1"
_HEADER_MAX = 128  # the header line is ~85 bytes; anything longer is not ours
_NAME_RE = re.compile(r"^(\d{20})-(\d+)-([0-9a-f]{12})-n(\d+)-s(\d+)\.json$")
_CLAIMED_RE = re.compile(
    r"^(?P<base>\d{20}-\d+-[0-9a-f]{12}-n\d+-s\d+\.json)"
    r"\.claimed-(?P<pid>\d+)-(?P<at>\d+)-(?P<token>[0-9a-f]{8})$"
)
_STALE_TMP_AGE = 3600.0  # a temp file this old was left by a writer that crashed
_IO_WARNING_INTERVAL = 60.0  # repeated disk errors are logged once a minute at most
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class SpoolDirectoryError(ValueError):
    """The spool directory is unsafe to use (not ours, or writable by others)."""


class _Damaged(Exception):
    """A spool file that must not be replayed."""


def _name_counts(name: str) -> tuple[int, int]:
    """(items, bytes) recorded in a parcel file name, (0, 0) if it is not one."""
    m = _NAME_RE.match(name)
    # Every caller has matched the name already: the (0, 0) fallback is never taken.
    return (int(m.group(4)), int(m.group(5))) if m else (0, 0)  # pragma: no mutate


def _pid_alive(pid: int) -> bool:
    """Whether a process may still hold a claim; unknown counts as alive (the age rule remains)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name != "posix":
        # os.kill(pid, 0) would terminate the process on Windows.
        return True  # pragma: no mutate
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. EPERM: it exists
    return True


def _encode(calls: dict[str, list[dict[str, Any]]], reason: str, created_ns: int) -> bytes:
    text = json.dumps(
        {"v": 1, "reason": reason, "created_ns": created_ns, "calls": calls},
        separators=(",", ":"),
        # ASCII round-trips every str, lone surrogates included.
        ensure_ascii=True,
    )
    body = text.encode("ascii")
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    header = b"%s %s %d\n" % (_MAGIC, digest, len(body))
    return header + body


def _decode(data: bytes) -> tuple[dict[str, list[dict[str, Any]]], str, float]:
    newline = data.find(b"\n", 0, _HEADER_MAX)
    if newline < 0:
        raise _Damaged("no header")
    parts = data[:newline].split(b" ")
    if len(parts) != 3 or parts[0] != _MAGIC or not parts[2].isdigit() or len(parts[2]) > 20:
        raise _Damaged("bad header")
    body = data[newline + 1 :]
    if int(parts[2]) != len(body):
        raise _Damaged(f"length {len(body)} instead of {int(parts[2])}: torn write")
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    if digest != parts[1]:
        raise _Damaged("checksum mismatch")
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise _Damaged(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Damaged("unexpected content")
    calls, reason, created = obj.get("calls"), obj.get("reason"), obj.get("created_ns")
    if (
        not isinstance(calls, dict)
        or not isinstance(reason, str)
        or not isinstance(created, int)
        or isinstance(created, bool)
        or not all(
            isinstance(key, str) and isinstance(items, list)
            and all(isinstance(item, dict) for item in items)
            for key, items in calls.items()
        )
    ):
        raise _Damaged("unexpected content")
    return calls, reason, created / 1e9


def _read(path: Path) -> bytes:
    mode = os.O_RDONLY | _O_BINARY  # pragma: no mutate
    fd = os.open(path, mode | _O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


class SpoolClaim:
    """One parcel taken from the spool; exactly one of ``done`` or ``release`` should follow."""

    __slots__ = ("_claimed", "_finished", "_original", "calls", "created", "items", "reason")

    def __init__(
        self,
        original: Path,
        claimed: Path,
        calls: dict[str, list[dict[str, Any]]],
        reason: str,
        created: float,
    ) -> None:
        self._original = original
        self._claimed = claimed
        self._finished = False
        self.calls = calls
        self.reason = reason
        self.created = created
        self.items = sum(len(items) for items in calls.values())

    def __repr__(self) -> str:
        return f"SpoolClaim({self._original.name!r}, reason={self.reason!r}, items={self.items})"

    def done(self) -> None:
        """Delivered (or dropped for good): delete the parcel."""
        if self._finished:
            return
        self._finished = True
        try:
            os.unlink(self._claimed)
        except FileNotFoundError:
            # Our claim was judged stale and renamed back: remove it unless someone re-claimed
            # it meanwhile, so it is not sent a second time.
            with contextlib.suppress(OSError):
                os.unlink(self._original)
        except OSError as exc:
            _log.warning("could not delete delivered spool file %s: %s", self._claimed, exc)

    def release(self) -> None:
        """Not delivered this time: make it claimable again, keeping its place in the order."""
        if self._finished:
            return
        self._finished = True
        try:
            os.rename(self._claimed, self._original)
        except FileNotFoundError:
            pass  # already recovered as a stale claim
        except OSError as exc:
            _log.warning("could not return spool file %s to the spool: %s", self._claimed, exc)


class Spool:
    """A directory of parcels, safe against crashes, other threads and other processes.

    ``put`` and ``claim`` never raise for disk trouble (they log a warning and return a safe
    result); the only error they, and the constructor, raise is ``SpoolDirectoryError`` (a
    ``ValueError``) when the directory exists but is not a private directory of this user.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = 64 * 1024 * 1024,
        auth_max_age: float = 24 * 3600.0,
        stale_claim_age: float = 600.0,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"spool max_bytes must be positive, not {max_bytes}")
        # Absolute now, so a later chdir does not move the spool.
        self._dir = Path(os.fspath(directory)).expanduser().absolute()
        self.max_bytes = int(max_bytes)
        self.auth_max_age = float(auth_max_age)
        self.stale_claim_age = float(stale_claim_age)
        self._lock = threading.Lock()
        self._ready = False
        self._last_ns = 0  # pragma: no mutate
        self._io_warned_at = -_IO_WARNING_INTERVAL
        self._io_suppressed = 0  # pragma: no mutate
        self.lost: collections.Counter[str] = collections.Counter()
        """Events this spool dropped after accepting them, by reason (for the exporter's stats)."""
        # Refuse an unsafe existing directory now; a missing one is created on first put.
        with contextlib.suppress(OSError):
            self._inspect()

    @property
    def directory(self) -> Path:
        return self._dir

    def __repr__(self) -> str:
        return f"Spool({str(self._dir)!r}, max_bytes={self.max_bytes})"

    # -- public API -------------------------------------------------------------------------

    def put(
        self, calls: Mapping[str, Sequence[Mapping[str, Any]]], reason: str = "retryable"
    ) -> int:
        """Persist one parcel; return the number of items written (0 if none could be)."""
        try:
            parcel = {key: [dict(item) for item in batch] for key, batch in calls.items() if batch}
        except (TypeError, ValueError) as exc:
            _log.warning("cannot spool undeliverable calls: %s", exc)
            return 0
        items = sum(len(batch) for batch in parcel.values())
        if not items:
            return 0
        with self._lock:
            created_ns = self._next_ns()
            try:
                data = _encode(parcel, reason, created_ns)
            except (TypeError, ValueError) as exc:
                _log.warning("cannot spool %d items, not JSON-ready (%s); lost", items, exc)
                return 0
            if len(data) > self.max_bytes:
                _log.warning(
                    "cannot spool %d items: %d bytes exceed the spool limit of %d bytes; "
                    "%d events lost",
                    items, len(data), self.max_bytes, items,
                )
                return 0
            name = (
                f"{created_ns:020d}-{os.getpid()}-{secrets.token_hex(6)}"
                f"-n{items}-s{len(data)}.json"
            )
            try:
                try:
                    self._ensure_dir()
                    self._write(name, data)
                except FileNotFoundError:
                    # the directory was removed under us: recreate it once
                    self._ready = False
                    self._ensure_dir()
                    self._write(name, data)
            except OSError as exc:
                self._warn_io(
                    "cannot write to spool %s (%s); %d events lost", self._dir, exc, items
                )
                return 0
            try:
                self._enforce_limit(keep=name)
            except OSError as exc:
                self._warn_io("cannot check the size of spool %s: %s", self._dir, exc)
            return items

    def claim(self) -> SpoolClaim | None:
        """Take the oldest valid parcel for this caller alone, or return None if there is none."""
        with self._lock:
            try:
                if not self._ensure_dir(create=False):
                    return None
                names = os.listdir(self._dir)
            except FileNotFoundError:
                # removed under us: nothing to claim, recreated on put
                self._ready = False
                return None
            except OSError as exc:
                self._warn_io("cannot read spool %s: %s", self._dir, exc)
                return None
            expired = [0, 0]
            try:
                for name in self._housekeep(names):
                    claim = self._try_claim(name, expired)
                    if claim is not None:
                        return claim
                return None
            finally:
                if expired[0]:
                    self.lost["spool-expired"] += expired[1]
                    _log.warning(
                        "dropped %d spooled file(s) refused for authentication and older than "
                        "%g s; %d events lost",
                        expired[0], self.auth_max_age, expired[1],
                    )

    def pending(self) -> tuple[int, int]:
        """(files, bytes) on disk not yet delivered, claimed ones included."""
        with self._lock:
            try:
                names = os.listdir(self._dir)
            except OSError:
                return (0, 0)
        files = size = 0
        for name in names:
            m = _CLAIMED_RE.match(name)
            base = m.group("base") if m else name
            if _NAME_RE.match(base):
                files += 1
                size += _name_counts(base)[1]
        return (files, size)

    # -- internals --------------------------------------------------------------------------

    def _next_ns(self) -> int:
        """Strictly increasing within this object, so its own parcels keep their order."""
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        return now

    def _inspect(self) -> bool:
        """True if the directory exists and is safe, False if it is missing; raise if unsafe."""
        try:
            st = os.stat(self._dir)
        except FileNotFoundError:
            return False
        where = str(self._dir)
        if not stat.S_ISDIR(st.st_mode):
            raise SpoolDirectoryError(
                f"spool directory {where} exists but is not a directory; "
                f"set spool_dir to a directory"
            )
        geteuid = getattr(os, "geteuid", None)  # pragma: no mutate
        if geteuid is not None:  # POSIX: the owner and mode checks are meaningful
            uid = geteuid()
            if st.st_uid != uid:
                raise SpoolDirectoryError(
                    f"spool directory {where} belongs to uid {st.st_uid}, not to this process's "
                    f"user (uid {uid}): refusing to use it; set spool_dir to a directory owned "
                    f"by this user"
                )
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise SpoolDirectoryError(
                    f"spool directory {where} is writable by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}): refusing to use it; run "
                    f"`chmod 700 {where}` or set spool_dir to a private directory"
                )
        return True

    def _ensure_dir(self, create: bool = True) -> bool:
        """Make sure the directory exists (0700, parents included) and is safe to use."""
        if self._ready:
            return True
        if not self._inspect():
            if not create:
                return False  # pragma: no mutate
            self._dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self._dir, 0o700)  # pragma: no mutate
            except FileExistsError:
                pass  # created concurrently: judged below like any existing directory
            else:
                os.chmod(self._dir, 0o700)  # mkdir's mode is filtered by the umask
            # Removed again between mkdir and here: put() retries once on FileNotFoundError, and
            # the retry finds the directory gone or present like any first call.
            if not self._inspect():  # pragma: no mutate
                raise FileNotFoundError(  # pragma: no mutate
                    f"spool directory {self._dir} vanished"  # pragma: no mutate
                )
        self._ready = True
        return True

    def _write(self, name: str, data: bytes) -> None:
        tmp = self._dir / f".{name}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        # Belt and braces: _O_BINARY is 0 on POSIX, O_CREAT | O_EXCL never follows a link
        # anyway, and fchmod below sets the mode 0600 exactly.
        flags |= _O_BINARY | _O_NOFOLLOW  # pragma: no mutate
        fd = os.open(tmp, flags, 0o600)  # pragma: no mutate
        try:
            with os.fdopen(fd, "wb") as fh:
                if hasattr(os, "fchmod"):
                    os.fchmod(fh.fileno(), 0o600)  # exact, whatever the umask
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._dir / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        """Persist the rename itself; not possible (nor needed) everywhere."""
        try:
            fd = os.open(self._dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _enforce_limit(self, keep: str) -> None:
        """Delete the oldest unclaimed parcels until the spool fits ``max_bytes``."""
        total = 0
        unclaimed: list[str] = []
        for name in os.listdir(self._dir):
            m = _CLAIMED_RE.match(name)
            if m:
                total += _name_counts(m.group("base"))[1]
            elif _NAME_RE.match(name):
                total += _name_counts(name)[1]
                unclaimed.append(name)
        if total <= self.max_bytes:  # pragma: no mutate
            return
        lost_files = lost_items = 0
        for name in sorted(unclaimed):
            if total <= self.max_bytes:
                break
            if name == keep:
                continue  # fits on its own; only claimed files (in flight) can still be over
            items, size = _name_counts(name)
            try:
                os.unlink(self._dir / name)
            except FileNotFoundError:
                total -= size  # taken by another process meanwhile
                continue
            except OSError as exc:
                self._warn_io("cannot evict %s from spool: %s", name, exc)
                break
            total -= size
            lost_files += 1
            lost_items += items
        if lost_files:
            self.lost["spool-full"] += lost_items
            _log.warning(
                "spool %s exceeded its limit of %d bytes: dropped the %d oldest file(s); "
                "%d events lost",
                self._dir, self.max_bytes, lost_files, lost_items,
            )

    def _housekeep(self, names: list[str]) -> list[str]:
        """Recover stale claims, remove stale temp files; return unclaimed names, oldest first."""
        now = time.time()
        unclaimed: list[str] = []
        recovered = 0
        for name in names:
            if _NAME_RE.match(name):
                unclaimed.append(name)
                continue
            m = _CLAIMED_RE.match(name)
            if m:
                pid, at = int(m.group("pid")), int(m.group("at"))
                if now - at <= self.stale_claim_age and _pid_alive(pid):
                    continue
                try:
                    os.rename(self._dir / name, self._dir / m.group("base"))
                except FileNotFoundError:
                    continue  # finished or recovered by someone else
                except OSError as exc:
                    self._warn_io("cannot recover stale spool claim %s: %s", name, exc)
                    continue
                unclaimed.append(m.group("base"))
                recovered += 1
            elif name.startswith(".") and name.endswith(".tmp"):
                path = self._dir / name
                try:
                    mtime = os.stat(path, follow_symlinks=False).st_mtime
                    if now - mtime > _STALE_TMP_AGE:
                        os.unlink(path)
                except OSError:
                    pass  # finished (renamed) meanwhile, or not ours to remove
        if recovered:
            _log.info("recovered %d spooled file(s) left claimed by a stopped process", recovered)
        unclaimed.sort()
        return unclaimed

    def _try_claim(self, name: str, expired: list[int]) -> SpoolClaim | None:  # noqa: PLR0911  # each way a claim can fail returns where it is seen
        """Claim ``name`` by renaming it; None if someone else won, or it was unusable."""
        original = self._dir / name
        claimed = self._dir / (
            f"{name}.claimed-{os.getpid()}-{int(time.time())}-{secrets.token_hex(4)}"
        )
        try:
            os.rename(original, claimed)
        except FileNotFoundError:
            return None  # another claimer got it first
        except OSError as exc:
            self._warn_io("cannot claim spool file %s: %s", original, exc)
            return None
        items = _name_counts(name)[0]
        try:
            calls, reason, created = _decode(_read(claimed))
        except FileNotFoundError:
            return None  # judged stale and taken back meanwhile
        except OSError as exc:
            self._warn_io("cannot read spool file %s: %s", claimed, exc)
            with contextlib.suppress(OSError):
                os.rename(claimed, original)
            return None
        except _Damaged as exc:
            self.lost["spool-damaged"] += items
            _log.warning(
                "deleted damaged spool file %s (%s); %d events lost", original, exc, items
            )
            with contextlib.suppress(OSError):
                os.unlink(claimed)
            return None
        if reason == "auth" and time.time() - created > self.auth_max_age:
            with contextlib.suppress(OSError):
                os.unlink(claimed)
            expired[0] += 1
            expired[1] += items
            return None
        return SpoolClaim(original, claimed, calls, reason, created)

    def _warn_io(self, msg: str, *args: object) -> None:
        """Log a disk problem once a minute at most: a full disk must not flood the logs."""
        now = time.monotonic()
        if now - self._io_warned_at < _IO_WARNING_INTERVAL:
            self._io_suppressed += 1
            _log.debug(msg, *args)
            return
        if self._io_suppressed:
            msg += " (%d similar warnings suppressed)"
            args = (*args, self._io_suppressed)
        self._io_warned_at = now
        self._io_suppressed = 0
        _log.warning(msg, *args)
