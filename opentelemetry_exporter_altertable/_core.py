"""The exporter core: configuration, counters, the export run, the lifecycle, fork handling.

Both exporters and the bridge deliver through one core. A run maps records into calls (the
caller's ``build``), applies ``before_send``, replays the spool, sends through the transport,
and hands whatever is still owed to the backlog. It never raises into the SDK (but for a
``KeyboardInterrupt`` it kept the calls of) and never runs past ``timeout``: every failure
becomes a log line, a counter and an :class:`Outcome` that says what became of the calls:
accepted, refused for good, owed, and of those owed how many were spooled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.metrics import MeterProvider

from . import environment_variables as ev
from ._backlog import Backlog
from ._before_send import apply_before_send
from ._config import ExporterConfig, resolve_config
from ._exit_watch import watch_interpreter_exit
from ._identify_cache import IdentifyCache
from ._mapping import Calls, MappingOptions, Record, identify_key, map_records
from ._stats import DropReporter, Stats, self_metrics
from ._transport import DeliveryReport, Transport
from ._warn_once import WarnOnce
from ._web import ExcludeMatcher

_logger = logging.getLogger(__name__)

__all__ = ["EXIT_BUDGET", "ExporterCore", "Outcome"]

#: Once the interpreter is exiting, exports get this many seconds in all, then spool.
EXIT_BUDGET = 2.0
#: Of that budget, what is kept for the exports cut short to spool what they owe.
_EXIT_SPOOL_TIME = 0.3
#: The errors of a run that did nothing at all (see :meth:`ExporterCore.refusal`).
_REFUSALS = frozenset({"shutdown", "no-api-key"})


@dataclass(frozen=True)
class Outcome:
    """What became of the calls of one run."""

    error: str | None = None
    """``None`` when every call built was accepted (or none was left to send); else why not,
    as the self-metrics' ``error.type``: ``shutdown``, ``no-api-key``, ``bad-endpoint``,
    ``exception``, ``rejected``, ``retryable`` or a setting error (``auth``, ``tls``...)."""
    report: DeliveryReport | None = None
    """The transport's account of this run's calls (accepted, rejected, owed); ``None`` when
    none was sent (nothing to send, or the run failed before sending)."""
    spooled: int = 0
    """Of the calls ``report`` owes, how many the backlog kept (not what replay re-spooled)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def refused(self) -> bool:
        """The run did nothing (``shutdown``, ``no-api-key``): its calls were neither sent, nor
        kept, nor counted as dropped, so whoever still holds them must keep them."""
        return self.error in _REFUSALS


def merge_reports(into: DeliveryReport, other: DeliveryReport) -> None:
    """Add ``other``'s account to ``into`` (owed calls after ``into``'s, in order)."""
    for endpoint, count in other.accepted.items():
        into.accepted[endpoint] = into.accepted.get(endpoint, 0) + count
    into.rejected.update(other.rejected)
    into.detail = other.detail or into.detail
    for endpoint, items in other.pending.items():
        into.owe(endpoint, items, other.pending_reason or "retryable")
    if into.interrupted is None:
        into.interrupted = other.interrupted


