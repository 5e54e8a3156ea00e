"""What the gRPC bridge tests share: both fronts on free ports, the SDK's gRPC exporters, and
a raw caller that sends any bytes and reports the status, details and trailers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from support import bridge_options, free_port, wire_field

from opentelemetry_exporter_altertable.bridge import BridgeServer, GrpcBridgeServer, create_bridge
from opentelemetry_exporter_altertable.bridge._cli import stop_both
from opentelemetry_exporter_altertable.bridge._grpc import LOGS_SERVICE, TRACE_SERVICE

TRACES_METHOD = f"/{TRACE_SERVICE}/Export"
LOGS_METHOD = f"/{LOGS_SERVICE}/Export"


@dataclass
class Fronts:
    http: BridgeServer
    grpc: GrpcBridgeServer

    @property
    def bridge(self) -> Any:
        return self.http.bridge


@contextmanager
def running_fronts(endpoint: str, **settings: Any) -> Iterator[Fronts]:
    """One bridge delivering to ``endpoint``, heard over HTTP and gRPC on free ports."""
    max_in_flight = settings.pop("max_in_flight", 8)
    bridge = create_bridge(**bridge_options(endpoint, **settings))
    http = BridgeServer(bridge, port=0, max_in_flight=max_in_flight).start()
    front = GrpcBridgeServer(bridge, port=0, max_in_flight=max_in_flight)
    try:
        front.start()
    except BaseException:
        http.stop()
        raise
    try:
        yield Fronts(http, front)
    finally:
        stop_both(http, front)


def grpc_span_exporter(endpoint: str, **kwargs: Any) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=endpoint, insecure=True, **kwargs)


def grpc_log_exporter(endpoint: str, **kwargs: Any) -> OTLPLogExporter:
    return OTLPLogExporter(endpoint=endpoint, insecure=True, **kwargs)


@dataclass
class Reply:
    """What a raw gRPC call got back."""

    code: grpc.StatusCode
    details: str = ""
    body: bytes = b""
    trailers: dict[str, Any] = field(default_factory=dict)


def call(
    target: str,
    method: str,
    body: bytes,
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    compression: grpc.Compression | None = None,
    timeout: float = 10.0,
    channel: grpc.Channel | None = None,
) -> Reply:
    """One unary call with ``body`` as the message bytes, as given (valid or not)."""
    own = channel is None
    chan = grpc.insecure_channel(target) if channel is None else channel
    try:
        stub = chan.unary_unary(method)
        try:
            response, rpc = stub.with_call(
                body, metadata=metadata, timeout=timeout, compression=compression
            )
        except grpc.RpcError as error:
            trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
            return Reply(error.code(), error.details() or "", b"", trailers)  # type: ignore[attr-defined]
        return Reply(grpc.StatusCode.OK, "", response, dict(rpc.trailing_metadata() or ()))
    finally:
        if own:
            chan.close()


def with_span_attributes(request_bytes: bytes, attributes: bytes) -> bytes:
    """A one-span ``ExportTraceServiceRequest`` with serialized ``KeyValue`` fields
    (``Span.attributes``, field 9) appended to its span, built without protobuf's encoder."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest.FromString(request_bytes)
    resource_spans = request.resource_spans[0]
    scope_spans = resource_spans.scope_spans[0]
    span = scope_spans.spans[0].SerializeToString() + attributes
    scope = wire_field(1, scope_spans.scope.SerializeToString()) + wire_field(2, span)
    resource = wire_field(1, resource_spans.resource.SerializeToString()) + wire_field(2, scope)
    return wire_field(1, resource)


__all__ = [
    "LOGS_METHOD",
    "TRACES_METHOD",
    "Fronts",
    "Reply",
    "call",
    "field",
    "free_port",
    "grpc_log_exporter",
    "grpc_span_exporter",
    "running_fronts",
    "with_span_attributes",
]
