"""The user's ``before_send`` hook, applied to every call after mapping, before batching.

One job: let the user scrub or drop a call without ever breaking an export. ``None`` drops the
call (counted ``before-send``); an exception or a return value that is not a payload dict drops
that call only (counted ``before-send-error``, logged once) and never the export. What comes
back is made JSON-safe again: a hook cannot make a request invalid JSON. Dropped calls are
counted as built, so built = exported + dropped + spooled still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ._config import BeforeSend
from ._mapping import Calls, Payload
from ._stats import Stats
from ._text import clip
from ._values import json_safe

__all__ = ["apply_before_send"]


def apply_before_send(
    hook: BeforeSend, calls: Calls, stats: Stats, warn_once: Callable[[str, str], None]
) -> None:
    """Run ``hook`` on every call of ``calls``, in place (see the module docstring)."""
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
                    f"before_send raised {type(exc).__name__}: {clip(exc)}; that call was "
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
        stats.add("calls_built", len(payloads) - len(kept))
        payloads[:] = kept
