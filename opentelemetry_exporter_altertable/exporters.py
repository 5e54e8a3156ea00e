"""The two exporters: mapping in, transport (and spool) out; thin on purpose.

``export`` never raises into the SDK and never runs past ``timeout``: every failure becomes a
log line, a counter and a ``FAILURE`` result, and what is still owed goes to the spool when one
is configured.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import requests
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import environment_variables as ev
from ._config import ExporterConfig, resolve_config
from ._mapping import Calls, MappingOptions, Payload, _freeze
from ._retry import RetryPolicy
from ._sdk import map_log_records, map_spans
from ._spool import Spool
from ._stats import DropReporter, Stats, self_metrics
from ._transport import CONFIG_ERRORS, DeliveryReport, Transport

_logger = logging.getLogger(__name__)
_PACKAGE = __name__.rpartition(".")[0]

#: How many spooled files one export may replay before sending its own calls.
_REPLAY_FILES_PER_EXPORT = 8


class _WarnOnce:
    """Logs each mapping warning once per exporter (bounded, so hostile data cannot grow it)."""

    def __init__(self, max_keys: int = 1024) -> None:
        self._seen: set[str] = set()
        self._max = max_keys
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str) -> None:
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
    """What both exporters share: configuration, delivery, spool, counters, lifecycle."""

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
        )
        self._stats = Stats()
        self._metrics = self_metrics(self._signal, f"{id(self):x}", meter_provider)
        self._drops = DropReporter()
        self._transport = Transport(self._config, session, self._stats)
        self._identified = _IdentifyCache()
        self._warn_once = _WarnOnce()
        self._options = MappingOptions(
            environment=self._config.environment, on_warning=self._warn_once
        )
        self._spool: Spool | None = None
        self._spool_may_have_files = False
        if self._config.spool_dir:
            try:
                self._spool = self._open_spool()
            except ValueError as exc:  # a directory we must not write to: say so, go on without
                _logger.error("Altertable spool disabled: %s", exc)
            else:
                self._spool_may_have_files = True
        self._shutdown = False
        self._idle = threading.Condition()
        self._active = 0
        self._pid = os.getpid()
        if not self._config.api_key:
            _logger.error(
                "No Altertable API key: set %s (or %s), or pass api_key=...; "
                "nothing will be exported until then",
                ev.OTEL_EXPORTER_ALTERTABLE_API_KEY,
                ev.ALTERTABLE_API_KEY,
            )

    def _open_spool(self) -> Spool:
        # A claim must outlive any export that could still be sending it.
        return Spool(
            self._config.spool_dir or "",
            max_bytes=self._config.spool_max_bytes,
            stale_claim_age=max(600.0, 4 * self._config.timeout),
        )

    @property
    def config(self) -> ExporterConfig:
        return self._config

    def stats(self) -> dict[str, object]:
        """Counters since construction, as a plain dict (see the README for each key)."""
        if self._spool is None:
            return self._stats.snapshot()
        snapshot = self._stats.snapshot(also_dropped=self._spool.lost)
        snapshot["spool_files"], snapshot["spool_bytes"] = self._spool.pending()
        return snapshot

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

    def _deliver(self, calls: Calls) -> str | None:
        """Send (after replaying the spool); ``None`` on full success, else why not."""
        deadline = time.monotonic() + self._config.timeout
        if calls.identifies:
            calls.identifies = self._identified.unseen(calls.identifies)
        self._stats.add("calls_built", len(calls))
        if self._spool is not None and self._spool_may_have_files:
            try:
                self._replay(deadline)
            except ValueError as exc:  # the spool directory became unsafe to use
                self._disable_spool(exc)
        by_endpoint = calls.by_endpoint()
        if not by_endpoint:
            return None
        report = self._transport.deliver(by_endpoint, deadline)
        if calls.identifies and "identify" not in report.pending and not report.rejected:
            self._identified.remember(calls.identifies)
        self._keep_pending(report)
        if report.pending:
            return report.pending_reason or "retryable"
        return "rejected" if report.rejected else None

    def _keep_pending(self, report: DeliveryReport) -> None:
        """Spool what is still owed, or count it lost; then log this export's drops once."""
        dropped = Counter(report.rejected)
        owed = sum(len(v) for v in report.pending.values())
        detail = report.detail
        if owed:
            reason = report.pending_reason or "retryable"
            kept = 0
            if self._spool is not None:
                try:
                    kept = self._spool.put(report.pending, reason=_spool_reason(reason))
                except ValueError as exc:
                    self._disable_spool(exc)
                else:
                    self._spool_may_have_files = self._spool_may_have_files or kept > 0
                    self._stats.add("calls_spooled", kept)
                    if kept < owed:
                        self._stats.drop("spool-refused", owed - kept)
                        dropped["spool-refused"] += owed - kept
            if self._spool is None:
                self._stats.drop(f"undelivered-{reason}", owed)
                dropped[f"undelivered ({reason})"] += owed
                detail = (
                    f"set {ev.OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR} to keep undelivered calls on disk"
                )
        self._drops.report(dropped, detail)

    def _disable_spool(self, exc: Exception) -> None:
        _logger.error("Altertable spool disabled: %s", exc)
        self._spool = None

    def _replay(self, deadline: float) -> None:
        """Re-send spooled calls, oldest first, while the API accepts them."""
        assert self._spool is not None
        for _ in range(_REPLAY_FILES_PER_EXPORT):
            if time.monotonic() >= deadline or self._transport.closed:
                return
            claim = self._spool.claim()
            if claim is None:
                self._spool_may_have_files = False
                return
            report = self._transport.deliver(claim.calls, deadline)
            self._stats.add("calls_replayed", sum(report.accepted.values()))
            self._drops.report(report.rejected, report.detail)
            if report.pending:
                if sum(report.accepted.values()) or report.rejected:
                    # Part went through: keep only what is still owed, in a fresh file.
                    claim.done()
                    reason = report.pending_reason
                    self._spool.put(
                        report.pending, reason=_spool_reason(reason) if reason else claim.reason
                    )
                else:
                    claim.release()
                return
            claim.done()

    # ------------------------------------------------------------------ lifecycle

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
        if self._spool is not None:
            try:
                self._spool = self._open_spool()
            except ValueError as exc:
                self._disable_spool(exc)
            else:
                self._spool_may_have_files = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here (the processor batches), so there is nothing to wait for."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        """Stop: interrupt backoff waits at once, let running exports spool what they owe."""
        if self._shutdown:
            return
        self._shutdown = True
        self._transport.close()
        self._drops.flush()
        deadline = time.monotonic() + max(0.0, timeout_millis) / 1000
        with self._idle:
            while self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
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


def _spool_reason(reason: str) -> str:
    """Calls refused for a setting the operator can fix are kept only for a while ("auth")."""
    return "auth" if reason in CONFIG_ERRORS else "retryable"


def _is_own_record(record: ReadableLogRecord) -> bool:
    scope = record.instrumentation_scope
    return scope is not None and scope.name.startswith(_PACKAGE)
