"""A batch span processor that only queues spans carrying analytics data.

Use ``AltertableSpanProcessor(AltertableSpanExporter())`` instead of
``BatchSpanProcessor(AltertableSpanExporter())`` when the exporter has a pipeline of its own
(a tracer provider that also feeds OTLP, or most spans are ordinary request spans). The
SDK's ``BatchSpanProcessor`` queues every ended span; under a burst its bounded queue drops
the *oldest* spans, and the few that carry an analytics event (a signup, a purchase) are lost
among thousands of spans the exporter would skip anyway. This processor decides on the
calling thread, before queueing, so the queue only ever holds spans that become Altertable
calls, and the rest cost one cheap check.

Keep ``BatchSpanProcessor`` when the exporter is the only consumer and spans are few, or when
an exporter other than Altertable's sits behind the processor: this one would starve it of
the spans it filters out.

It takes the same arguments and ``OTEL_BSP_*`` environment variables as
``BatchSpanProcessor``, which it extends.

When the queue is full anyway (a burst of tagged spans faster than the API takes them), the
SDK drops spans with one log line each and nothing else to show for it. This processor counts
them into its exporter's ``stats()["queue_dropped"]`` and warns at most once a minute with the
count, so a lost burst is a number an operator can see and size for (``OTEL_BSP_MAX_QUEUE_SIZE``).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from ._sdk import span_has_analytics_data, span_is_page_view

logger = logging.getLogger(__name__)

__all__ = ["AltertableSpanProcessor"]


#: Seconds between two queue-drop warnings.
WARN_INTERVAL = 60.0


def _find_queue(processor: BatchSpanProcessor) -> tuple[Any, collections.deque[Any] | None]:
    """The SDK's bounded span queue, and the object that owns it (its shutdown flag).

    SDK releases keep it in different places: ``_batch_processor._queue`` in the shared batch
    processor of newer releases, ``queue`` on the processor itself in older ones. When neither
    is found, drops are not counted (the SDK still logs them).
    """
    for owner in (getattr(processor, "_batch_processor", None), processor):
        if owner is None:
            continue
        for name in ("_queue", "queue"):
            queue = getattr(owner, name, None)
            if isinstance(queue, collections.deque) and queue.maxlen:
                return owner, queue
    return None, None


class _QueueDrops:
    """Counts spans the queue dropped; warns at most once per ``interval`` with the count."""

    def __init__(self, exporter: SpanExporter, interval: float = WARN_INTERVAL) -> None:
        self._record = getattr(exporter, "_record_queue_drops", None)
        self._interval = interval
        self._lock = threading.Lock()
        self._unreported = 0
        self.total = 0
        self._last = time.monotonic() - interval
        self._pid = os.getpid()

    def add(self, count: int = 1) -> None:
        if self._pid != os.getpid():  # a lock held at fork time would stay held in the child
            self._pid = os.getpid()
            self._lock = threading.Lock()
        now = time.monotonic()
        with self._lock:
            self.total += count
            self._unreported += count
            if now - self._last < self._interval:
                pending = 0
            else:
                self._last = now
                pending, self._unreported = self._unreported, 0
        if self._record is not None:
            self._record(count)
        if pending:
            self._warn(pending)

    def flush(self) -> None:
        with self._lock:
            pending, self._unreported = self._unreported, 0
        if pending:
            self._warn(pending)

    def _warn(self, count: int) -> None:
        logger.warning(
            "AltertableSpanProcessor's queue was full: %d tagged span(s) dropped (%d in all); "
            "raise OTEL_BSP_MAX_QUEUE_SIZE (and OTEL_BSP_MAX_EXPORT_BATCH_SIZE) for bursts",
            count,
            self.total,
        )



class AltertableSpanProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` that queues only spans with analytics data (see the module doc)."""

    _check_failed_logged = False

    # Same signature as the SDK's (which differs between releases): wraps() exposes it.
    @functools.wraps(BatchSpanProcessor.__init__)  # type: ignore[misc]
    def __init__(self, span_exporter: SpanExporter, *args: Any, **kwargs: Any) -> None:
        super().__init__(span_exporter, *args, **kwargs)
        self._queue_drops = _QueueDrops(span_exporter)
        config = getattr(span_exporter, "config", None)
        self._pageviews = bool(getattr(config, "pageviews", False))

    def on_end(self, span: ReadableSpan) -> None:
        try:
            wanted = span_has_analytics_data(span) or (
                self._pageviews and span_is_page_view(span)
            )
        except Exception:
            # Never raise into ``span.end()``; when in doubt queue it and let the exporter,
            # which handles bad records on its own, decide.
            if not self._check_failed_logged:
                self._check_failed_logged = True
                logger.warning(
                    "Could not inspect a span for analytics data; queueing it", exc_info=True
                )
            wanted = True
        if not wanted:
            return
        # Looked up per span: a fork re-initialises the SDK's queue in some releases.
        owner, queue = _find_queue(self)
        if (
            queue is not None
            and len(queue) == queue.maxlen
            and span.context is not None
            and span.context.trace_flags.sampled
            and not getattr(owner, "_shutdown", False)
            and not getattr(self, "done", False)
        ):
            self._queue_drops.add(1)
        super().on_end(span)

    def shutdown(self) -> None:
        # Untyped in some SDK releases, typed in others: call it through a typed view.
        cast("Callable[[], None]", super().shutdown)()
        self._queue_drops.flush()
