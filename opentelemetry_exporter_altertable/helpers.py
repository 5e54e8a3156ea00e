"""SDK-like calls that only annotate the current span; the exporter does the rest.

They cost an attribute write or a span event, never I/O, and do nothing (returning ``False``)
when no recording span is active, so they are safe to leave in code paths without tracing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

_PRIMITIVES = (str, bool, int, float)


def _attribute_value(value: Any) -> AttributeValue:
    """Attribute values must be primitives or homogeneous sequences of them; others go as JSON."""
    if isinstance(value, _PRIMITIVES):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(type(v) is type(value[0]) and isinstance(v, _PRIMITIVES) for v in value)
    ):
        return list(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def _prefixed(prefix: str, values: Mapping[str, Any] | None) -> dict[str, AttributeValue]:
    if not values:
        return {}
    return {f"{prefix}{key}": _attribute_value(v) for key, v in values.items() if v is not None}


def track(event: str, properties: Mapping[str, Any] | None = None) -> bool:
    """Record ``event`` as a tagged event on the current span (a ``track`` call once exported)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return False
    attributes = {"analytics.event": event, **_prefixed("analytics.properties.", properties)}
    span.add_event(event, attributes)
    return True


def identify(distinct_id: str, traits: Mapping[str, Any] | None = None) -> bool:
    """Name the current span's user; with traits, the export also sends an ``identify`` call."""
    span = trace.get_current_span()
    if not span.is_recording():
        return False
    span.set_attributes(
        {"analytics.distinct_id": distinct_id, **_prefixed("analytics.traits.", traits)}
    )
    return True


def alias(new_user_id: str) -> bool:
    """Link the current span's user (its ``distinct_id``) to ``new_user_id``."""
    span = trace.get_current_span()
    if not span.is_recording():
        return False
    span.set_attribute("analytics.alias", new_user_id)
    return True
