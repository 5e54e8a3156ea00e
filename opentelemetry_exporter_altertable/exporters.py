"""The two exporters: configuration, the export run and the lifecycle; thin on purpose.

Records go through the mapping into calls, the calls through the transport, and whatever is
still owed to the backlog (spool). ``export`` never raises into the SDK and never runs past
``timeout``: every failure becomes a log line, a counter and a ``FAILURE`` result.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import requests
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import environment_variables as ev
from ._backlog import Backlog
from ._config import BeforeSend, ExporterConfig, resolve_config
from ._mapping import Calls, MappingOptions, Payload, Record, _freeze, map_records
from ._retry import RetryPolicy
from ._sdk import map_log_records, map_spans
from ._stats import DropReporter, Stats, self_metrics
from ._text import LIMIT, clip
from ._transport import DeliveryReport, Transport
from ._values import json_safe
from ._web import ExcludeMatcher

_logger = logging.getLogger(__name__)
_PACKAGE = __name__.rpartition(".")[0]

#: Once the interpreter is exiting, exports get this many seconds in all, then spool.
EXIT_BUDGET = 2.0
#: Of that budget, what is kept for the exports cut short to spool what they owe.
_EXIT_SPOOL_TIME = 0.3


class _WarnOnce:
    """Logs each mapping warning once per exporter (bounded, so hostile data cannot grow it)."""

    def __init__(self, max_keys: int = 1024) -> None:
        self._seen: set[str] = set()
        self._max = max_keys
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str) -> None:
        key = clip(key, LIMIT)  # a hostile value in the key must not grow memory either
        message = clip(message, 3 * LIMIT)
        with self._lock:
            if key in self._seen:
                return
            if len(self._seen) >= self._max:
                self._seen.clear()
            self._seen.add(key)
        _logger.warning("%s", message)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


class _IdentifyCache:
    """Remembers identifies already accepted, so the same one is not sent again (LRU-bounded)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[Any, None] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    @staticmethod
    def key(payload: Payload) -> Any:
        return (
            payload.get("environment"),
            payload.get("distinct_id"),
            payload.get("anonymous_id"),
            _freeze(payload.get("traits")),
        )

    def unseen(self, payloads: list[Payload]) -> list[Payload]:
        with self._lock:
            entries = self._entries
            return [p for p in payloads if self.key(p) not in entries]

    def remember(self, payloads: list[Payload]) -> None:
        with self._lock:
            for payload in payloads:
                key = self.key(payload)
                self._entries[key] = None
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