class ExporterCore:
    """What both exporters and the bridge share. Thread-safe: runs may overlap."""

    def __init__(
        self,
        signal: str,
        *,
        session: requests.Session | None = None,
        meter_provider: MeterProvider | None = None,
        recover_journals: bool = True,
        parallel_requests: int = 1,
        **settings: Any,
    ) -> None:
        """``signal`` names the self-metrics' component (``span``, ``log``, ``bridge``);
        ``settings`` are the exporters' keyword arguments, resolved by ``resolve_config``.
        ``recover_journals=False`` leaves dead processes' journals to a caller that recovers
        them itself (the bridge keeps them in its own journal rather than the spool).
        ``parallel_requests`` sends the track batches of one run over that many connections
        at once (the bridge's synchronous answers: 8,192 spans behind a slow API in time)."""
        self._config: ExporterConfig = resolve_config(**settings)
        self._stats = Stats()
        self._metrics = self_metrics(signal, f"{id(self):x}", meter_provider)
        self._drops = DropReporter()
        self._transport = Transport(self._config, session, self._stats)
        self._identified = IdentifyCache()
        self._warn_once = WarnOnce(_logger)
        self._options = MappingOptions(
            environment=self._config.environment,
            on_warning=self._warn_once.on_warning,
            pageviews=self._config.pageviews,
            properties_exclude=ExcludeMatcher(self._config.properties_exclude),
        )
        self._backlog = Backlog(self._config, self._stats, self._drops)
        # Journals of processes that died with records undelivered: spooled now, sent by runs.
        self._recovers = recover_journals
        self._parallel = max(1, parallel_requests)
        if recover_journals:
            self._recover_journals()
        self._shutdown = False
        self._idle = threading.Condition()
        self._active = 0
        self._pid = os.getpid()
        # Each thread's last run outcome: a processor's export learns what became of its records.
        self._outcomes = threading.local()
        watch_interpreter_exit(self)
        if not self._config.api_key:
            _logger.error(
                "No Altertable API key: set %s (or %s), or pass api_key=...; "
                "nothing will be exported until then",
                ev.OTEL_EXPORTER_ALTERTABLE_API_KEY,
                ev.ALTERTABLE_API_KEY,
            )

    @property
    def config(self) -> ExporterConfig:
        return self._config

    @property
    def options(self) -> MappingOptions:
        """The mapping's options: the settings, and warnings said once per key."""
        return self._options

    @property
    def on_warning(self) -> Callable[[str, str], None]:
        """The once-per-key warning hook, for a mapping built with options of its own."""
        return self._warn_once.on_warning

    @property
    def backlog(self) -> Backlog:
        """What is owed: the spool and the processors' journals."""
        return self._backlog

    def calls_from_records(self, records: list[Record]) -> Calls:
        """Journaled records as the calls a run would build (``before_send`` included)."""
        calls = map_records(records, self._options)
        if self._config.before_send is not None:
            apply_before_send(
                self._config.before_send, calls, self._stats, self._warn_once.on_warning
            )
        return calls

    def _recover_journals(self) -> None:
        self._backlog.recover(
            self.calls_from_records, before_send=self._config.before_send is not None
        )

    def record_queue_drops(self, count: int) -> None:
        self._stats.add("queue_dropped", count)

    def stats(self) -> dict[str, object]:
        """Counters since construction, as a plain dict (see the README for each key)."""
        return self._backlog.stats(self._stats)

    def refusal(self) -> str | None:
        """Why a run would send nothing at all (``shutdown``, ``no-api-key``), else ``None``."""
        if self._shutdown:
            return "shutdown"
        return None if self._config.api_key else "no-api-key"

    # ------------------------------------------------------------------ the run

    def last_outcome(self) -> Outcome | None:
        """The outcome of this thread's last :meth:`run` since the previous call, else ``None``.

        The processors' journal retires an export's records by it: an exporter's ``export``
        answers only success or failure, and a refused run's records are still owed.
        """
        outcome: Outcome | None = getattr(self._outcomes, "last", None)
        self._outcomes.last = None
        return outcome

    def run(self, count: int, build: Callable[[], Calls]) -> Outcome:
        """Map (``build``, from ``count`` records), send, spool; never raises but for a
        ``KeyboardInterrupt`` (or ``SystemExit``), re-raised once what it owed is kept."""
        outcome = self._run(count, build)
        self._outcomes.last = outcome
        return outcome

    def _run(self, count: int, build: Callable[[], Calls]) -> Outcome:
        refused = self.refusal()
        if refused is not None:
            if self._shutdown:
                _logger.debug("export after shutdown ignored (%d records)", count)
            if self._metrics is not None:
                self._metrics.refused(count, refused)
            return Outcome(refused)
        if os.getpid() != self._pid:
            self._after_fork()
        with self._idle:
            self._active += 1
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        started = self._metrics.start(count) if self._metrics is not None else 0.0
        outcome = Outcome("exception")
        try:
            self._stats.add("records_seen", count)
            calls = build()
            self._stats.add("records_skipped", calls.skipped)
            if self._config.endpoint_error is not None:
                outcome = Outcome(self._refuse_bad_endpoint(calls))
            else:
                if self._config.before_send is not None:
                    apply_before_send(
                        self._config.before_send, calls, self._stats, self._warn_once.on_warning
                    )
                outcome = self._deliver(calls)
        except Exception:  # never raise into the SDK
            _logger.exception("Altertable export failed unexpectedly")
        finally:
            if self._metrics is not None:
                self._metrics.finish(count, started, outcome.error)
            detach(token)
            with self._idle:
                self._active -= 1
                self._idle.notify_all()
        return outcome

    def _deliver(self, calls: Calls) -> Outcome:
        """Send (after replaying the spool) and keep what is owed."""
        deadline = time.monotonic() + self._config.timeout
        identify_keys: list[str] = []
        if calls.identifies:
            calls.identifies, identify_keys = self._identified.unseen(calls.identifies)
        self._stats.add("calls_built", len(calls))
        by_endpoint = calls.by_endpoint()
        try:
            self._backlog.replay(self._transport, deadline)
        except BaseException:  # interrupted while replaying: this export's calls are owed
            owed = DeliveryReport()
            for endpoint, items in by_endpoint.items():
                owed.owe(endpoint, items, "retryable")
            self._backlog.keep(owed)
            raise
        if not by_endpoint:
            return Outcome()
        report = self._send_all(by_endpoint, deadline)
        if identify_keys and "identify" not in report.pending and not report.rejected:
            self._identified.remember(identify_keys)
        spooled = self._backlog.keep(report)
        if report.interrupted is not None:  # Ctrl-C mid-export: kept above, now re-raised
            raise report.interrupted
        if report.pending:
            error: str | None = report.pending_reason or "retryable"
        else:
            error = "rejected" if report.rejected else None
        return Outcome(error, report, spooled)

    # ------------------------------------------------------------------ keep first, send later

    def build_calls(self, count: int, build: Callable[[], Calls]) -> dict[str, list[Any]] | str:
        """The calls of ``count`` records, by endpoint, for a caller that keeps them before
        sending them (the bridge's journal): mapped (``build``), ``before_send`` applied,
        identifies already accepted left out. Or why none may be built (:meth:`refusal`,
        ``bad-endpoint``, ``exception``): nothing is counted as sent then."""
        refused = self.refusal()
        if refused is not None:
            return refused
        if self._config.endpoint_error is not None:
            return "bad-endpoint"
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            calls = build()
            if self._config.before_send is not None:
                apply_before_send(
                    self._config.before_send, calls, self._stats, self._warn_once.on_warning
                )
            if calls.identifies:
                calls.identifies, _ = self._identified.unseen(calls.identifies)
        except Exception:
            _logger.exception("Altertable: mapping failed unexpectedly")
            return "exception"
        finally:
            detach(token)
        self._stats.add("records_seen", count)
        self._stats.add("records_skipped", calls.skipped)
        self._stats.add("calls_built", len(calls))
        return calls.by_endpoint()

    def send(self, calls: dict[str, list[Any]], timeout: float | None = None) -> DeliveryReport:
        """Deliver calls kept elsewhere (see :meth:`build_calls`) within ``timeout`` (default:
        the configured one). Nothing owed goes to the spool: the caller still holds it. Refusals
        for good are counted and logged; never raises (an interrupt is in the report)."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._idle:
            self._active += 1
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            deadline = time.monotonic() + (self._config.timeout if timeout is None else timeout)
            report = self._send_all(calls, deadline)
            identifies = calls.get("identify")
            if identifies and "identify" not in report.pending and not report.rejected:
                self._identified.remember(map(identify_key, identifies))
            if report.rejected:
                self._drops.report(Counter(report.rejected), report.detail)
            return report
        finally:
            detach(token)
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def replay_spool(self) -> None:
        """Re-send spool files (oldest first) within one timeout, as a run does first."""
        if self._shutdown:
            return
        with self._idle:
            self._active += 1
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            self._backlog.replay(self._transport, time.monotonic() + self._config.timeout)
        finally:
            detach(token)
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    @property
    def closed(self) -> bool:
        """Shut down: :meth:`send` owes everything at once."""
        return self._transport.closed

    def _send_all(self, by_endpoint: dict[str, list[Any]], deadline: float) -> DeliveryReport:
        """Deliver one run's calls; with ``parallel_requests``, its track batches at once.

        Identifies and aliases go first, on their own, so a track never overtakes the
        identify built with it; then the tracks, cut into contiguous parts sent side by side.
        """
        tracks = by_endpoint.get("track", [])
        size = self._config.max_batch_size
        if self._parallel <= 1 or len(tracks) <= size:
            return self._transport.deliver(by_endpoint, deadline)
        head = {endpoint: items for endpoint, items in by_endpoint.items() if endpoint != "track"}
        report = self._transport.deliver(head, deadline) if head else DeliveryReport()
        batches = -(-len(tracks) // size)
        ways = min(self._parallel, batches)
        per = -(-batches // ways) * size
        parts = [{"track": tracks[start : start + per]} for start in range(0, len(tracks), per)]
        with ThreadPoolExecutor(len(parts), thread_name_prefix="altertable-send") as pool:
            reports = list(pool.map(lambda part: self._transport.deliver(part, deadline), parts))
        for part in reports:
            merge_reports(report, part)
        return report

    def _refuse_bad_endpoint(self, calls: Calls) -> str:
        """An unusable endpoint: nothing is sent (never the default instead), all counted."""
        built = len(calls)
        self._stats.add("calls_built", built)
        self._stats.drop("bad-endpoint", built)
        self._drops.report(
            {"bad-endpoint": built},
            f"{ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT} is unusable: {self._config.endpoint_error}",
        )
        return "bad-endpoint"

    # ------------------------------------------------------------------ lifecycle

    def interpreter_exiting(self) -> None:
        """The interpreter is exiting: bound what is left to :data:`EXIT_BUDGET` seconds.

        Runs before the SDK's own exit shutdown (see :mod:`._exit_watch`), which joins the
        processor's worker before it calls ``shutdown``: so it is here, not in ``shutdown``,
        that backoff waits stop and a request stuck on a hung server is cut short. What could
        not be delivered is spooled (or counted, in one warning).
        """
        if self._shutdown or os.getpid() != self._pid:
            return
        deadline = time.monotonic() + EXIT_BUDGET
        self._transport.begin_exit(deadline)
        self._drops.hold()  # said once, by shutdown
        if self._wait_for_runs(deadline - _EXIT_SPOOL_TIME):
            return
        self._transport.abort_requests()
        self._wait_for_runs(deadline)

    def _wait_for_runs(self, deadline: float) -> bool:
        """Wait until no run is under way, or until ``deadline``; True if none is."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._active, deadline - time.monotonic())

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, connections and spool handle; counts carry over
        (but drops the parent held back for its warning, which are the parent's to say).

        A lock another thread held at fork time would stay held in the child forever, and
        pooled sockets would be shared with the parent. Checked by pid on each run, so no
        process-wide fork hook outlives the exporter.
        """
        self._pid = os.getpid()
        self._idle = threading.Condition()
        self._active = 0
        self._stats.reset_after_fork()
        self._drops.reset_after_fork()
        self._identified.reset_after_fork()
        self._warn_once.reset_after_fork()
        self._backlog.after_fork()
        if self._recovers:
            # Not here: this runs inside an export, and recovery keeps the export's deadline.
            self._backlog.recover_soon()

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Stop: interrupt backoff waits at once, let the runs under way spool what they owe."""
        if self._shutdown:
            return
        self._shutdown = True
        self._transport.close()
        self._wait_for_runs(time.monotonic() + max(0.0, timeout_millis) / 1000)
        self._drops.flush()  # after the running exports, so their drops are said too
        self._transport.release()
