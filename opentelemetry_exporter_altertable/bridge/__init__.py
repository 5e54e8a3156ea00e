"""The OTLP/HTTP bridge: services in any language, and Collectors, send analytics through it.

``altertable-otel bridge`` (see :mod:`._cli`) serves ``POST /v1/traces`` and ``/v1/logs``
(protobuf or OTLP JSON, gzip accepted), reads each request into the mapping's neutral records
(:mod:`._decode`), maps them exactly as the in-process exporters do and delivers the calls
through the exporters' own transport and spool (:mod:`._delivery`), answering by the OTLP/HTTP
rules (:mod:`._app`). Needs the ``otlp`` extra (``protobuf``, ``opentelemetry-proto``).

In code::

    from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge

    with BridgeServer(create_bridge(api_key="..."), port=0) as server:
        ...  # point OTEL_EXPORTER_OTLP_ENDPOINT at server.endpoint
"""

from __future__ import annotations

import os
from typing import Any

from .. import environment_variables as ev
from ._app import DEFAULT_MAX_BODY_BYTES, DEFAULT_RETRY_AFTER, Answer, Bridge
from ._delivery import Delivery, Outcome
from ._server import DEFAULT_HOST, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PORT, BridgeServer

__all__ = [
    "DEFAULT_BRIDGE_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_PORT",
    "DEFAULT_RETRY_AFTER",
    "TOKEN_VARIABLE",
    "Answer",
    "Bridge",
    "BridgeServer",
    "Delivery",
    "Outcome",
    "create_bridge",
]

TOKEN_VARIABLE = "ALTERTABLE_BRIDGE_TOKEN"
#: Seconds one request's delivery may take when no timeout is set: below the 10 s an OTLP
#: sender waits by default, so a sender hears 503 (and retries) rather than timing out.
DEFAULT_BRIDGE_TIMEOUT = 5.0


def create_bridge(
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    retry_after: int = DEFAULT_RETRY_AFTER,
    **settings: Any,
) -> Bridge:
    """A :class:`Bridge` delivering with the exporters' settings (arguments, then variables).

    ``settings`` are the exporters' keyword arguments (``api_key``, ``endpoint``,
    ``environment``, ``timeout``, ``spool_dir``, ...); ``token`` falls back to
    ``ALTERTABLE_BRIDGE_TOKEN``.
    """
    if settings.get("timeout") is None and not os.environ.get(
        ev.OTEL_EXPORTER_ALTERTABLE_TIMEOUT, ""
    ).strip():
        settings["timeout"] = DEFAULT_BRIDGE_TIMEOUT
    if token is None:
        token = os.environ.get(TOKEN_VARIABLE, "").strip() or None
    return Bridge(
        Delivery(**settings), token=token, max_body_bytes=max_body_bytes, retry_after=retry_after
    )
