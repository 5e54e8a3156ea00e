"""A tiny web shop whose analytics reach Altertable with zero exporter code.

Nothing here builds an exporter: ``opentelemetry-instrument`` sets up the SDK and picks the
``altertable`` exporter by name from the environment. The app only tags its spans::

    OTEL_SERVICE_NAME=shop-web \
    OTEL_TRACES_EXPORTER=altertable OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    OTEL_EXPORTER_ALTERTABLE_ENDPOINT=http://127.0.0.1:15001 \
    OTEL_EXPORTER_ALTERTABLE_API_KEY=pk_test_local \
    opentelemetry-instrument python examples/zero_code_app.py --self-drive

Command line:

- ``--self-drive``: serve on a free loopback port, send itself a few requests, then exit (the
  SDK's exit hook delivers what is still queued). Handy for a quick look and for tests.
- ``--requests N``: serve ``N`` requests on ``--port`` (default 8000; ``0`` picks a free
  port), then exit. The first line printed names the address.
- neither: serve until Ctrl-C. Try
  ``curl -X POST -d '{"user_id": "u_42", "cart_value": 59.9}' 127.0.0.1:8000/checkout``.

The standard library's ``http.server`` has no auto-instrumentation, so the handler opens its
own server span with the global tracer; with Flask, Django or FastAPI instrumented, the
framework's span is already current and the handler would only set the attributes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from opentelemetry import trace

#: Requests ``--self-drive`` sends: two checkouts, a page view that is not an analytics event.
SELF_DRIVE_REQUESTS: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("POST", "/checkout", {"user_id": "u_zero_1", "cart_value": 59.9, "items": 2}),
    ("GET", "/", None),
    ("POST", "/checkout", {"user_id": "u_zero_2", "cart_value": 120.0, "items": 5}),
)


class ShopHandler(BaseHTTPRequestHandler):
    """``POST /checkout`` is the analytics event; every other request is plain telemetry."""

    server_version = "zero-code-shop/1.0"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        tracer = trace.get_tracer(__name__)
        path = self.path.split("?", 1)[0]
        with tracer.start_as_current_span(
            f"{self.command} {path}",
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": self.command,
                "url.path": path,
                "url.full": f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                "user_agent.original": self.headers.get("User-Agent", ""),
                "client.address": self.client_address[0],
            },
        ):
            if self.command == "POST" and path == "/checkout":
                status, answer = self._checkout()
            else:
                status, answer = HTTPStatus.OK, {"shop": "open"}
            trace.get_current_span().set_attribute("http.response.status_code", int(status))
        self._reply(status, answer)

    def _checkout(self) -> tuple[HTTPStatus, dict[str, Any]]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            order = json.loads(self.rfile.read(length) or b"{}")
            user_id = str(order["user_id"])
            cart_value = float(order["cart_value"])
        except (ValueError, KeyError, TypeError):
            return HTTPStatus.BAD_REQUEST, {"error": "expected user_id and cart_value"}
        # The one line of analytics code: tag the current (server) span.
        trace.get_current_span().set_attributes(
            {
                "analytics.event": "Checkout Started",
                "user.id": user_id,
                "analytics.properties.cart_value": cart_value,
                "analytics.properties.items": int(order.get("items", 0)),
            }
        )
        return HTTPStatus.OK, {"checkout": "started"}

    def _reply(self, status: HTTPStatus, answer: dict[str, Any]) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep the console for the app's own output


def serve(port: int, requests: int | None) -> None:
    """Serve ``requests`` requests (forever when ``None``) on 127.0.0.1:``port``.

    One request at a time: each is answered, and its span ended, before the next is read, so
    the process never exits with a request half done.
    """
    with HTTPServer(("127.0.0.1", port), ShopHandler) as httpd:
        print(f"shop: listening on http://127.0.0.1:{httpd.server_port}", flush=True)
        if requests is None:
            with contextlib.suppress(KeyboardInterrupt):
                httpd.serve_forever()
            return
        for _ in range(requests):
            httpd.handle_request()


def self_drive() -> None:
    """Serve on a free port in a thread, send :data:`SELF_DRIVE_REQUESTS`, stop."""
    with HTTPServer(("127.0.0.1", 0), ShopHandler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{httpd.server_port}"
        try:
            for method, path, payload in SELF_DRIVE_REQUESTS:
                data = None if payload is None else json.dumps(payload).encode()
                request = urllib.request.Request(
                    base + path,
                    data=data,
                    method=method,
                    headers={"Content-Type": "application/json", "User-Agent": "self-drive/1.0"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    print(f"shop: {method} {path} -> {response.status}", flush=True)
        finally:
            httpd.shutdown()
            thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A tiny shop traced with zero exporter code.")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    parser.add_argument("--requests", type=int, metavar="N", help="exit after N requests")
    parser.add_argument(
        "--self-drive", action="store_true", help="send itself a few requests, then exit"
    )
    args = parser.parse_args(argv)
    if args.self_drive:
        self_drive()
    else:
        serve(args.port, args.requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