class _AltertableExporter:
    """What both exporters share: configuration, the export run, counters, lifecycle."""

    _signal = "span"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        endpoint: str | None = None,
        environment: str | None = None,
        timeout: float | None = None,
        max_batch_size: int | None = None,
        sync: bool | None = None,
        compression: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        meter_provider: MeterProvider | None = None,
        pageviews: bool | None = None,
        properties_exclude: str | Iterable[str] | None = None,
        before_send: BeforeSend | None = None,
    ) -> None:
        self._config: ExporterConfig = resolve_config(
            api_key=api_key,
            endpoint=endpoint,
            environment=environment,
            timeout=timeout,
            max_batch_size=max_batch_size,
            sync=sync,
            compression=compression,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            retry=retry,
            pageviews=pageviews,
            properties_exclude=properties_exclude,
            before_send=before_send,
        )
        self._stats = Stats()
        self._metrics = self_metrics(self._signal, f"{id(self):x}", meter_provider)
        self._drops = DropReporter()
        self._transport = Transport(self._config, session, self._stats)
        self._identified = _IdentifyCache()
        self._warn_once = _WarnOnce()
        self._options = MappingOptions(
            environment=self._config.environment,
            on_warning=self._warn_once,
            pageviews=self._config.pageviews,
            properties_exclude=ExcludeMatcher(self._config.properties_exclude),
        )
        self._backlog = Backlog(self._config, self._stats, self._drops)
        # Journals of processes that died with records undelivered: spooled now, sent by exports.
        self._backlog.recover(
            self._calls_from_records, before_send=self._config.before_send is not None
        )
        self._shutdown = False
        self._idle = threading.Condition()
        self._active = 0
        self._pid = os.getpid()
        _watch_interpreter_exit(self)
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

    def _record_queue_drops(self, count: int) -> None:
        """Called by ``AltertableSpanProcessor`` for the spans its full queue dropped."""
        self._stats.add("queue_dropped", count)

    def stats(self) -> dict[str, object]:
        """Counters since construction, as a plain dict (see the README for each key)."""
        return self._backlog.stats(self._stats)

    # ------------------------------------------------------------------ export

    def _run(self, count: int, build: Callable[[], Calls]) -> bool:
        """Map, send, spool: True only when every call built was accepted."""
        if self._shutdown or not self._config.api_key:
            if self._shutdown:
                _logger.debug("export after shutdown ignored (%d records)", count)
            if self._metrics is not None:
                self._metrics.refused(count, "shutdown" if self._shutdown else "no-api-key")
            return False
        if os.getpid() != self._pid:
            self._after_fork()
        with self._idle:
            self._active += 1
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        started = self._metrics.start(count) if self._metrics is not None else 0.0
        error_type: str | None = "exception"
        try:
            self._stats.add("records_seen", count)
            calls = build()
            self._stats.add("records_skipped", calls.skipped)
            if self._config.endpoint_error is not None:
                error_type = self._refuse_bad_endpoint(calls)
                return False
            if self._config.before_send is not None:
                _apply_before_send(self._config.before_send, calls, self._stats, self._warn_once)
            error_type = self._deliver(calls)
            return error_type is None
        except Exception:  # never raise into the SDK
            _logger.exception("Altertable export failed unexpectedly")
            return False
        finally:
            if self._metrics is not None:
                self._metrics.finish(count, started, error_type)
            detach(token)
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _calls_from_records(self, records: list[Record]) -> Calls:
        """Journaled records as the calls an export would build (``before_send`` included)."""
        calls = map_records(records, self._options)
        if self._config.before_send is not None:
            _apply_before_send(self._config.before_send, calls, self._stats, self._warn_once)
        return calls

    def _keep(self, report: DeliveryReport) -> int:
        """Hand what is still owed to the backlog; returns how many calls it spooled."""
        return self._backlog.keep(report)

    def _deliver(self, calls: Calls) -> str | None:
        """Send (after replaying the spool); ``None`` on full success, else why not."""
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
            self._keep(owed)
            raise
        if not by_endpoint:
            return None
        report = self._transport.deliver(by_endpoint, deadline)
        if calls.identifies and "identify" not in report.pending and not report.rejected:
            self._identified.remember(calls.identifies)
        self._keep(report)
        if report.interrupted is not None:  # Ctrl-C mid-export: kept above, now re-raised
            raise report.interrupted
        if report.pending:
            return report.pending_reason or "retryable"
        return "rejected" if report.rejected else None

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

    def _interpreter_exiting(self) -> None:
        """The interpreter is exiting: bound what is left to :data:`EXIT_BUDGET` seconds.

        Runs before the SDK's own exit shutdown (see :func:`_watch_interpreter_exit`), which
        joins the processor's worker before it calls :meth:`shutdown`: so it is here, not in
        ``shutdown``, that backoff waits stop and a request stuck on a hung server is cut
        short. What could not be delivered is spooled (or counted, in one warning).
        """
        if self._shutdown or os.getpid() != self._pid:
            return
        deadline = time.monotonic() + EXIT_BUDGET
        self._transport.begin_exit(deadline)
        self._drops.hold()  # said once, by shutdown
        if self._wait_for_exports(deadline - _EXIT_SPOOL_TIME):
            return
        self._transport.abort_requests()
        self._wait_for_exports(deadline)

    def _wait_for_exports(self, deadline: float) -> bool:
        """Wait until no export is running, or until ``deadline``; True if none is running."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._active, deadline - time.monotonic())

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, connections and spool handle; counts carry over.

        A lock another thread held at fork time would stay held in the child forever, and
        pooled sockets would be shared with the parent. Checked by pid on each export, so no
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
        self._backlog.recover(
            self._calls_from_records, before_send=self._config.before_send is not None
        )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here (the processor batches), so there is nothing to wait for."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        """Stop: interrupt backoff waits at once, let running exports spool what they owe."""
        if self._shutdown:
            return
        self._shutdown = True
        self._transport.close()
        self._wait_for_exports(time.monotonic() + max(0.0, timeout_millis) / 1000)
        self._drops.flush()  # after the running exports, so their drops are said too
        self._transport.release()


class AltertableSpanExporter(_AltertableExporter, SpanExporter):
    """Exports spans and span events tagged with ``analytics.event`` as Altertable calls."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self._run(len(spans), lambda: map_spans(spans, self._options))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE



