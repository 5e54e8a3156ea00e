"""Serverless (AWS Lambda style): flush at the end of every invocation.

A function's process is frozen, or killed, between invocations: nothing queued in a batch
processor survives that, and the exit hook never runs. End each handler with
``force_flush()``, which exports what the processor holds and waits for it::

    OTEL_EXPORTER_ALTERTABLE_ENDPOINT=http://127.0.0.1:15001 \
    OTEL_EXPORTER_ALTERTABLE_API_KEY=pk_test_local \
    python examples/serverless_handler.py

Run as a script, it invokes the handler once and then ends the process the way a platform
does, without any exit hook (``os._exit``): only what ``force_flush`` delivered arrives.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

# Built once per container (cold start), reused by every invocation.
provider = TracerProvider(resource=Resource.create({"service.name": "signup-fn"}))
provider.add_span_processor(AltertableSpanProcessor(AltertableSpanExporter()))
tracer = provider.get_tracer("signup-fn")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    try:
        with tracer.start_as_current_span(
            "signup",
            kind=trace.SpanKind.SERVER,
            attributes={
                "analytics.event": "Signed Up",
                "user.id": event["user_id"],
                "plan": event.get("plan", "free"),
            },
        ):
            return {"statusCode": 200}
    finally:
        # Before the platform freezes the process: deliver this invocation's analytics.
        provider.force_flush(timeout_millis=5_000)


if __name__ == "__main__":
    print(handler({"user_id": "u-fn-1", "plan": "pro"}), flush=True)
    os._exit(0)  # what a platform does: no exit hook, no shutdown()
