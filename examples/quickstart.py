"""A small instrumented shop whose telemetry becomes product analytics.

Run it against any Altertable-compatible endpoint (``make demo`` starts a local receiver)::

    OTEL_EXPORTER_ALTERTABLE_ENDPOINT=http://127.0.0.1:15001 \
    OTEL_EXPORTER_ALTERTABLE_API_KEY=pk_test_local python examples/quickstart.py

The exporters read their settings from the environment, so the setup below is all it takes.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import opentelemetry_exporter_altertable as altertable

USER_ID = "u_01jza857w4f23s1hf2s61befmw"  # the id the tracking guide's queries look for
ANONYMOUS_ID = "visitor-0197d9df-3c3b-734e-96dd-dfda52b0167c"
BILLING_ID = "stripe:cus_abc123"


def setup() -> tuple[TracerProvider, LoggerProvider]:
    """The whole integration: one resource, one exporter per signal, the SDK's batching."""
    resource = Resource.create(
        {
            "service.name": "shop",
            "service.version": "1.4.2",
            "deployment.environment.name": "production",
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(altertable.AltertableSpanExporter()))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(altertable.AltertableLogExporter())
    )
    return tracer_provider, logger_provider


def signup_funnel(tracer: trace.Tracer) -> None:
    """Three steps seen anonymously, then the form is submitted and the user identified."""
    with tracer.start_as_current_span(
        "POST /signup",
        attributes={
            "analytics.anonymous_id": ANONYMOUS_ID,
            "url.full": "https://shop.example.com/signup",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64)",
            "client.address": "203.0.113.7",
        },
    ) as span:
        for step, name in enumerate(("account", "profile", "plan"), start=1):
            span.add_event(
                "Step Viewed",
                {"analytics.event": True, "step": step, "step_name": name},
            )
        altertable.track("Form Submitted", {"form": "signup", "fields": 7})
        altertable.identify(USER_ID, {"email": "ada@example.com", "plan": "premium"})
        span.set_attribute("user.full_name", "Ada Lovelace")


def purchase(tracer: trace.Tracer) -> None:
    """A checkout span that is itself the event: its attributes become properties."""
    with tracer.start_as_current_span(
        "Purchase Completed",
        attributes={
            "analytics.event": True,
            "user.id": USER_ID,
            "amount": 99.99,
            "currency": "USD",
            "analytics.properties.product_id": "p_01jza8fr5efvgbxxdd1bwkd0m5",
            "http.request.method": "POST",  # an ordinary attribute: kept as a property
        },
    ):
        time.sleep(0.01)
    with tracer.start_as_current_span("link billing account", attributes={"user.id": USER_ID}):
        altertable.alias(BILLING_ID)
    # Untagged spans cost almost nothing and send nothing.
    for _ in range(100):
        with tracer.start_as_current_span("GET /healthz"):
            pass


def subscription_log(logger_provider: LoggerProvider) -> None:
    """An OpenTelemetry log record tagged as an event; its dict body becomes properties."""
    otel_logger = logger_provider.get_logger("shop.billing")
    otel_logger.emit(
        severity_number=SeverityNumber.INFO,
        body={"plan": "premium", "interval": "yearly", "currency": "EUR"},
        attributes={"analytics.event": "Subscription Started", "user.id": USER_ID},
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    tracer_provider, logger_provider = setup()
    tracer = tracer_provider.get_tracer("shop")
    signup_funnel(tracer)
    purchase(tracer)
    subscription_log(logger_provider)
    # Flush before exiting (shutdown at interpreter exit would also deliver what is queued).
    tracer_provider.shutdown()
    logger_provider.shutdown()
    print("shop: telemetry exported")


if __name__ == "__main__":
    main()
