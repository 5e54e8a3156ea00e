"""Realistic spans for the benchmarks, built once with the real SDK.

A tagged span looks like an instrumented e-commerce request that also carries a product
analytics event (``analytics.event`` plus ``analytics.properties.*`` and the user's id); an
untagged span is the same request without the analytics and user attributes, i.e. the
ordinary traffic an analytics exporter must skip.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

RESOURCE_ATTRIBUTES: dict[str, str] = {
    "service.name": "shop-api",
    "service.version": "2.14.1",
    "deployment.environment.name": "production",
}

_USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Safari/605.1.15"
)
_CURRENCIES = ("EUR", "USD", "GBP")
_UNTAGGED_PREFIXES = ("analytics.", "user.", "enduser.")


def tagged_attributes(i: int) -> dict[str, Any]:
    """The ~10 attributes of one tagged request span (12 here; varied by ``i``)."""
    sku = f"SKU-{i % 5000:05d}"
    return {
        "http.request.method": "GET",
        "http.route": "/products/{sku}",
        "url.full": f"https://shop.example.com/products/{sku}?ref=home",
        "http.response.status_code": 200,
        "user_agent.original": _USER_AGENT,
        "client.address": f"203.0.113.{i % 250 + 1}",
        "session.id": f"sess_{i // 20:08x}",
        "user.id": f"user_{i % 1000:04d}",
        "analytics.event": "Product Viewed",
        "analytics.properties.sku": sku,
        "analytics.properties.price": 19.99 + (i % 50),
        "analytics.properties.currency": _CURRENCIES[i % len(_CURRENCIES)],
    }


def untagged_attributes(i: int) -> dict[str, Any]:
    """The same request without analytics or user attributes."""
    return {k: v for k, v in tagged_attributes(i).items() if not k.startswith(_UNTAGGED_PREFIXES)}


def identity_attributes(i: int) -> dict[str, Any]:
    """An untagged request of a signed-in user: the identity keys the identity recipes put on
    every server span (``user.id``, ``enduser.id``, ``session.id``), no analytics data."""
    tagged = tagged_attributes(i)
    attrs = untagged_attributes(i)
    attrs["user.id"] = tagged["user.id"]
    attrs["enduser.id"] = tagged["user.id"]
    return attrs


def make_provider(*processors: Any) -> TracerProvider:
    """A provider with the benchmark resource and the given span processors."""
    provider = TracerProvider(resource=Resource.create(RESOURCE_ATTRIBUTES))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def build_spans(count: int, *, tagged: bool, identity: bool = False) -> list[ReadableSpan]:
    """``count`` finished spans produced by the real SDK (start, attributes, end): tagged,
    untagged, or untagged with the user's identity keys (``identity``)."""
    exporter = InMemorySpanExporter()
    provider = make_provider(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop.checkout", "2.14.1")
    if tagged:
        attrs = tagged_attributes
    else:
        attrs = identity_attributes if identity else untagged_attributes
    for i in range(count):
        span = tracer.start_span("GET /products/{sku}", kind=SpanKind.SERVER, attributes=attrs(i))
        span.end()
    spans = list(exporter.get_finished_spans())
    provider.shutdown()
    return spans


def batches(spans: Sequence[ReadableSpan], size: int) -> list[list[ReadableSpan]]:
    """Split into export batches of ``size`` (what a BatchSpanProcessor hands an exporter)."""
    return [list(spans[i : i + size]) for i in range(0, len(spans), size)]


def cycle(items: Sequence[Any], n: int) -> Iterator[Any]:
    """The first ``n`` items of ``items`` repeated."""
    for k in range(n):
        yield items[k % len(items)]


def _iso(ns: int | None) -> str:
    dt = datetime.datetime.fromtimestamp((ns or 0) / 1e9, tz=datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track_payload(span: ReadableSpan, environment: str = "production") -> dict[str, Any]:
    """The ``/track`` item that carries the same information as a tagged span.

    Built by hand (not by the exporter's mapping) so the JSON floor and the official SDK
    baseline get the same content without paying for any conversion.
    """
    attrs = dict(span.attributes or {})
    properties: dict[str, Any] = {}
    for key, value in attrs.items():
        if key.startswith("analytics.properties."):
            properties[key[len("analytics.properties.") :]] = value
        elif not key.startswith(_UNTAGGED_PREFIXES) and key not in (
            "url.full",
            "user_agent.original",
            "client.address",
            "session.id",
        ):
            properties[key] = value
    ctx = span.get_span_context()
    properties.update(
        {
            "$url": attrs.get("url.full"),
            "$user_agent": attrs.get("user_agent.original"),
            "$ip": attrs.get("client.address", 0),
            "$release": RESOURCE_ATTRIBUTES["service.version"],
            "$lib": "opentelemetry-exporter-altertable",
            "$lib_version": "0",
            "service.name": RESOURCE_ATTRIBUTES["service.name"],
            "otel.trace_id": f"{ctx.trace_id:032x}" if ctx else "",
            "otel.span_id": f"{ctx.span_id:016x}" if ctx else "",
        }
    )
    return {
        "environment": environment,
        "event": str(attrs.get("analytics.event")),
        "properties": properties,
        "distinct_id": attrs.get("user.id"),
        "session_id": attrs.get("session.id"),
        "timestamp": _iso(span.end_time),
    }


def payload_size(payloads: Sequence[dict[str, Any]]) -> int:
    """Bytes of the payloads as one JSON array (to sanity-check the sink's byte counts)."""
    return len(json.dumps(list(payloads)).encode())
