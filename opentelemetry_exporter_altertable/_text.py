"""Bounded text for log lines: a value reaches a log message cut to 200 characters.

Event names, ids, environment names, server answers and exception messages come from data or
from the network; a 20 MB event name must not become a 20 MB warning. Every log call that
carries such a value passes it through :func:`clip`, which never raises.
"""

from __future__ import annotations

LIMIT = 200


def clip(value: object, limit: int = LIMIT) -> str:
    """``value`` as text, cut to ``limit`` characters with the original length said.

    Never raises: an exception of user code (a ``before_send`` hook, a session's hook) may
    have a ``__str__`` that fails, and describing a failure must not become one.
    """
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown as text>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def clip_repr(value: object, limit: int = LIMIT) -> str:
    """``repr`` of ``value`` (quoted, escaped), cut to about ``limit`` characters."""
    if isinstance(value, str):
        return repr(clip(value, limit))
    return clip(repr(value), limit)
