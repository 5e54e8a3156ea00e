"""Fault injection for the local receiver: a seeded, reproducible plan of refusals.

A :class:`FaultPlan` is plain data plus one pure function, :meth:`FaultPlan.decide`: given the
request's number and the seconds since the plan began, it says whether that ingestion request
is answered with an error status (optionally with ``Retry-After``), has its connection dropped
without an answer, or passes. The random draws come from a hash of ``(seed, request number)``,
not from a shared generator, so the same seed gives the same fault for the same request number
whatever the threads do. :class:`FaultInjector` numbers the requests, keeps the outage clock and
counts what it injected; the receiver asks it *before* storing anything, so a refused request
never leaves rows behind.

Used to soak-test delivery (``benchmarks/soak.py``) and in tests:
``LocalReceiver(faults=FaultPlan(error_rate=0.1, drop_rate=0.02, outages=((10, 30),)))``.

Why three fake APIs, not one: each answers a different question. This module adds *random,
seeded* faults in front of the real receiver, so what does get through is validated and stored
exactly as the API would, and a soak can count rows (nothing lost, nothing doubled).
``tests/faultserver.py`` is a *scripted* server with no storage and no validation: a test
queues exact answers (a 503 then a 200, a hang, a slow body, a reset) and inspects every raw
request, which the receiver's item-by-item rules would get in the way of.
``benchmarks/_sink.py`` does *nothing* but read and answer 200 in one write, so a benchmark
measures the exporter and not a server. Merging them would give one server with three modes
and none of them simple.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Fault", "FaultInjector", "FaultPlan"]

FaultKind = Literal["error", "drop"]
_MASK64 = (1 << 64) - 1
_DRAW_FAULT = 1  # salts: independent draws for one request
_DRAW_RETRY_AFTER = 2


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a well-spread 64-bit hash of ``value``."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _unit(seed: int, number: int, salt: int) -> float:
    """A uniform draw in ``[0, 1)`` that depends only on its three arguments."""
    return (_mix64(_mix64(_mix64(seed & _MASK64) ^ salt) ^ (number & _MASK64)) >> 11) / 2.0**53


@dataclass(frozen=True)
class Fault:
    """What to do with one request instead of handling it."""

    kind: FaultKind
    status: int = 0
    """The HTTP status of an ``"error"`` fault (0 for ``"drop"``)."""
    retry_after: float | None = None
    """Seconds to send in ``Retry-After``, or ``None`` for no header."""
    outage: bool = False
    """Injected because an outage window was open (not by the random rates)."""

    @property
    def drop(self) -> bool:
        return self.kind == "drop"

    @property
    def error_code(self) -> str:
        return "service-unavailable" if self.status == 503 else f"injected-http-{self.status}"

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after is None:
            return ()
        return (("Retry-After", f"{self.retry_after:g}"),)


@dataclass(frozen=True)
class FaultPlan:
    """Which ingestion requests fail, and how; the same seed always gives the same faults.

    Outside outages, each request independently has its connection dropped with probability
    ``drop_rate``, else is answered ``error_status`` with probability ``error_rate`` (carrying
    ``Retry-After: retry_after`` for a ``retry_after_rate`` share of those). Inside an outage
    window ``(start_s, duration_s)``, measured from the start of the plan, every request fails
    as ``outage_action`` says: ``"error"`` (``error_status``, no ``Retry-After``) or ``"drop"``.
    """

    error_rate: float = 0.0
    error_status: int = 503
    retry_after: float | None = None
    retry_after_rate: float = 1.0
    drop_rate: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()
    outage_action: FaultKind = "error"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "retry_after_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"FaultPlan.{name} must be between 0 and 1, not {value!r}")
        if self.error_rate + self.drop_rate > 1.0 + 1e-9:
            raise ValueError("FaultPlan.error_rate + drop_rate must not exceed 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"FaultPlan.error_status must be 4xx or 5xx, not {self.error_status}")
        if self.retry_after is not None and not (
            math.isfinite(self.retry_after) and self.retry_after >= 0
        ):
            raise ValueError("FaultPlan.retry_after must be a non-negative number of seconds")
        if self.outage_action not in ("error", "drop"):
            raise ValueError("FaultPlan.outage_action must be 'error' or 'drop'")
        for window in self.outages:
            if len(window) != 2 or not all(math.isfinite(v) and v >= 0 for v in window):
                raise ValueError(f"FaultPlan.outages: {window!r} is not (start_s, duration_s)")

    def in_outage(self, elapsed: float) -> bool:
        return any(start <= elapsed < start + duration for start, duration in self.outages)

    def decide(self, number: int, elapsed: float) -> Fault | None:
        """The fault for request ``number`` arriving ``elapsed`` seconds in, or ``None``."""
        if self.in_outage(elapsed):
            if self.outage_action == "drop":
                return Fault("drop", outage=True)
            return Fault("error", self.error_status, outage=True)
        draw = _unit(self.seed, number, _DRAW_FAULT)
        if draw < self.drop_rate:
            return Fault("drop")
        if draw < self.drop_rate + self.error_rate:
            retry_after = None
            if self.retry_after is not None and (
                _unit(self.seed, number, _DRAW_RETRY_AFTER) < self.retry_after_rate
            ):
                retry_after = self.retry_after
            return Fault("error", self.error_status, retry_after)
        return None


class FaultInjector:
    """Applies a :class:`FaultPlan` to live requests: numbering, outage clock, counters.

    Thread-safe. The outage clock starts when the injector is built and restarts at each
    :meth:`begin` (the receiver calls it in ``start()``; call it again to line the outages up
    with the start of a workload).
    """

    def __init__(self, plan: FaultPlan, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self._clock = clock
        self._lock = threading.Lock()
        self._origin = clock()
        self._number = 0
        self._counts: Counter[str] = Counter()

    def begin(self) -> None:
        """Restart the outage clock now (counters and request numbers carry on)."""
        with self._lock:
            self._origin = self._clock()

    def elapsed(self) -> float:
        """Seconds since the last :meth:`begin` (or construction)."""
        with self._lock:
            return self._clock() - self._origin

    def decide(self, path: str) -> Fault | None:
        """Number this ingestion request, decide its fate and count it."""
        with self._lock:
            number = self._number
            self._number += 1
            fault = self.plan.decide(number, self._clock() - self._origin)
            counts = self._counts
            counts["requests"] += 1
            if fault is None:
                counts["passed"] += 1
                return None
            prefix = "outage_" if fault.outage else ""
            counts[f"{prefix}{'drops' if fault.drop else 'errors'}"] += 1
            if fault.retry_after is not None:
                counts["retry_after"] += 1
            counts[f"path:{path}"] += 1
            return fault

    def counts(self) -> dict[str, int]:
        """``requests``, ``passed``, ``errors``, ``drops``, ``outage_errors``, ``outage_drops``,
        ``retry_after`` (errors sent with the header), ``injected`` (all faults) and
        ``path:/track``-style faults per path."""
        with self._lock:
            counts = Counter(self._counts)
        out = {
            name: counts.get(name, 0)
            for name in (
                "requests",
                "passed",
                "errors",
                "drops",
                "outage_errors",
                "outage_drops",
                "retry_after",
            )
        }
        out["injected"] = out["errors"] + out["drops"] + out["outage_errors"] + out["outage_drops"]
        out.update({name: n for name, n in sorted(counts.items()) if name.startswith("path:")})
        return out
