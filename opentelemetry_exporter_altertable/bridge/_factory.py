"""Building a bridge from the exporters' settings (arguments, then environment variables)."""

from __future__ import annotations

import os
from typing import Any

from .. import environment_variables as ev
from .._http_server import ListenerBounds
from ._app import DEFAULT_MAX_BODY_BYTES, DEFAULT_RETRY_AFTER, Bridge
from ._delivery import Delivery

TOKEN_VARIABLE = "ALTERTABLE_BRIDGE_TOKEN"
#: Seconds one request's delivery may take when no timeout is set: below the 10 s an OTLP
#: sender waits by default, so a sender hears 503 (and retries) rather than timing out.
DEFAULT_BRIDGE_TIMEOUT = 5.0


def default_journal_dir() -> str:
    """Where ``altertable-otel bridge`` keeps its journal when no spool directory is set:
    ``$XDG_STATE_HOME/altertable-otel/bridge``, else ``~/.local/state/altertable-otel/bridge``."""
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    if not state or not os.path.isabs(state):  # the XDG rule: a relative path is ignored
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "altertable-otel", "bridge")


def create_bridge(
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    retry_after: int = DEFAULT_RETRY_AFTER,
    bounds: ListenerBounds | None = None,
    **settings: Any,
) -> Bridge:
    """A :class:`Bridge` delivering with the exporters' settings (arguments, then variables).

    ``settings`` are the exporters' keyword arguments (``api_key``, ``endpoint``,
    ``environment``, ``timeout``, ``spool_dir``, ...) and :class:`Delivery`'s (``journal``:
    with a spool directory, answer once the calls are journaled, the default;
    ``parallel_requests``, ``delivery_threads``); ``token`` falls back to
    ``ALTERTABLE_BRIDGE_TOKEN``. ``bounds`` limits what one request may hold (its
    ``max_body_bytes`` is replaced by the argument of that name).
    """
    if (
        settings.get("timeout") is None
        and not os.environ.get(ev.OTEL_EXPORTER_ALTERTABLE_TIMEOUT, "").strip()
    ):
        settings["timeout"] = DEFAULT_BRIDGE_TIMEOUT
    if token is None:
        token = os.environ.get(TOKEN_VARIABLE, "").strip() or None
    return Bridge(
        Delivery(**settings),
        token=token,
        max_body_bytes=max_body_bytes,
        retry_after=retry_after,
        bounds=bounds,
    )
