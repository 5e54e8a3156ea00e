"""Real web apps for the app-overhead rows: Flask (WSGI) and FastAPI (ASGI), SDK-instrumented.

Each app serves ``GET /products/<sku>`` with a small JSON answer, instrumented by the
OpenTelemetry contrib instrumentation for its framework with a tracer provider of its own. Its
handler puts the user's id on the request span on every request (what the identity recipes
do) and tags one request in 20 as an analytics event (``analytics.event`` plus a property), so
the exporter sees the traffic it sees in a service: mostly spans to skip, some to send.

Requests are driven in-process, one after another, through the framework's own entry point
(the WSGI callable with a prepared environ; the ASGI callable with a prepared scope), so a
window measures the app, its instrumentation and the span pipeline, and nothing of an HTTP
client or server. The span processors' worker threads run alongside and compete for the
GIL, as they do in a served app: that competition is what the rows measure.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

TAG_EVERY = 20
PATH = "/products/SKU-00042"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
CLIENT = "203.0.113.9"


class _Tagger:
    """What the handler adds to the request span: the user's id always, an event 1 in 20."""

    def __init__(self) -> None:
        self._count = itertools.count()

    def __call__(self, sku: str) -> None:
        span = trace.get_current_span()
        span.set_attribute("user.id", "user_0042")
        if next(self._count) % TAG_EVERY == 0:
            span.set_attribute("analytics.event", "Product Viewed")
            span.set_attribute("analytics.properties.sku", sku)


def flask_driver(provider: TracerProvider, name: str) -> Callable[[int], None]:
    """A Flask app instrumented with ``provider``; the driver serves ``n`` requests."""
    from flask import Flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from werkzeug.test import EnvironBuilder

    app = Flask(name)
    tag = _Tagger()

    @app.get("/products/<sku>")
    def product(sku: str) -> dict[str, Any]:
        tag(sku)
        return {"sku": sku, "price": 19.99, "currency": "EUR"}

    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    builder = EnvironBuilder(
        path=PATH,
        base_url="http://shop.example.com",
        headers={"User-Agent": USER_AGENT},
        environ_base={"REMOTE_ADDR": CLIENT},
    )
    base = builder.get_environ()
    builder.close()
    status: list[str] = []

    def start_response(code: str, _headers: Any, _exc_info: Any = None) -> Any:
        status.append(code)
        return lambda _data: None

    def serve(n: int) -> None:
        for _ in range(n):
            environ = dict(base)
            environ["wsgi.input"] = io.BytesIO(b"")
            body = app(environ, start_response)
            try:
                for _chunk in body:
                    pass
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        if not status or not status[-1].startswith("200"):
            raise RuntimeError(f"the Flask app answered {status[-1:]}")
        status.clear()

    return serve


def fastapi_driver(provider: TracerProvider, _name: str) -> Callable[[int], None]:
    """A FastAPI app instrumented with ``provider``; the driver serves ``n`` requests on an
    event loop of its own."""
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()
    tag = _Tagger()

    @app.get("/products/{sku}")
    async def product(sku: str) -> dict[str, Any]:
        tag(sku)
        return {"sku": sku, "price": 19.99, "currency": "EUR"}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"shop.example.com"), (b"user-agent", USER_AGENT.encode())],
        "client": (CLIENT, 50000),
        "server": ("shop.example.com", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def many(n: int) -> None:
        for _ in range(n):
            await app(dict(scope), receive, send)

    loop = asyncio.new_event_loop()

    def serve(n: int) -> None:
        loop.run_until_complete(many(n))
        if not statuses or statuses[-1] != 200:
            raise RuntimeError(f"the FastAPI app answered {statuses[-1:]}")
        statuses.clear()

    serve.close = loop.close  # type: ignore[attr-defined]
    return serve


FRAMEWORKS: dict[str, Callable[[TracerProvider, str], Callable[[int], None]]] = {
    "flask": flask_driver,
    "fastapi": fastapi_driver,
}
