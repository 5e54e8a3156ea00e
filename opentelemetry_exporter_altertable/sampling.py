"""``AltertableSampler``: trace sampling that never costs an analytics event.

A service that samples 1% of its traces drops 99% of its spans at *start*, before any exporter
sees them, tagged ones included. This head sampler looks at the attributes a span starts with:
one that carries ``analytics.event``, ``analytics.alias`` or identity traits is always recorded
and sampled; every other span is decided by the delegate, as it would be without this sampler.

What it cannot do: a sampler only sees the attributes passed when the span starts
(``start_as_current_span(name, attributes={...})``). An attribute set later with
``span.set_attribute`` comes too late to rescue a span the delegate dropped. Log records are
never sampled by the SDK, so the log exporter needs no such help.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

_logger = logging.getLogger(__name__)

__all__ = ["AltertableSampler", "sampler_factory"]

_KEEP_KEYS = frozenset(
    {"analytics.event", "analytics.alias", "user.email", "user.full_name", "user.name",
     "user.roles"}
)  # fmt: skip
_KEEP_PREFIX = "analytics.traits."


def carries_analytics(attributes: Attributes) -> bool:
    """True when start attributes alone make the span an analytics record."""
    if not attributes:
        return False
    if not _KEEP_KEYS.isdisjoint(attributes):
        return True
    return any(key.startswith(_KEEP_PREFIX) for key in attributes)


class AltertableSampler(Sampler):
    """Samples every span that starts with analytics attributes; the delegate decides the rest.

    ``delegate`` defaults to ``ParentBased(ALWAYS_ON)``, the SDK's own default sampler.
    """

    def __init__(self, delegate: Sampler | None = None) -> None:
        self._delegate: Sampler = delegate if delegate is not None else ParentBased(ALWAYS_ON)

    @property
    def delegate(self) -> Sampler:
        return self._delegate

    def should_sample(  # noqa: PLR0917 (the SDK's signature)
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        try:
            keep = carries_analytics(attributes)
        except Exception:  # odd attribute mappings from user code: let the delegate decide
            keep = False
        if keep:
            parent = get_current_span(parent_context).get_span_context()
            return SamplingResult(
                Decision.RECORD_AND_SAMPLE,
                attributes,
                parent.trace_state if parent.is_valid else None,
            )
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"AltertableSampler{{{self._delegate.get_description()}}}"


def sampler_factory(argument: float | str | None = None) -> AltertableSampler:
    """The ``altertable`` entry point of ``opentelemetry_traces_sampler``.

    ``OTEL_TRACES_SAMPLER=altertable`` with ``OTEL_TRACES_SAMPLER_ARG=<ratio>`` wraps
    ``parentbased_traceidratio(<ratio>)``; without an argument, ``parentbased_always_on``.
    """
    if argument is None or (isinstance(argument, str) and not argument.strip()):
        return AltertableSampler()
    try:
        ratio = float(argument)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:  # also false for NaN
        _logger.warning(
            "OTEL_TRACES_SAMPLER_ARG=%r is not a ratio between 0 and 1; sampling every trace",
            str(argument)[:200],
        )
        return AltertableSampler()
    return AltertableSampler(ParentBased(TraceIdRatioBased(ratio)))