class AltertableLogExporter(_AltertableExporter, LogRecordExporter):
    """Exports log records tagged with ``analytics.event`` as Altertable calls."""

    _signal = "log"

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        # The exporter's own log lines, if a LoggingHandler captured them, are never exported.
        records = [r for r in batch if not _is_own_record(r)]
        ok = self._run(len(records), lambda: map_log_records(records, self._options))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE


def _watch_interpreter_exit(exporter: _AltertableExporter) -> None:
    """Call ``exporter._interpreter_exiting()`` when the interpreter exits, before the SDK's
    own exit shutdown runs.

    The SDK's providers register ``atexit`` handlers when they are built, and ``atexit`` runs
    the last registered first; an exporter is often built before its provider, so its own
    ``atexit`` handler would run too late. ``threading._register_atexit`` (Python 3.9 to 3.13
    and later) runs its callbacks when the main thread ends, before any ``atexit`` handler:
    ours registers the ``atexit`` handler only then, so it is the last registered and runs
    first, after the program's non-daemon threads have finished (a program whose main thread
    ends early keeps exporting normally). Where that hook is missing, ``atexit`` alone is used.
    Only a weak reference is held, so the exporter can still be collected.
    """
    ref = weakref.ref(exporter)

    def at_exit() -> None:
        target = ref()
        if target is not None:
            target._interpreter_exiting()

    def when_main_thread_ends() -> None:
        if ref() is not None:
            atexit.register(at_exit)

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(when_main_thread_ends)
            return
        except RuntimeError:  # already shutting down
            pass
    atexit.register(at_exit)


def _apply_before_send(
    hook: BeforeSend, calls: Calls, stats: Stats, warn_once: Callable[[str, str], None]
) -> None:
    """Run the user's ``before_send`` on every call, after mapping and before batching.

    ``None`` drops the call (counted ``before-send``); an exception or a return value that is
    not a payload dict drops that call only (counted ``before-send-error``, logged once) and
    never the export. What comes back is made JSON-safe again: a hook cannot make a request
    invalid JSON.
    """
    for endpoint, payloads in (
        ("identify", calls.identifies),
        ("alias", calls.aliases),
        ("track", calls.tracks),
    ):
        if not payloads:
            continue
        kept: list[Payload] = []
        for payload in payloads:
            try:
                result = hook(endpoint, payload)
            except Exception as exc:
                stats.drop("before-send-error", 1)
                warn_once(
                    "before-send-error",
                    f"before_send raised {type(exc).__name__}: {str(exc)[:200]}; that call was "
                    "dropped (counted as before-send-error; logged once)",
                )
                continue
            if result is None:
                stats.drop("before-send", 1)
            elif isinstance(result, Mapping):
                kept.append(json_safe(dict(result)))
            else:
                stats.drop("before-send-error", 1)
                warn_once(
                    "before-send-error",
                    f"before_send returned {type(result).__name__}, not a payload dict or None; "
                    "that call was dropped (counted as before-send-error; logged once)",
                )
        # Dropped calls were built: count them, so built = exported + dropped + spooled.
        stats.add("calls_built", len(payloads) - len(kept))
        payloads[:] = kept


def _is_own_record(record: ReadableLogRecord) -> bool:
    scope = record.instrumentation_scope
    return scope is not None and scope.name.startswith(_PACKAGE)
