"""Shared by the web examples: serve a WSGI app until Ctrl-C or SIGTERM, then exit cleanly.

The standard library's server keeps the examples free of extra dependencies; use gunicorn or
your framework's own server in production.

A clean exit matters: the SDK's exit hook delivers what is still queued, and SIGTERM's default
action would skip it. The first line printed names the address (``--port 0`` picks a free one).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


def port_argument(default: int) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=default)
    return int(parser.parse_args().port)


def stop_on_sigterm(server: WSGIServer) -> None:
    """SIGTERM ends ``serve_forever`` after the request in hand, from a thread of its own.

    Raising ``KeyboardInterrupt`` from the handler instead loses a race: when the signal lands
    while a request is still being written, wsgiref's handler catches every exception, logs it
    and goes on serving, so the process never exits.
    """

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)


class _QuietHandler(WSGIRequestHandler):
    def get_environ(self) -> dict[str, Any]:
        # As gunicorn and werkzeug do: the WSGI instrumentation reads the request target
        # (url.path, url.query) from RAW_URI or REQUEST_URI, which wsgiref leaves out.
        environ = dict(super().get_environ())
        environ.setdefault("RAW_URI", self.path)
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_wsgi(app: Any, port: int) -> None:
    """Serve ``app`` on 127.0.0.1 with the standard library's server, one request at a time."""
    server: WSGIServer = make_server("127.0.0.1", port, app, handler_class=_QuietHandler)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    stop_on_sigterm(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.stdout.flush()
