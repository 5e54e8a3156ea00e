"""``altertable-otel bridge``, and the OTLP routes ``altertable-otel serve`` adds to its port.

Registering the command imports nothing beyond the standard library: without the ``otlp``
extra, ``bridge`` still shows in ``--help`` and says how to install what it needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._http_server import ListenerBounds
from .._secrets import secret_argument

if TYPE_CHECKING:
    from ..receiver import LocalReceiver
    from ._app import Bridge

_INSTALL_HINT = "pip install 'opentelemetry-exporter-altertable[otlp]'"
#: Exporter settings as flags: (flag, keyword, type, the variable it overrides).
_SETTINGS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("--api-key", "api_key", secret_argument, "OTEL_EXPORTER_ALTERTABLE_API_KEY"),
    ("--endpoint", "endpoint", str, "OTEL_EXPORTER_ALTERTABLE_ENDPOINT"),
    ("--environment", "environment", str, "OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT"),
    ("--timeout", "timeout", float, "OTEL_EXPORTER_ALTERTABLE_TIMEOUT"),
    ("--max-batch-size", "max_batch_size", int, "OTEL_EXPORTER_ALTERTABLE_MAX_BATCH_SIZE"),
    ("--compression", "compression", str, "OTEL_EXPORTER_ALTERTABLE_COMPRESSION"),
    ("--spool-dir", "spool_dir", str, "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR"),
    ("--spool-max-bytes", "spool_max_bytes", int, "OTEL_EXPORTER_ALTERTABLE_SPOOL_MAX_BYTES"),
)


def add_parser(subparsers: Any, run: Callable[[argparse.Namespace], int]) -> None:
    """Register ``bridge``; ``run`` is the command's body (the CLI wraps it for its errors)."""
    parser = subparsers.add_parser(
        "bridge",
        help="receive OTLP (any language, any Collector) and send the analytics on",
        description=(
            "An OTLP receiver for POST /v1/traces and /v1/logs (protobuf or JSON, gzip) and, "
            "on the gRPC port, TraceService/Export and LogsService/Export: "
            "tagged spans, span events and log records become Altertable calls exactly as "
            "with the in-process exporters, through the same delivery and spool. Every "
            "setting falls back to its OTEL_EXPORTER_ALTERTABLE_* variable. "
            f"Needs the otlp extra: {_INSTALL_HINT}."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=4318, help="port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=4317,
        help="OTLP/gRPC port; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--no-grpc", action="store_true", help="do not listen for OTLP/gRPC (HTTP only)"
    )
    parser.add_argument(
        "--token",
        default=None,
        type=secret_argument,
        help="require Authorization: Bearer TOKEN; @FILE reads it from a file (a flag is "
        "visible to every user in ps; default: $ALTERTABLE_BRIDGE_TOKEN, else none)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        dest="allow_origins",
        default=[],
        metavar="ORIGIN",
        help="a web origin (e.g. https://app.example.com) whose browser OTLP exporters may "
        "send here (repeatable); requests from any other origin get 403",
    )
    for flag, dest, kind, variable in _SETTINGS:
        secret = " (or @FILE)" if kind is secret_argument else ""
        parser.add_argument(
            flag, dest=dest, type=kind, default=None, help=f"default: ${variable}{secret}"
        )
    parser.add_argument(
        "--sync", action="store_true", default=None, help="default: $OTEL_EXPORTER_ALTERTABLE_SYNC"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="larger bodies (compressed or not) get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=8,
        help="requests handled at once; more get 503 + Retry-After (default: %(default)s)",
    )
    bounds = ListenerBounds()
    parser.add_argument(
        "--max-connections",
        type=int,
        default=bounds.max_connections,
        help="open connections; more are answered 503 at once (default: %(default)s)",
    )
    parser.add_argument(
        "--request-deadline",
        type=float,
        default=bounds.request_deadline,
        metavar="SECONDS",
        help="time to send one whole request, headers and body (default: %(default)s)",
    )
    parser.add_argument(
        "--no-journal",
        action="store_true",
        help="answer only once the calls are delivered (or spooled), instead of once they are "
        "in the journal (default: journaled, in --spool-dir, else "
        "$XDG_STATE_HOME/altertable-otel/bridge or ~/.local/state/altertable-otel/bridge)",
    )
    parser.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The exporter keyword arguments given as flags (the others come from the environment)."""
    given = {dest: getattr(args, dest) for _, dest, _, _ in _SETTINGS}
    given["sync"] = args.sync
    return {key: value for key, value in given.items() if value is not None}


def run_bridge(args: argparse.Namespace, fail: Callable[[str], Exception]) -> int:
    """Serve until SIGINT/SIGTERM; then finish the requests in hand and exit 0."""
    try:
        from ._server import BridgeServer
    except ImportError as exc:
        missing = exc.name or "protobuf"
        raise fail(
            f"the bridge needs the otlp extra ({missing} is missing): {_INSTALL_HINT}"
        ) from None
    if args.max_body_bytes < 1 or args.max_in_flight < 1:
        raise fail("--max-body-bytes and --max-in-flight must be positive")
    bridge = _create(args, fail)
    server = BridgeServer(
        bridge,
        args.host,
        args.port,
        max_in_flight=args.max_in_flight,
        allow_origins=args.allow_origins,
    )
    try:
        server.start()
    except ValueError as exc:  # beyond loopback without a token
        bridge.delivery.shutdown()
        raise fail(str(exc)) from None
    except OSError as exc:
        bridge.delivery.shutdown()
        raise fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    try:
        grpc_server = _start_grpc(bridge, args, fail)
    except BaseException:
        server.stop()
        raise
    stop = threading.Event()
    previous = _on_stop_signals(stop)
    handler = _log_to_stderr()
    try:
        _print_banner(bridge, server, grpc_server)
        # Waited on in slices: the kernel may hand SIGTERM to one of gRPC's threads, and then
        # only a main thread that wakes up runs the handler (an endless wait never would).
        while not stop.wait(0.5):
            pass
        if grpc_server is not None:
            grpc_server.refuse_new_calls()
        print("Stopping: finishing the requests in hand...", flush=True)
    finally:
        # Both fronts refuse new work at once and finish what they took; then the delivery
        # they share stops (delivering or spooling what was accepted).
        stop_both(server, grpc_server)
        for signum, old in previous.items():
            signal.signal(signum, old)
        logging.getLogger("opentelemetry_exporter_altertable").removeHandler(handler)
    print("Bridge stopped.", flush=True)
    return 0


def _print_banner(bridge: Any, server: Any, grpc_server: Any) -> None:
    config = bridge.delivery.config
    print(f"Altertable OTLP bridge listening on {server.endpoint}", flush=True)
    spool = config.spool_dir or "off"
    token = "required" if bridge.token_required else "none"
    print(f"  delivering to: {config.endpoint} (spool: {spool})", flush=True)
    if bridge.delivery.journaled:
        print(f"  journal:       {spool} (200 once the calls are on disk)", flush=True)
    else:
        print("  journal:       off (200 only once the calls are delivered or spooled)", flush=True)
    print(f"  token:         {token}", flush=True)
    print(f"  senders:       OTEL_EXPORTER_OTLP_ENDPOINT={server.endpoint}", flush=True)
    if grpc_server is not None:
        print(f"  OTLP/gRPC:     {grpc_server.endpoint} (TraceService, LogsService)", flush=True)
        print(
            f"  gRPC senders:  OTEL_EXPORTER_OTLP_PROTOCOL=grpc "
            f"OTEL_EXPORTER_OTLP_ENDPOINT={grpc_server.endpoint}",
            flush=True,
        )


def _create(args: argparse.Namespace, fail: Callable[[str], Exception]) -> Any:
    """The bridge the flags describe: journaled (in the default state directory unless
    ``--spool-dir`` says otherwise) unless ``--no-journal``."""
    from ._factory import create_bridge, default_journal_dir

    settings = settings_from(args)
    journal = not args.no_journal
    if journal and not os.environ.get("OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR", "").strip():
        settings.setdefault("spool_dir", default_journal_dir())
    try:
        bounds = ListenerBounds(
            max_body_bytes=args.max_body_bytes,
            max_connections=args.max_connections,
            request_deadline=args.request_deadline,
        )
        bridge = create_bridge(
            token=args.token,
            max_body_bytes=args.max_body_bytes,
            bounds=bounds,
            journal=journal,
            **settings,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not bridge.delivery.config.api_key:
        bridge.delivery.shutdown()
        raise fail("no Altertable API key: pass --api-key or set OTEL_EXPORTER_ALTERTABLE_API_KEY")
    if journal and bridge.delivery.config.spool_dir and not bridge.delivery.journaled:
        bridge.delivery.shutdown()
        raise fail(
            f"cannot keep a journal in {bridge.delivery.config.spool_dir} (see the error above): "
            "pass --spool-dir with a private directory, or --no-journal"
        )
    return bridge


def _start_grpc(bridge: Any, args: argparse.Namespace, fail: Callable[[str], Exception]) -> Any:
    """The gRPC front on ``--grpc-port`` (``None`` with ``--no-grpc``)."""
    if args.no_grpc:
        return None
    from ._grpc import GrpcBridgeServer

    grpc_server = GrpcBridgeServer(
        bridge, args.host, args.grpc_port, max_in_flight=args.max_in_flight
    )
    try:
        return grpc_server.start()
    except ValueError as exc:  # beyond loopback without a token (the HTTP front says it first)
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(
            f"cannot listen for OTLP/gRPC on {args.host}:{args.grpc_port}: {exc.strerror or exc} "
            "(pick another port with --grpc-port, or --no-grpc)"
        ) from None


def stop_both(http_server: Any, grpc_server: Any, *, shutdown_delivery: bool = True) -> None:
    """Stop an HTTP and a gRPC front sharing one bridge, then its delivery, once.

    The fronts stop together (each refuses new work at once and finishes what it took), so
    neither waits for the other's senders; the delivery stops only after both, and only when
    ``shutdown_delivery`` (not when its bridge also serves elsewhere and is stopped there).
    """
    if grpc_server is None:
        http_server.stop(shutdown_delivery=shutdown_delivery)
        return
    grpc_stopping = threading.Thread(
        target=grpc_server.stop, kwargs={"shutdown_delivery": False}, daemon=True
    )
    grpc_stopping.start()
    http_server.stop(shutdown_delivery=False)
    grpc_stopping.join()
    if shutdown_delivery:
        http_server.bridge.delivery.shutdown(timeout_millis=1000)


def _on_stop_signals(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def _log_to_stderr() -> logging.Handler:
    """Warnings and errors (delivery trouble) on stderr while the command runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("opentelemetry_exporter_altertable").addHandler(handler)
    return handler


def serve_bridge(receiver: LocalReceiver, api_key: str) -> Bridge | None:
    """``serve``'s one OTLP bridge, delivering to the receiver's own ingestion endpoints (over
    loopback, so the receiver's validation applies as for any client); ``None`` without the
    ``otlp`` extra.

    Built from ``serve``'s own settings alone, whatever the environment holds for the
    ``bridge`` command or an application: no bearer token (``ALTERTABLE_BRIDGE_TOKEN`` would
    answer 401 to every SDK left at its defaults), no spool (``""``: not
    ``OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR``) and so no journal and no recovery of dead
    processes' journals (a real application's, which belong to production, not to a local
    store). Requests are delivered before they are answered.
    """
    try:
        from ._factory import create_bridge
    except ImportError:
        return None
    return create_bridge(
        api_key=api_key, endpoint=receiver.endpoint, token="", spool_dir="", journal=False
    )


def add_otlp_routes(
    receiver: LocalReceiver, api_key: str, bridge: Bridge | None = None
) -> Callable[[], None] | None:
    """Let the local receiver take ``/v1/traces`` and ``/v1/logs`` into its own store.

    Through ``bridge`` (by default a new :func:`serve_bridge`). Returns the function that
    stops its delivery, or ``None`` when the ``otlp`` extra is not installed.
    """
    try:
        from ._decode import LOGS, TRACES
    except ImportError:
        return None
    from ..receiver._app import Request, Response

    if bridge is None:
        bridge = serve_bridge(receiver, api_key)
        if bridge is None:
            return None

    routed = bridge

    def handle(request: Request) -> Response:
        answer = routed.handle(request.path, request.headers, request.body)
        return Response(
            answer.status,
            answer.body,
            headers=answer.headers,
            content_type=answer.content_type,
        )

    for path in (TRACES, LOGS):
        receiver.route("POST", path, handle)
    return routed.delivery.shutdown


# --------------------------------------------------------------------------- serve's OTLP ports

#: OTLP's standard ports: where an SDK left at its defaults sends.
STANDARD_GRPC_PORT = 4317
STANDARD_HTTP_PORT = 4318


def add_otlp_port_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve``'s flags for the standard OTLP ports."""
    parser.add_argument(
        "--otlp-grpc-port",
        type=int,
        default=STANDARD_GRPC_PORT,
        help="also hear OTLP/gRPC here, where SDKs send by default (default: %(default)s)",
    )
    parser.add_argument(
        "--otlp-http-port",
        type=int,
        default=STANDARD_HTTP_PORT,
        help="also hear OTLP/HTTP here, OTLP/HTTP's default port (default: %(default)s)",
    )
    parser.add_argument(
        "--no-otlp-ports",
        action="store_true",
        help="do not listen on the standard OTLP ports (OTLP still works on --port)",
    )


class OtlpPorts:
    """The standard OTLP ports ``serve`` listens on, into the receiver's own store.

    ``lines`` are the banner's lines; ``listening`` says, per protocol, the address that hears
    OTLP (``None`` when the port could not be had); ``stop()`` stops both, and their delivery
    when the ports built their own bridge (a bridge given to them is its owner's to stop).
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.listening: dict[str, str | None] = {}
        self._http: Any = None
        self._grpc: Any = None
        self._bridge: Any = None
        self._owns_bridge = True

    def describe(self) -> dict[str, Any]:
        """What the receiver's page shows: the ports that hear OTLP, by protocol."""
        return {"ports": self.listening}

    def stop(self) -> None:
        if self._bridge is None:
            return
        own = self._owns_bridge
        if self._http is not None:
            stop_both(self._http, self._grpc, shutdown_delivery=own)
        elif self._grpc is not None:
            self._grpc.stop(shutdown_delivery=own)
        elif own:
            self._bridge.delivery.shutdown()
        self._bridge = None


def open_otlp_ports(
    receiver: LocalReceiver, api_key: str, args: argparse.Namespace, bridge: Bridge | None = None
) -> OtlpPorts:
    """Listen on the standard OTLP ports (``--otlp-grpc-port``, ``--otlp-http-port``), through
    ``bridge`` (``serve``'s one bridge, also behind its own OTLP routes; by default a new
    :func:`serve_bridge`, which the ports then stop).

    Never fails: a port already taken (a local Collector, another receiver) is one banner line.
    Only on loopback: OTLP senders carry no Altertable key, so beyond loopback these ports
    would let anyone write past ``--api-key``.
    """
    ports = OtlpPorts()
    if args.no_otlp_ports:
        return ports
    from ..receiver._local import is_loopback_host

    if not is_loopback_host(receiver.host):
        ports.lines.append(
            "  OTLP ports:   off beyond loopback (OTLP senders carry no API key); "
            f"use {receiver.endpoint}/v1/traces"
        )
        return ports
    try:
        from ._grpc import GrpcBridgeServer
        from ._server import BridgeServer
    except ImportError:
        return ports  # the receiver's banner already says how to install the otlp extra
    ports._owns_bridge = bridge is None
    if bridge is None:
        bridge = serve_bridge(receiver, api_key)
        if bridge is None:
            return ports
    ports._bridge = bridge
    fronts = (
        ("gRPC", GrpcBridgeServer, args.otlp_grpc_port, STANDARD_GRPC_PORT),
        ("HTTP", BridgeServer, args.otlp_http_port, STANDARD_HTTP_PORT),
    )
    for name, kind, port, standard in fronts:
        front = kind(bridge, receiver.host, port)
        label = f"  OTLP/{name}:".ljust(16)
        try:
            front.start()
        except OSError as exc:
            ports.listening[name.lower()] = None
            ports.lines.append(
                f"{label}port {port} is taken ({exc.strerror or 'in use'}: a local Collector?); "
                "not listening there"
            )
            continue
        address = front.endpoint
        ports.listening[name.lower()] = address
        note = " (an SDK left at its defaults sends here)" if port == standard else ""
        ports.lines.append(f"{label}{address}{note}")
        if name == "gRPC":
            ports._grpc = front
        else:
            ports._http = front
    return ports


def add_otlp_page_route(receiver: LocalReceiver, ports: OtlpPorts, own: bool) -> None:
    """``GET /otlp``: where this receiver hears OTLP, for its page (JSON)."""
    import json

    from ..receiver._app import Request, Response

    document = {**ports.describe(), "receiver_port": receiver.endpoint if own else None}
    body = json.dumps(document).encode()

    def handle(request: Request) -> Response:
        return Response(200, body, headers=(("Cache-Control", "no-store"),))

    receiver.route("GET", "/otlp", handle)
