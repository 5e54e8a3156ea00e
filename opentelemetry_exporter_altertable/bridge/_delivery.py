"""The bridge's delivery: the exporters' own core (configuration, transport, spool, counters).

The bridge must deliver exactly as an in-process exporter does (chunking, retries, 413 split,
400 bisect, identify deduplication, spool and replay), and must also know, per request, what
became of its calls, because its answer depends on it: 200 once everything is accepted or
spooled, 503 when calls could be neither delivered nor kept. :class:`Delivery` runs the
exporter core and reads that from the core's own outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._core import ExporterCore
from .._mapping import Calls


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

    def __init__(self, **settings: Any) -> None:
        self._core = ExporterCore("bridge", **settings)
        self.config = self._core.config
        self.on_warning = self._core.on_warning
        """The once-per-key warning hook, for the bridge's mapping."""

    def stats(self) -> dict[str, object]:
        """Counters since construction, as the exporters' ``stats()``."""
        return self._core.stats()

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        self._core.shutdown(timeout_millis)

    def deliver(self, count: int, build: Callable[[], Calls]) -> Outcome:
        """Map (``build``) and deliver the calls of ``count`` records; never raises."""
        refused = self._core.refusal()
        if refused is not None:
            return Outcome(refused=refused)
        run = self._core.run(count, build)
        if run.ok:
            return Outcome()
        report = run.report
        if report is None:  # mapping or delivery failed before any report: nothing was sent
            return Outcome(refused="error")
        owed = sum(len(items) for items in report.pending.values())
        return Outcome(rejected=sum(report.rejected.values()), lost=owed - run.spooled)
