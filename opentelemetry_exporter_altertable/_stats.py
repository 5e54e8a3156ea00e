"""Counters of what an exporter saw, sent, retried, spooled and dropped.

Each exporter owns one :class:`Stats`; nothing is global, so two exporters never mix counts.
Drops are the one thing an operator must hear about: :class:`DropReporter` logs them at most
once a minute, with counts, instead of once per item.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

_logger = logging.getLogger(__name__)

#: Counter names, for documentation and for ``stats()`` keys that always exist.
COUNTERS = (
    "records_seen",
    "records_skipped",
    "calls_built",
    "calls_exported",
    "requests",
    "retries",
    "calls_spooled",
    "calls_replayed",
    "calls_dropped",
)


class Stats:
    """Thread-safe counters; :meth:`snapshot` returns a plain dict."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

    def add(self, name: str, count: int = 1) -> None:
        if count:
            with self._lock:
                self._counts[name] += count

    def drop(self, reason: str, count: int) -> None:
        if count:
            with self._lock:
                self._counts["calls_dropped"] += count
                self._dropped[reason] += count

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            out: dict[str, object] = {name: self._counts.get(name, 0) for name in COUNTERS}
            out["dropped_by_reason"] = dict(self._dropped)
        return out

    def reset_after_fork(self) -> None:
        """A lock held by another thread at fork time would stay held in the child."""
        self._lock = threading.Lock()


class DropReporter:
    """Logs dropped calls at most once per ``interval`` seconds, with counts by reason."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._last = -interval

    def report(self, reason: str, count: int, detail: str = "") -> None:
        if not count:
            return
        now = time.monotonic()
        with self._lock:
            self._pending[reason] += count
            if now - self._last < self._interval:
                return
            pending, self._pending = self._pending, Counter()
            self._last = now
        summary = ", ".join(f"{n} {r}" for r, n in sorted(pending.items()))
        _logger.warning(
            "Altertable exporter dropped %d call(s) (%s)%s",
            sum(pending.values()),
            summary,
            f"; last: {detail}" if detail else "",
        )

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
