"""Counters of what an exporter saw, sent, retried, spooled and dropped.

Each exporter owns one :class:`Stats`; nothing is global, so two exporters never mix counts.
Drops are the one thing an operator must hear about: :class:`DropReporter` logs them at most
once a minute, with counts, instead of once per item.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping

from opentelemetry.metrics import MeterProvider, get_meter_provider

from ._api import LIB_NAME
from ._text import LIMIT, clip

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
    "queue_dropped",
    "calls_recovered",
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

    def snapshot(self, also_dropped: Mapping[str, int] | None = None) -> dict[str, object]:
        """A plain dict; ``also_dropped`` adds drops counted elsewhere (the spool's)."""
        with self._lock:
            counts = Counter(self._counts)
            dropped = Counter(self._dropped)
        if also_dropped:
            dropped.update(also_dropped)
            counts["calls_dropped"] += sum(also_dropped.values())
        out: dict[str, object] = {name: counts.get(name, 0) for name in COUNTERS}
        out["dropped_by_reason"] = dict(dropped)
        return out

    def reset_after_fork(self) -> None:
        """A lock held by another thread at fork time would stay held in the child."""
        self._lock = threading.Lock()


class DropReporter:
    """Logs dropped calls at most once per ``interval`` seconds, with counts by reason.

    Called once per export with that export's drops; counts held back by the interval are
    logged when it ends (a daemon timer, so no exit hook is needed: a process SIGKILLed later
    has still said them), or by :meth:`flush` at shutdown, whichever comes first.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._detail = ""
        self._last = -interval
        self._timer: threading.Timer | None = None

    def report(self, counts: Mapping[str, int], detail: str = "") -> None:
        if not any(counts.values()):
            return
        now = time.monotonic()
        with self._lock:
            self._pending.update(counts)
            if detail:
                self._detail = detail
            if now - self._last < self._interval:
                self._schedule(self._last + self._interval - now)
                return
            self._last = now
        self.flush()

    def _schedule(self, delay: float) -> None:
        """Say the held-back counts when the interval ends (called with the lock held)."""
        if self._timer is not None or delay == float("inf"):
            return
        timer = threading.Timer(delay, self._due)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _due(self) -> None:
        with self._lock:
            self._timer = None
            if self._interval == float("inf"):
                return  # held for the shutdown's single warning
            self._last = time.monotonic()
        self.flush()

    def hold(self) -> None:
        """Log nothing until :meth:`flush` (at interpreter exit: one warning, at shutdown)."""
        with self._lock:
            self._interval = float("inf")
            self._last = time.monotonic()

    def flush(self) -> None:
        """Log what is held back now (at shutdown, so no count goes unsaid)."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            detail, self._detail = self._detail, ""
        total = sum(pending.values())
        if not total:
            return
        summary = ", ".join(f"{n} {clip(r, 64)}" for r, n in sorted(pending.items()))
        _logger.warning(
            "Altertable exporter dropped %d call(s) (%s)%s",
            total,
            summary,
            f"; {clip(detail, 2 * LIMIT)}" if detail else "",
        )

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock, and nothing held back. What the parent held is
        the parent's to say (its timer or shutdown does); the child would say it twice."""
        self._lock = threading.Lock()
        self._timer = None  # the parent's timer thread does not exist here
        self._pending = Counter()
        self._detail = ""


class SelfMetrics:
    """The SDK's exporter self-observability metrics, for this exporter.

    Names follow OpenTelemetry's semantic conventions for SDK health
    (``otel.sdk.exporter.span.exported`` and friends, ``error.type`` on failures), so the
    dashboards built for the SDK's own exporters work for this one too.
    """

    def __init__(self, signal: str, component_name: str, meter_provider: MeterProvider) -> None:
        unit = "{span}" if signal == "span" else "{log_record}"
        meter = meter_provider.get_meter(LIB_NAME)
        component_type = f"altertable_{signal}_exporter"
        self._attrs: dict[str, str] = {
            "otel.component.type": component_type,
            "otel.component.name": f"{component_type}/{component_name}",
        }
        self._exported = meter.create_counter(
            f"otel.sdk.exporter.{signal}.exported",
            unit=unit,
            description="Items handed to the exporter, with error.type when not delivered",
        )
        self._inflight = meter.create_up_down_counter(
            f"otel.sdk.exporter.{signal}.inflight",
            unit=unit,
            description="Items the exporter is working on",
        )
        self._duration = meter.create_histogram(
            "otel.sdk.exporter.operation.duration",
            unit="s",
            description="Duration of one export, retries included",
        )

    def start(self, count: int) -> float:
        self._inflight.add(count, self._attrs)
        return time.perf_counter()

    def refused(self, count: int, error_type: str) -> None:
        """Items the exporter would not even try to send (no key, already shut down)."""
        self._exported.add(count, {**self._attrs, "error.type": error_type})

    def finish(self, count: int, started: float, error_type: str | None) -> None:
        self._inflight.add(-count, self._attrs)
        attrs = self._attrs if error_type is None else {**self._attrs, "error.type": error_type}
        self._exported.add(count, attrs)
        self._duration.record(time.perf_counter() - started, attrs)


def self_metrics(
    signal: str, component_name: str, meter_provider: MeterProvider | None
) -> SelfMetrics | None:
    """Metrics when a meter provider is given or the SDK's internal-metrics switch is on."""
    if meter_provider is None:
        flag = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "")
        if flag.strip().lower() != "true":
            return None
        meter_provider = get_meter_provider()
    return SelfMetrics(signal, component_name, meter_provider)
