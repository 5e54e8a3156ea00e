"""The bridge's delivery: the exporters' own configuration, transport, spool and counters.

The bridge must deliver exactly as an in-process exporter does (chunking, retries, 413 split,
400 bisect, identify deduplication, spool and replay), and must also know, per request, what
became of its calls, because its answer depends on it: 200 once everything is accepted or
spooled, 503 when calls could be neither delivered nor kept. :class:`Delivery` reuses the
exporter machinery as a whole and only records that outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._mapping import Calls
from .._transport import DeliveryReport
from ..exporters import _AltertableExporter


@dataclass
class Outcome:
    """What became of the calls built from one request."""

    rejected: int = 0
    """Calls the API refused for good (bad payloads): never worth sending again."""
    lost: int = 0
    """Calls neither delivered nor spooled: the sender must send the request again."""
    refused: str | None = None
    """Why nothing was attempted (``shutdown``, ``no-api-key``), else ``None``."""


class _Pending(threading.local):
    report: DeliveryReport | None = None
    kept: int = 0


class Delivery(_AltertableExporter):
    """An exporter core without an SDK signal: calls in, an :class:`Outcome` out.

    Built from the same keyword arguments and ``OTEL_EXPORTER_ALTERTABLE_*`` variables as the
    exporters. Thread-safe: the bridge delivers the requests it serves concurrently.
    """

    _signal = "bridge"

    def __init__(self, **settings: Any) -> None:
        self._pending = _Pending()
        super().__init__(**settings)

    def deliver(self, count: int, build: Callable[[], Calls]) -> Outcome:
        """Map (``build``) and deliver the calls of ``count`` records; never raises."""
        pending = self._pending
        pending.report, pending.kept = None, 0
        if self._shutdown:
            return Outcome(refused="shutdown")
        if not self._config.api_key:
            return Outcome(refused="no-api-key")
        ok = self._run(count, build)
        report, pending.report = pending.report, None
        if ok:
            return Outcome()
        if report is None:  # mapping or delivery failed before any report: nothing was sent
            return Outcome(refused="error")
        owed = sum(len(items) for items in report.pending.values())
        return Outcome(rejected=sum(report.rejected.values()), lost=owed - pending.kept)

    def _keep(self, report: DeliveryReport) -> int:
        # This request's report and what the spool took of it (not what replay re-spooled).
        kept = super()._keep(report)
        self._pending.report = report
        self._pending.kept = kept
        return kept
