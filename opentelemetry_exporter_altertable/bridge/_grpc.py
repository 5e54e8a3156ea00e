"""The bridge's gRPC front: OTLP/gRPC on a port, the HTTP front's rules in gRPC's words.

``TraceService/Export`` and ``LogsService/Export`` reach the same :class:`~._app.Bridge` as
``POST /v1/traces`` and ``/v1/logs`` (one reader of OTLP protobuf in :mod:`._decode`, one
mapping, one delivery and spool): gRPC only frames the message, undoes its compression and
carries the answer. The bridge's answer is said the gRPC way:

- 200: OK with the ``Export{Trace,Logs}ServiceResponse`` (``partial_success`` included);
- 503: UNAVAILABLE with ``google.rpc.RetryInfo``, both where gRPC's own status details go
  (the ``grpc-status-details-bin`` trailer, a ``google.rpc.Status``: what the Collector and
  the Go, Java and .NET SDKs read) and in the ``google.rpc.retryinfo-bin`` trailer (what the
  Python SDK reads), so every sender waits and retries instead of dropping the data;
- 400: INVALID_ARGUMENT; 401: UNAUTHENTICATED (the ``--token`` bearer is read from the
  ``authorization`` metadata); 413: RESOURCE_EXHAUSTED. A message past the size limit,
  compressed or once inflated, is refused by gRPC itself with RESOURCE_EXHAUSTED before it is
  handed over.

Work and memory are bounded as on the HTTP front: at most ``max_in_flight`` messages are
decoded and delivered at once (more get UNAVAILABLE with ``RetryInfo`` at once), a bounded
pool of threads runs them, gRPC holds at most ``max_pending`` calls in all (it refuses the rest
with RESOURCE_EXHAUSTED), an HTTP/2 connection carries at most ``max_streams`` calls at a
time, and connections that sit idle, never finish their handshake or stop answering
keepalive pings are closed; every connection is asked to go away after the request deadline
and cut a grace later, so a call stalled mid-message cannot hold a thread for ever. Browsers
cannot call a gRPC service (its content type needs a CORS preflight nobody answers here), so no
``Origin`` or ``Host`` screening is needed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration

from ._app import PROTOBUF, Answer, Bridge
from ._decode import LOGS, TRACES

_logger = logging.getLogger(__name__)

DEFAULT_GRPC_PORT = 4317
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
#: gRPC method -> the bridge path whose rules it follows.
METHODS = {f"/{TRACE_SERVICE}/Export": TRACES, f"/{LOGS_SERVICE}/Export": LOGS}
#: Concurrent calls on one HTTP/2 connection (the HTTP/2 default is unlimited).
DEFAULT_MAX_STREAMS = 32
#: Calls gRPC holds in all (running or waiting for a thread), per ``max_in_flight`` slot.
_PENDING_PER_SLOT = 4
#: Threads beyond ``max_in_flight``: they answer the calls over capacity at once.
_SPARE_THREADS = 2
_RETRY_INFO_URL = "type.googleapis.com/google.rpc.RetryInfo"
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}


# --------------------------------------------------------------------------- status details


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings, bytes, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def retry_info(seconds: int) -> bytes:
    """A serialized ``google.rpc.RetryInfo`` asking to wait ``seconds``."""
    return _field(1, Duration(seconds=seconds).SerializeToString())


def status_details(code: grpc.StatusCode, message: str, retry_after: int = 0) -> bytes:
    """A serialized ``google.rpc.Status``, with a ``RetryInfo`` detail when ``retry_after``.

    Hand-encoded (three fields) so the ``otlp`` extra needs no googleapis-common-protos.
    """
    number = code.value[0]
    body = _varint(1 << 3) + _varint(number) + _field(2, message.encode("utf-8"))
    if retry_after:
        detail = _field(1, _RETRY_INFO_URL.encode("ascii")) + _field(2, retry_info(retry_after))
        body += _field(3, detail)
    return body


def _retry_after(answer: Answer) -> int:
    for name, value in answer.headers:
        if name.lower() == "retry-after" and value.isdigit():
            return int(value)
    return 0


# --------------------------------------------------------------------------- the service


class _Service(grpc.GenericRpcHandler):
    """Both Export methods; request and response bytes pass through untouched (the bridge
    parses them itself, so an undecodable message is INVALID_ARGUMENT, not INTERNAL)."""

    def __init__(self, server: GrpcBridgeServer) -> None:
        self._server = server
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            method: grpc.unary_unary_rpc_method_handler(self._export(path))
            for method, path in METHODS.items()
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(handler_call_details.method)

    def _export(self, path: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self._server._answer(path, request, context)

        return export


class GrpcBridgeServer:
    """The bridge on an OTLP/gRPC port: ``with GrpcBridgeServer(bridge, port=0) as s:``.

    ``port=0`` picks a free port (tests). It shares ``bridge`` (and so its delivery) with an
    HTTP front; ``stop()`` shuts the delivery down only when asked to, so whoever owns both
    fronts stops the two before the delivery.
    """

    def __init__(
        self,
        bridge: Bridge,
        host: str = "127.0.0.1",
        port: int = DEFAULT_GRPC_PORT,
        *,
        max_in_flight: int = 8,
        max_streams: int = DEFAULT_MAX_STREAMS,
        idle_timeout: float = 60.0,
    ) -> None:
        if max_in_flight < 1 or max_streams < 1:
            raise ValueError("max_in_flight and max_streams must be at least 1")
        self.bridge = bridge
        self.host = host
        self.port = port
        self.max_in_flight = max_in_flight
        self.max_streams = max_streams
        self.max_pending = max_in_flight * _PENDING_PER_SLOT
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._stopping = False
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._answers: Counter[tuple[str, str]] = Counter()

    # -- answers

    def answers(self) -> Counter[tuple[str, str]]:
        """Answers so far by ``(path, gRPC status name)``, e.g. ``("/v1/traces", "OK")``."""
        with self._lock:
            return Counter(self._answers)

    def _count(self, path: str, code: grpc.StatusCode) -> None:
        with self._lock:
            self._answers[(path, code.name)] += 1

    def _answer(self, path: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        headers = {"content-type": PROTOBUF}
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                headers["authorization"] = value
        bridge = self.bridge
        if not bridge.authorized(headers):
            self._abort(context, path, 401, "missing or wrong bearer token")
        if self._stopping or not self._slots.acquire(blocking=False):
            why = "the bridge is stopping" if self._stopping else "the bridge is at capacity"
            self._abort(context, path, 503, f"{why}; retry later", bridge.retry_after)
        try:
            answer = bridge.handle(path, headers, request)
        except Exception:  # a bug must not become gRPC's bare UNKNOWN with no log line
            _logger.exception("bridge: internal error handling %s over gRPC", path)
            self._abort(context, path, 500, "internal error in the bridge")
        finally:
            self._slots.release()
        if answer.status != 200:
            message = answer.message or f"refused with HTTP status {answer.status}"
            self._abort(context, path, answer.status, message, _retry_after(answer))
        self._count(path, grpc.StatusCode.OK)
        return answer.body

    def _abort(
        self,
        context: grpc.ServicerContext,
        path: str,
        status: int,
        message: str,
        retry_after: int = 0,
    ) -> NoReturn:
        code = _CODES.get(status, grpc.StatusCode.INTERNAL)
        self._count(path, code)
        trailers: tuple[tuple[str, str | bytes], ...] = (
            ("grpc-status-details-bin", status_details(code, message, retry_after)),
        )
        if retry_after:
            trailers += (("google.rpc.retryinfo-bin", retry_info(retry_after)),)
        context.set_trailing_metadata(trailers)
        context.abort(code, message)

    # -- lifecycle

    def _connection_age(self) -> tuple[int, int]:
        """``grpc.max_connection_age_ms`` and its grace, from the HTTP front's deadline.

        gRPC reads a unary call's message on a pool thread, with no deadline of its own: a
        call that sends its headers and part of its message, then stalls, holds that thread
        for as long as its connection lives, and a connection with an open call is never
        idle (and its peer may answer pings). So every connection ends: after the request
        deadline it is asked to go away (a sender's next call opens a new one), and a call
        still open a grace later is cut, its thread freed. The grace is what a call begun
        just before that needs: the deadline to arrive, the delivery's timeout (and a
        second) to be answered.
        """
        deadline = self.bridge.bounds.request_deadline
        grace = deadline + self.bridge.delivery.config.timeout + 1.0
        return max(1000, int(deadline * 1000)), max(1000, int(grace * 1000))

    def _options(self) -> list[tuple[str, Any]]:
        idle_ms = max(1000, int(self.idle_timeout * 1000))
        age_ms, age_grace_ms = self._connection_age()
        return [
            # A taken port is an error, never a second listener sharing it (Linux's default
            # for gRPC): two bridges on one port would split a sender's calls between them.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.bridge.max_body_bytes),
            ("grpc.max_send_message_length", 1 << 20),
            ("grpc.max_concurrent_streams", self.max_streams),
            ("grpc.max_metadata_size", 16 * 1024),
            # Connections: idle ones closed, a handshake that never ends cut, a peer that
            # stops answering pings dropped (its calls cancelled, their threads freed).
            ("grpc.max_connection_idle_ms", idle_ms),
            # A call that stalls mid-message is cut with its connection (see _connection_age).
            ("grpc.max_connection_age_ms", age_ms),
            ("grpc.max_connection_age_grace_ms", age_grace_ms),
            ("grpc.server_handshake_timeout_ms", 10_000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Senders that ping to keep their connection (a Collector's keepalive) are welcome.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]

    def start(self) -> GrpcBridgeServer:
        """Bind and serve; ``OSError`` when the address cannot be bound (a taken port),
        ``ValueError`` beyond loopback without a token (as the HTTP front)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the gRPC bridge is already running")
            self.bridge.check_host(self.host)
            pool = ThreadPoolExecutor(
                max_workers=self.max_in_flight + _SPARE_THREADS,
                thread_name_prefix="altertable-bridge-grpc",
            )
            server = grpc.server(
                pool,
                handlers=[_Service(self)],
                options=self._options(),
                maximum_concurrent_rpcs=self.max_pending,
            )
            host = f"[{self.host}]" if ":" in self.host else self.host
            try:
                port = server.add_insecure_port(f"{host}:{self.port}")
            except RuntimeError:
                port = 0
            if not port:
                server.stop(None)
                pool.shutdown(wait=False)
                raise OSError(98, f"cannot listen on {host}:{self.port} (address in use?)")
            server.start()
            self._server, self._pool, self.port = server, pool, port
            self._stopping = False
            return self

    def refuse_new_calls(self) -> None:
        """From now on a new call hears UNAVAILABLE with RetryInfo (what :meth:`stop` does
        first); called the moment a stop is decided, before anything says it is stopping."""
        self._stopping = True

    def stop(self, grace: float | None = None, *, shutdown_delivery: bool = True) -> None:
        """Refuse new calls, let those already taken finish (within ``grace``, by default the
        delivery timeout plus a second), then shut the delivery down if asked."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        delivery = self.bridge.delivery
        wait = delivery.config.timeout + 1.0 if grace is None else grace
        # New calls hear UNAVAILABLE with RetryInfo (a sender waits and retries) while those
        # taken finish; then gRPC stops, cancelling only what is still queued after that.
        self.refuse_new_calls()
        if not self._wait_handled(wait):
            _logger.warning("bridge: gRPC calls still running after %.1fs", wait)
        server.stop(1.0).wait(2.0)
        self._pool.shutdown(wait=False)
        if shutdown_delivery:
            delivery.shutdown(timeout_millis=1000)

    def _wait_handled(self, timeout: float) -> bool:
        """Wait until no call is being decoded or delivered (every slot free)."""
        deadline = time.monotonic() + timeout
        taken = 0
        try:
            for _ in range(self.max_in_flight):
                if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    return False
                taken += 1
            return True
        finally:
            for _ in range(taken):
                self._slots.release()

    def __enter__(self) -> GrpcBridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def target(self) -> str:
        """``host:port`` as a gRPC channel takes it."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The URL an OTLP/gRPC exporter takes, e.g. ``http://127.0.0.1:4317``."""
        if self._server is None:
            raise RuntimeError("the gRPC bridge is not running; call start() first")
        return f"http://{self.target}"


__all__ = [
    "DEFAULT_GRPC_PORT",
    "LOGS_SERVICE",
    "METHODS",
    "TRACE_SERVICE",
    "GrpcBridgeServer",
    "retry_info",
    "status_details",
]
