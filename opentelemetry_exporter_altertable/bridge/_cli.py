"""``altertable-otel bridge``, and the OTLP routes ``altertable-otel serve`` adds to its port.

Registering the command imports nothing beyond the standard library: without the ``otlp``
extra, ``bridge`` still shows in ``--help`` and says how to install what it needs.
"""

from __future__ import annotations

import argparse
import logging
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
        help="receive OTLP/HTTP (any language, any Collector) and send the analytics on",
        description=(
            "An OTLP/HTTP receiver for POST /v1/traces and /v1/logs (protobuf or JSON, gzip): "
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
    parser.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The exporter keyword arguments given as flags (the others come from the environment)."""
    given = {dest: getattr(args, dest) for _, dest, _, _ in _SETTINGS}
    given["sync"] = args.sync
    return {key: value for key, value in given.items() if value is not None}


def run_bridge(args: argparse.Namespace, fail: Callable[[str], Exception]) -> int:
    """Serve until SIGINT/SIGTERM; then finish the requests in hand and exit 0."""
    try:
        from ._factory import create_bridge
        from ._server import BridgeServer
    except ImportError as exc:
        missing = exc.name or "protobuf"
        raise fail(
            f"the bridge needs the otlp extra ({missing} is missing): {_INSTALL_HINT}"
        ) from None
    try:
        bounds = ListenerBounds(
            max_body_bytes=args.max_body_bytes,
            max_connections=args.max_connections,
            request_deadline=args.request_deadline,
        )
        if args.max_in_flight < 1:
            raise ValueError("--max-in-flight must be positive")
        bridge = create_bridge(
            token=args.token,
            max_body_bytes=args.max_body_bytes,
            bounds=bounds,
            **settings_from(args),
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not bridge.delivery.config.api_key:
        bridge.delivery.shutdown()
        raise fail("no Altertable API key: pass --api-key or set OTEL_EXPORTER_ALTERTABLE_API_KEY")
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
    stop = threading.Event()
    previous = _on_stop_signals(stop)
    handler = _log_to_stderr()
    try:
        config = bridge.delivery.config
        print(f"Altertable OTLP bridge listening on {server.endpoint}", flush=True)
        spool = config.spool_dir or "off"
        token = "required" if bridge.token_required else "none"
        print(f"  delivering to: {config.endpoint} (spool: {spool})", flush=True)
        print(f"  token:         {token}", flush=True)
        print(f"  senders:       OTEL_EXPORTER_OTLP_ENDPOINT={server.endpoint}", flush=True)
        stop.wait()
        print("Stopping: finishing the requests in hand...", flush=True)
    finally:
        server.stop()  # delivers or spools what was accepted, answers the rest 503
        for signum, old in previous.items():
            signal.signal(signum, old)
        logging.getLogger("opentelemetry_exporter_altertable").removeHandler(handler)
    print("Bridge stopped.", flush=True)
    return 0


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


def add_otlp_routes(receiver: LocalReceiver, api_key: str) -> Callable[[], None] | None:
    """Let the local receiver take ``/v1/traces`` and ``/v1/logs`` into its own store.

    A bridge delivering to the receiver's own ingestion endpoints (over loopback, so the
    receiver's validation applies as for any client). Returns the function that stops it, or
    ``None`` when the ``otlp`` extra is not installed.
    """
    try:
        from ._decode import LOGS, TRACES
        from ._factory import create_bridge
    except ImportError:
        return None
    from ..receiver._app import Request, Response

    bridge = create_bridge(api_key=api_key, endpoint=receiver.endpoint, token=None)

    def handle(request: Request) -> Response:
        answer = bridge.handle(request.path, request.headers, request.body)
        return Response(
            answer.status,
            answer.body,
            headers=answer.headers,
            content_type=answer.content_type,
        )

    for path in (TRACES, LOGS):
        receiver.route("POST", path, handle)
    return bridge.delivery.shutdown
