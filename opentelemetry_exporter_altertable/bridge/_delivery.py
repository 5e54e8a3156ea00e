"""The bridge's delivery: the exporters' own core (configuration, transport, spool, counters).

The bridge must deliver exactly as an in-process exporter does (chunking, retries, 413 split,
400 bisect, identify deduplication), and must also know, per request, what became of its
calls, because its answer depends on it. Two ways, chosen at construction:

- **Journaled** (``journal=True`` and a spool directory; the command's default): the calls are
  written to the bridge's journal and the request is answered as soon as they are on disk;
  :mod:`._acknowledged` delivers them in the background and keeps them until Altertable has
  them. A journal that cannot take them refuses the request (503), evicting nothing.
- **Synchronous** (no spool directory, or ``journal=False``): the calls are delivered before
  the answer, the track batches of one request side by side (``parallel_requests``); 200 once
  everything is accepted or spooled, 503 when calls could be neither delivered nor kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._core import ExporterCore
from .._mapping import Calls
from ._acknowledged import DEFAULT_DELIVERY_THREADS, Acknowledged

_logger = logging.getLogger(__name__)

#: Track batches of one request sent side by side when delivery is synchronous.
DEFAULT_PARALLEL_REQUESTS = 4
_REFUSALS = {
    "journal-full": "the bridge's journal is full (or its disk failed); nothing it "
    "acknowledged is evicted",
    "bad-endpoint": "the bridge's Altertable endpoint is unusable",
    "exception": "the bridge failed to map the request",
}


@dataclass
class Outcome:
    """What became of the calls built from one request."""

    rejected: int = 0
    """Calls the API refused for good (bad payloads): never worth sending again."""
    lost: int = 0
    """Calls neither delivered nor spooled: the sender must send the request again."""
    refused: str | None = None
    """Why nothing was attempted (``shutdown``, ``no-api-key``), else ``None``."""


class Delivery:
    """An exporter core without an SDK signal: calls in, an :class:`Outcome` out.

    Built from the same keyword arguments and ``OTEL_EXPORTER_ALTERTABLE_*`` variables as the
    exporters. Thread-safe: the bridge delivers the requests it serves concurrently.
    """

    def __init__(
        self,
        *,
        journal: bool = True,
        parallel_requests: int = DEFAULT_PARALLEL_REQUESTS,
        delivery_threads: int = DEFAULT_DELIVERY_THREADS,
        **settings: Any,
    ) -> None:
        self._core = ExporterCore(
            "bridge",
            recover_journals=not journal,
            parallel_requests=parallel_requests,
            **settings,
        )
        self.config = self._core.config
        self.on_warning = self._core.on_warning
        """The once-per-key warning hook, for the bridge's mapping."""
        self.options = self._core.options
        """The core's mapping options (environment, warnings, ``pageviews``,
        ``properties_exclude``): the bridge maps with exactly these, so a request maps as the
        in-process exporters and the bridge's own journal recovery map it."""
        self.acknowledged: Acknowledged | None = None
        """The journal and its delivery threads; ``None`` when delivery is synchronous."""
        kept = self._core.backlog.journal(before_send=False) if journal else None
        if kept is not None:
            try:
                kept.prepare()
            except (OSError, ValueError) as exc:
                _logger.error("bridge: cannot keep a journal in %s: %s", kept.directory, exc)
                kept = None
        if kept is not None:
            # Calls are journaled after before_send: anyone may send them as they are.
            self.acknowledged = Acknowledged(self._core, kept, threads=delivery_threads)

    @property
    def journaled(self) -> bool:
        """Requests are answered once their calls are in the journal (not once delivered)."""
        return self.acknowledged is not None

    def stats(self) -> dict[str, object]:
        """Counters since construction, as the exporters' ``stats()``; journaled, also
        ``journal_owed`` (entries not yet delivered) and ``journal_refused`` (requests
        answered 503 because the journal could not take them)."""
        snapshot = self._core.stats()
        if self.acknowledged is not None:
            snapshot["journal_owed"] = self.acknowledged.owed
            snapshot["journal_refused"] = self.acknowledged.refused_full
        return snapshot

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Stop delivering; journaled calls not yet delivered stay on disk for the next
        bridge on the directory (never spooled, never dropped)."""
        acknowledged = self.acknowledged
        if acknowledged is not None:
            acknowledged.stop(grace=0.0)
        self._core.shutdown(timeout_millis)
        if acknowledged is not None:
            acknowledged.stop(grace=1.0)
            acknowledged.close()

    def deliver(self, count: int, build: Callable[[], Calls]) -> Outcome:
        """Map (``build``) and deliver, or journal, the calls of ``count`` records; never
        raises."""
        refused = self._core.refusal()
        if refused is not None:
            return Outcome(refused=refused)
        if self.acknowledged is not None:
            why = self.acknowledged.accept(count, build)
            return Outcome(refused=_REFUSALS.get(why, why)) if why else Outcome()
        run = self._core.run(count, build)
        if run.ok:
            return Outcome()
        report = run.report
        if report is None:  # mapping or delivery failed before any report: nothing was sent
            return Outcome(refused="error")
        owed = sum(len(items) for items in report.pending.values())
        return Outcome(rejected=sum(report.rejected.values()), lost=owed - run.spooled)
