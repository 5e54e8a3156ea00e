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
"""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ._sdk import span_has_analytics_data

logger = logging.getLogger(__name__)

__all__ = ["AltertableSpanProcessor"]


class AltertableSpanProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` that queues only spans with analytics data (see the module doc)."""

    _check_failed_logged = False

    def on_end(self, span: ReadableSpan) -> None:
        try:
            wanted = span_has_analytics_data(span)
        except Exception:
            # Never raise into ``span.end()``; when in doubt queue it and let the exporter,
            # which handles bad records on its own, decide.
            if not self._check_failed_logged:
                self._check_failed_logged = True
                logger.warning(
                    "Could not inspect a span for analytics data; queueing it", exc_info=True
                )
            wanted = True
        if wanted:
            super().on_end(span)
