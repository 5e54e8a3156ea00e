"""FastAPI under ``opentelemetry-instrument``: identity from a dependency, on the server span.

The ASGI instrumentation opens the request's SERVER span; route handlers and their
dependencies run inside it, so a dependency that resolves the user is where identity goes::

    OTEL_SERVICE_NAME=shop-fastapi OTEL_TRACES_EXPORTER=altertable \
    OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS=true \
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=referer \
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE=content-type \
    opentelemetry-instrument python examples/fastapi_app.py --port 8000

Then ``curl -H 'Authorization: Bearer tok-ada' -X POST 127.0.0.1:8000/checkout``.

- ``user.id`` and ``user.email`` from the ``current_user`` dependency (a stand-in for real
  authentication: the bearer token names the user);
- ``session.id`` from the ``sid`` cookie;
- uvicorn's ``proxy_headers`` (on by default, trusting ``X-Forwarded-For`` from
  ``forwarded_allow_ips``, 127.0.0.1 by default) makes the proxy's client the client address
  the instrumentation reports (``$ip``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys

import uvicorn
from fastapi import Cookie, Depends, FastAPI, Header
from fastapi.responses import HTMLResponse
from opentelemetry import trace

TOKENS = {"tok-ada": ("u-42", "ada@example.com")}

app = FastAPI()


# --8<-- [start:identity]
async def current_user(
    authorization: str | None = Header(default=None), sid: str | None = Cookie(default=None)
) -> str | None:
    span = trace.get_current_span()  # the instrumentation's SERVER span
    if sid:
        span.set_attribute("session.id", sid)
    if authorization is None or not authorization.startswith("Bearer "):
        return None
    user = TOKENS.get(authorization.removeprefix("Bearer "))
    if user is None:
        return None
    user_id, email = user
    span.set_attribute("user.id", user_id)
    span.set_attribute("user.email", email)  # a trait: sends an identify
    return user_id
# --8<-- [end:identity]


@app.get("/pricing", response_class=HTMLResponse)
async def pricing(user: str | None = Depends(current_user)) -> str:
    # An HTML GET page: a $pageview with OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS=true.
    return "<!doctype html><title>Pricing</title><h1>Pricing</h1>"


@app.post("/checkout")
async def checkout(user: str | None = Depends(current_user)) -> dict[str, object]:
    span = trace.get_current_span()
    span.set_attribute("analytics.event", "Checkout Completed")
    span.set_attribute("analytics.properties.cart_value", 59.9)
    return {"ok": True, "user": user}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    port = parser.parse_args().port
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # connections wait in the backlog until uvicorn has started
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler
    # it found: the default one would end the process without the SDK's exit hook, and the
    # spans still queued would be lost. Exiting through SystemExit runs the hook.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", proxy_headers=True))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, raised again the same way
        server.run(sockets=[sock])


if __name__ == "__main__":
    main()
