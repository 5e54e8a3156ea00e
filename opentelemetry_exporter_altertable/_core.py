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
from collections.abc import Callable
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
from ._mapping import Calls, MappingOptions, Record, map_records
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


class ExporterCore:
    """What both exporters and the bridge share. Thread-safe: runs may overlap."""

    def __init__(
        self,
        signal: str,
        *,
        session: requests.Session | None = None,
        meter_provider: MeterProvider | None = None,
        **settings: Any,
    ) -> None:
        """``signal`` names the self-metrics' component (``span``, ``log``, ``bridge``);
        ``settings`` are the exporters' keyword arguments, resolved by ``resolve_config``."""
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
        self._recover_journals()
        self._shutdown = False
        self._idle = threading.Condition()
        self._active = 0
        self._pid = os.getpid()
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

    def run(self, count: int, build: Callable[[], Calls]) -> Outcome:
        """Map (``build``, from ``count`` records), send, spool; never raises but for a
        ``KeyboardInterrupt`` (or ``SystemExit``), re-raised once what it owed is kept."""
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
        if calls.identifies:
            calls.identifies = self._identified.unseen(calls.identifies)
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
        report = self._transport.deliver(by_endpoint, deadline)
        if calls.identifies and "identify" not in report.pending and not report.rejected:
            self._identified.remember(calls.identifies)
        spooled = self._backlog.keep(report)
        if report.interrupted is not None:  # Ctrl-C mid-export: kept above, now re-raised
            raise report.interrupted
        if report.pending:
            error: str | None = report.pending_reason or "retryable"
        else:
            error = "rejected" if report.rejected else None
        return Outcome(error, report, spooled)

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
        """In a forked child: fresh locks, connections and spool handle; counts carry over.

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
        self._recover_journals()

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Stop: interrupt backoff waits at once, let the runs under way spool what they owe."""
        if self._shutdown:
            return
        self._shutdown = True
        self._transport.close()
        self._wait_for_runs(time.monotonic() + max(0.0, timeout_millis) / 1000)
        self._drops.flush()  # after the running exports, so their drops are said too
        self._transport.release()
