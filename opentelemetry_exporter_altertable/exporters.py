"""The two exporters: an SDK signal in, the shared exporter core behind; thin on purpose.

Each exporter reads its SDK objects into neutral records and hands the core a way to map them
(:mod:`._core` does configuration, the run, counters, lifecycle and fork handling). ``export``
never raises into the SDK and never runs past ``timeout``: every failure becomes a log line, a
counter and a ``FAILURE`` result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import requests
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ._config import BeforeSend, ExporterConfig
from ._core import ExporterCore
from ._retry import RetryPolicy
from ._sdk import map_log_records, map_spans

_PACKAGE = __name__.rpartition(".")[0]


class _AltertableExporter:
    """What both exporters share: the settings, and the core they hand every export to."""

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
        """Each argument falls back to its ``OTEL_EXPORTER_ALTERTABLE_*`` variable, then a
        default, so the exporter also builds with no arguments (as ``opentelemetry-instrument``
        builds it). A bad argument raises ``ValueError``; a bad variable is logged and ignored.
        """
        self._core = ExporterCore(
            self._signal,
            session=session,
            meter_provider=meter_provider,
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

    @property
    def config(self) -> ExporterConfig:
        """The settings in force: argument, then environment, then default (key not shown)."""
        return self._core.config

    def _record_queue_drops(self, count: int) -> None:
        """Called by the Altertable processors for the records their full queue dropped."""
        self._core.record_queue_drops(count)

    def stats(self) -> dict[str, object]:
        """Counters since construction, as a plain dict (each key is in the docs' counters page)."""
        return self._core.stats()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here (the processor batches), so there is nothing to wait for."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        """Stop: interrupt backoff waits at once, let running exports spool what they owe."""
        self._core.shutdown(timeout_millis)


class AltertableSpanExporter(_AltertableExporter, SpanExporter):
    """Exports spans and span events tagged with ``analytics.event`` as Altertable calls."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self._core.run(len(spans), lambda: map_spans(spans, self._core.options)).ok
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class AltertableLogExporter(_AltertableExporter, LogRecordExporter):
    """Exports log records tagged with ``analytics.event`` as Altertable calls."""

    _signal = "log"

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        # The exporter's own log lines, if a LoggingHandler captured them, are never exported.
        records = [r for r in batch if not _is_own_record(r)]
        options = self._core.options
        ok = self._core.run(len(records), lambda: map_log_records(records, options)).ok
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE


def _is_own_record(record: ReadableLogRecord) -> bool:
    scope = record.instrumentation_scope
    return scope is not None and scope.name.startswith(_PACKAGE)
