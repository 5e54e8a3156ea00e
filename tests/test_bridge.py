"""The OTLP bridge end to end: the OTel SDK's own OTLP/HTTP exporters -> bridge -> Altertable.

The same telemetry is exported in-process and through the bridge; the calls (and the rows the
local receiver stores) must be the same.
"""

from __future__ import annotations

from typing import Any

import pytest
from faultserver import FaultServer
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import (
    KEY,
    RESOURCE,
    otlp_log_exporter,
    otlp_span_exporter,
    running_bridge,
    sample_logs,
    sample_spans,
    stored_identities,
    stored_rows,
)

from opentelemetry_exporter_altertable import AltertableLogExporter, AltertableSpanExporter
from opentelemetry_exporter_altertable.receiver import LocalReceiver

ENDPOINTS = ("/identify", "/alias", "/track")


def _payloads(server: FaultServer) -> dict[str, list[Any]]:
    return {path: server.accepted_items(path) for path in ENDPOINTS}


def test_same_calls_in_process_and_through_the_bridge() -> None:
    spans, logs = sample_spans(), sample_logs()
    with FaultServer() as direct, FaultServer() as bridged:
        span_exporter = AltertableSpanExporter(api_key=KEY, endpoint=direct.endpoint)
        log_exporter = AltertableLogExporter(api_key=KEY, endpoint=direct.endpoint)
        try:
            assert span_exporter.export(spans) is SpanExportResult.SUCCESS
            assert log_exporter.export(logs) is LogRecordExportResult.SUCCESS
        finally:
            span_exporter.shutdown()
            log_exporter.shutdown()
        with running_bridge(bridged.endpoint) as bridge:
            otlp_spans = otlp_span_exporter(bridge.endpoint)
            otlp_logs = otlp_log_exporter(bridge.endpoint)
            assert otlp_spans.export(spans) is SpanExportResult.SUCCESS
            assert otlp_logs.export(logs) is LogRecordExportResult.SUCCESS
            otlp_spans.shutdown()
            otlp_logs.shutdown()
        expected, got = _payloads(direct), _payloads(bridged)
    # 3 server spans + 3 tagged events + 3 client spans, 6 tagged log records.
    assert len(expected["/track"]) == 15
    assert len(expected["/alias"]) == 3
    assert len(expected["/identify"]) == 3
    assert got == expected  # nothing differs: same payloads, same order
    # The bridge answered and forwarded, and never let the key into an answer.
    assert all(r.headers.get("x-api-key") == KEY for r in bridged.requests)



def test_rows_from_the_sdk_otlp_exporters_match_the_in_process_path() -> None:
    spans, logs = sample_spans(), sample_logs()
    with LocalReceiver() as direct, LocalReceiver() as bridged:
        span_exporter = AltertableSpanExporter(api_key=KEY, endpoint=direct.endpoint, sync=True)
        log_exporter = AltertableLogExporter(api_key=KEY, endpoint=direct.endpoint, sync=True)
        assert span_exporter.export(spans) is SpanExportResult.SUCCESS
        assert log_exporter.export(logs) is LogRecordExportResult.SUCCESS
        span_exporter.shutdown()
        log_exporter.shutdown()
        with running_bridge(bridged.endpoint, sync=True) as bridge:
            otlp_spans = otlp_span_exporter(bridge.endpoint)
            otlp_logs = otlp_log_exporter(bridge.endpoint)
            assert otlp_spans.export(spans) is SpanExportResult.SUCCESS
            assert otlp_logs.export(logs) is LogRecordExportResult.SUCCESS
            otlp_spans.shutdown()
            otlp_logs.shutdown()
        expected = stored_rows(direct)
        assert len(expected) == 15
        assert stored_rows(bridged) == expected
        assert stored_identities(bridged) == stored_identities(direct)
        assert {row[6] for row in expected} == {"staging"}


def _page_view_span() -> ReadableSpan:
    """A server span that served an HTML page and carries no analytics data."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource(RESOURCE), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        span = provider.get_tracer("tests.bridge").start_span(
            "GET /pricing",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "http.response.status_code": 200,
                "http.response.header.content-type": ("text/html; charset=utf-8",),
                "url.scheme": "https",
                "server.address": "shop.example",
                "url.path": "/pricing",
                "http.route": "/pricing",
                "user.id": "user-page",
            },
        )
        span.end()
        return list(exporter.get_finished_spans())
    finally:
        provider.shutdown()


def test_the_bridge_maps_with_every_mapping_setting_of_the_exporters() -> None:
    """``pageviews`` and ``properties_exclude`` reach the bridge's mapping, as in-process."""
    settings: dict[str, Any] = {"pageviews": True, "properties_exclude": "seq,ratio"}
    spans = sample_spans(1) + _page_view_span()
    with FaultServer() as direct, FaultServer() as bridged:
        exporter = AltertableSpanExporter(api_key=KEY, endpoint=direct.endpoint, **settings)
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        with running_bridge(bridged.endpoint, **settings) as bridge:
            otlp = otlp_span_exporter(bridge.endpoint)
            assert otlp.export(spans) is SpanExportResult.SUCCESS
            otlp.shutdown()
        expected, got = _payloads(direct), _payloads(bridged)
    tracks = got["/track"]
    assert "$pageview" in [t["event"] for t in tracks]
    cart = next(t for t in tracks if t["event"] == "Cart Viewed")
    assert "seq" not in cart["properties"] and "ratio" not in cart["properties"]
    assert "flag" in cart["properties"]  # only the excluded names are left out
    assert got == expected


@pytest.mark.parametrize("compression", ["gzip", None])
def test_gzip_and_plain_protobuf_bodies(compression: str | None) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression

    spans = sample_spans(1)
    with FaultServer() as api, running_bridge(api.endpoint) as bridge:
        exporter = otlp_span_exporter(
            bridge.endpoint,
            compression=Compression.Gzip if compression else Compression.NoCompression,
        )
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
        events = [item["event"] for item in api.accepted_items("/track")]
    assert sorted(events) == ["Cart Viewed", "Payment Sent", "item added"]
