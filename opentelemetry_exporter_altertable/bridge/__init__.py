"""The OTLP bridge: services in any language, and Collectors, send analytics through it.

``altertable-otel bridge`` (see :mod:`._cli`) serves ``POST /v1/traces`` and ``/v1/logs``
(protobuf or OTLP JSON, gzip accepted) and, on its gRPC port (:mod:`._grpc`),
``TraceService/Export`` and ``LogsService/Export``; it reads each request into the mapping's
neutral records (:mod:`._decode`), maps them exactly as the in-process exporters do, keeps
the calls in its journal and delivers them in the background (:mod:`._acknowledged`), or,
without a journal, delivers them before answering (:mod:`._delivery`), answering by the OTLP
rules (:mod:`._app`). Needs the ``otlp`` extra (``protobuf``,
``opentelemetry-proto``, ``grpcio``).

In code::

    from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge

    with BridgeServer(create_bridge(api_key="..."), port=0) as server:
        ...  # point OTEL_EXPORTER_OTLP_ENDPOINT at server.endpoint
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import DEFAULT_MAX_BODY_BYTES, DEFAULT_RETRY_AFTER, Answer, Bridge
    from ._delivery import Delivery, Outcome
    from ._factory import DEFAULT_BRIDGE_TIMEOUT, TOKEN_VARIABLE, create_bridge
    from ._grpc import DEFAULT_GRPC_PORT, GrpcBridgeServer
    from ._server import DEFAULT_HOST, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PORT, BridgeServer

#: Where each public name lives. Imported on first use, so ``altertable-otel --help`` works
#: (and says how to install the ``otlp`` extra) without protobuf installed.
_HOMES = {
    "DEFAULT_BRIDGE_TIMEOUT": "_factory",
    "TOKEN_VARIABLE": "_factory",
    "create_bridge": "_factory",
    "DEFAULT_MAX_BODY_BYTES": "_app",
    "DEFAULT_RETRY_AFTER": "_app",
    "Answer": "_app",
    "Bridge": "_app",
    "Delivery": "_delivery",
    "Outcome": "_delivery",
    "DEFAULT_HOST": "_server",
    "DEFAULT_MAX_IN_FLIGHT": "_server",
    "DEFAULT_PORT": "_server",
    "BridgeServer": "_server",
    "DEFAULT_GRPC_PORT": "_grpc",
    "GrpcBridgeServer": "_grpc",
}
__all__ = [
    "DEFAULT_BRIDGE_TIMEOUT",
    "DEFAULT_GRPC_PORT",
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
    "GrpcBridgeServer",
    "Outcome",
    "create_bridge",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
