"""What the bridge acknowledged: kept in its journal until Altertable has each call.

The bridge answers 200 only for calls it can keep. :meth:`Acknowledged.accept` maps a
request's records (``before_send`` applied), appends the calls to the bridge's journal as one
entry, flushed to the device, and only then lets the bridge answer; a journal that cannot take
them (full: ``spool_max_bytes``, or a failing disk) makes the bridge answer 503 /
UNAVAILABLE, and nothing already kept is ever evicted to make room.

A bounded pool of delivery threads sends the entries with the exporter's own transport
(batching, retries per its policy within each attempt's ``timeout``, 413 split, 400 bisect).
No sender waits on it, so an outage is waited out for as long as it lasts: after an attempt
that leaves calls owed, every thread pauses (the policy's backoff, growing with each failed
attempt) and the entry is tried again, first. An entry leaves the journal only once each of
its calls is accepted or refused for good; a partly delivered entry is journaled again as what
it still owes. Acknowledged calls never go to the spool, whose bound drops the oldest files.

A keeper thread recovers what dead processes left in the directory (a bridge killed after
acknowledging, the processors of an exporter sharing it) into this journal (never into the
spool), at start and every :data:`RECOVER_INTERVAL` seconds; what does not fit stays on disk
for later. The live journal is never taken for a dead one: its files carry a POSIX lock, and
two bridges on one directory each deliver only their own journal and what they recovered
under that lock. The keeper also re-sends spool files it finds (left by a bridge run without
its journal, or by an exporter).

:meth:`Acknowledged.stop` takes no more entries and lets the delivery threads end their
attempt; whatever is not delivered stays in the journal for the next bridge on the directory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._answers import CONFIG_ERRORS
from .._backlog import RECOVERED_PER_PARCEL, parcels, recovered_calls
from .._core import ExporterCore
from .._journal import Journal, Recovered, processes_named, recover_directory
from .._mapping import Calls

_logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DELIVERY_THREADS", "RECOVER_INTERVAL", "Acknowledged"]

#: Threads delivering acknowledged calls (each sends one journal entry at a time).
DEFAULT_DELIVERY_THREADS = 4
#: Seconds between two looks for dead processes' journals and spool files.
RECOVER_INTERVAL = 10.0
#: The shortest pause after Altertable refused the key or the environment (a setting to fix).
SETTING_ERROR_PAUSE = 30.0
#: Seconds one attempt at an entry may take at least (retries included): no sender waits on
#: it, and an attempt cut short re-sends the batch under way when it is tried again.
ATTEMPT_TIMEOUT = 60.0
#: Failed attempts after which the pause stops growing.
_MAX_BACKOFF_STEP = 16
_WARN_INTERVAL = 60.0

Payloads = dict[str, list[Any]]


@dataclass
class _Entry:
    seq: int
    calls: Payloads


class Acknowledged:
    """The bridge's journal and the threads that empty it (see the module doc)."""

    def __init__(
        self,
        core: ExporterCore,
        journal: Journal,
        *,
        threads: int = DEFAULT_DELIVERY_THREADS,
        sync: bool = True,
    ) -> None:
        self._core = core
        self.journal = journal
        self._sync = sync
        self._queue: deque[_Entry] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._failures = 0
        self._resume_at = 0.0
        self._busy = 0
        self._full_warned_at = -_WARN_INTERVAL
        self._recover_warned_at = -_WARN_INTERVAL
        self.refused_full = 0
        """Requests refused because the journal could not take their calls."""
        self._threads = [
            threading.Thread(target=self._work, name=f"altertable-bridge-deliver-{n}", daemon=True)
            for n in range(max(1, threads))
        ]
        self._keeper = threading.Thread(
            target=self._keep_up, name="altertable-bridge-recover", daemon=True
        )
        self._wake_keeper = threading.Event()
        self._recover()
        for thread in (*self._threads, self._keeper):
            thread.start()

    # ------------------------------------------------------------------ accepting

    def accept(self, count: int, build: Callable[[], Calls]) -> str | None:
        """Map and journal the calls of ``count`` records: ``None`` once they are on disk (or
        there were none), else why they were not kept (``journal-full``, ``shutdown``...)."""
        if self._stopping:
            return "shutdown"
        calls = self._core.build_calls(count, build)
        if isinstance(calls, str):
            return calls
        if not calls:
            return None
        with self.journal.lock:
            seq = self.journal.append_calls(calls, sync=self._sync, warn=False)
        if not seq:
            self._journal_full()
            return "journal-full"
        self._enqueue([_Entry(seq, calls)])
        return None

    def _journal_full(self) -> None:
        with self._cond:
            self.refused_full += 1
            now = time.monotonic()
            if now - self._full_warned_at < _WARN_INTERVAL:
                return
            self._full_warned_at = now
            refused, owed = self.refused_full, len(self._queue) + self._busy
        _logger.warning(
            "bridge: the journal in %s cannot take more calls (spool_max_bytes reached, or the "
            "disk failed): requests are answered 503 until Altertable takes the %d entries it "
            "holds (%d requests refused so far)",
            self.journal.directory,
            owed,
            refused,
        )

    def _enqueue(self, entries: Iterable[_Entry], *, first: bool = False) -> None:
        with self._cond:
            if first:
                self._queue.extendleft(reversed(list(entries)))
            else:
                self._queue.extend(entries)
            self._cond.notify_all()

    @property
    def owed(self) -> int:
        """Journal entries not yet delivered (queued or being sent)."""
        with self._cond:
            return len(self._queue) + self._busy

    # ------------------------------------------------------------------ delivering

    def _work(self) -> None:
        while True:
            entry = self._next()
            if entry is None:
                return
            try:
                self._attempt(entry)
            except Exception:  # a defect must not end the thread: the entry stays journaled
                _logger.exception("bridge: delivering journaled calls failed unexpectedly")
                self._failed(entry, "retryable")
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _next(self) -> _Entry | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                wait = self._resume_at - time.monotonic()
                if self._queue and wait <= 0:
                    self._busy += 1
                    return self._queue.popleft()
                self._cond.wait(wait if self._queue else None)

    def _attempt(self, entry: _Entry) -> None:
        report = self._core.send(entry.calls, max(ATTEMPT_TIMEOUT, self._core.config.timeout))
        if not report.pending:
            self.journal.retire([entry.seq])
            with self._cond:
                self._failures = 0
                self._resume_at = 0.0
            return
        if self._stopping or self._core.closed:
            return  # stays journaled: the next bridge on this directory sends it
        if report.accepted or report.rejected:
            self._rekeep(entry, report.pending)
        self._failed(entry, report.pending_reason or "retryable")

    def _rekeep(self, entry: _Entry, pending: Payloads) -> None:
        """Journal what a partly delivered entry still owes, then retire the entry (so a
        restart re-sends only that); if the journal cannot take it, the entry stays whole."""
        with self.journal.lock:
            seq = self.journal.append_calls(pending, sync=self._sync, warn=False)
        if seq:
            self.journal.retire([entry.seq])
            entry.seq = seq
        entry.calls = pending

    def _failed(self, entry: _Entry, reason: str) -> None:
        """Try ``entry`` again first, after a pause that grows with each failed attempt."""
        policy = self._core.config.retry
        with self._cond:
            pause = policy.backoff(min(self._failures, _MAX_BACKOFF_STEP))
            if reason in CONFIG_ERRORS:
                pause = max(pause, SETTING_ERROR_PAUSE)
            self._failures += 1
            self._resume_at = time.monotonic() + pause
            self._queue.appendleft(entry)
            self._cond.notify_all()

    # ------------------------------------------------------------------ recovering

    def _keep_up(self) -> None:
        while not self._wake_keeper.wait(RECOVER_INTERVAL):
            try:
                self._recover()
                if not self.owed:
                    self._core.replay_spool()
            except Exception:  # never end the thread
                _logger.exception("bridge: recovering journals failed unexpectedly")

    def _recover(self) -> None:
        recover_directory(
            self.journal.directory,
            self._keep_recovered,
            may_send_scrubbed=self._core.config.before_send is not None,
        )

    def _keep_recovered(self, recs: list[Recovered]) -> bool:
        """Journal what dead processes left (as calls), then deliver it; False (the dead
        journals stay on disk for a later look) when this journal cannot take it all."""
        calls = recovered_calls(recs, self._core.calls_from_records)
        total = sum(len(items) for items in calls.values())
        if len(json.dumps(calls, default=str)) > self.journal.free_bytes:
            self._cannot_recover(recs, total)
            return False  # no partial copies: it is taken whole once there is room
        entries: list[_Entry] = []
        with self.journal.lock:
            for parcel in parcels(calls, RECOVERED_PER_PARCEL):
                seq = self.journal.append_calls(parcel, sync=self._sync, warn=False)
                if not seq:
                    break
                entries.append(_Entry(seq, parcel))
        if sum(len(items) for e in entries for items in e.calls.values()) < total:
            self.journal.retire([e.seq for e in entries])
            self._cannot_recover(recs, total)
            return False
        self._enqueue(entries)
        _logger.warning(
            "bridge: recovered %d call(s) from the journal of %s, which ended before "
            "delivering them; delivering them now",
            total,
            processes_named(recs),
        )
        return True

    def _cannot_recover(self, recs: list[Recovered], total: int) -> None:
        now = time.monotonic()
        if now - self._recover_warned_at < _WARN_INTERVAL:
            return
        self._recover_warned_at = now
        _logger.warning(
            "bridge: %d call(s) left by %s do not fit in this bridge's journal now "
            "(spool_max_bytes); they stay on disk and are taken once there is room",
            total,
            processes_named(recs),
        )

    # ------------------------------------------------------------------ stopping

    def stop(self, grace: float = 1.0) -> None:
        """Take nothing more; let attempts under way end (within ``grace`` seconds, once the
        core's transport is closed); what is not delivered stays in the journal's files."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._wake_keeper.set()
        deadline = time.monotonic() + grace
        for thread in (*self._threads, self._keeper):
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Release the journal: files holding undelivered calls stay for the next bridge."""
        self.journal.close()
