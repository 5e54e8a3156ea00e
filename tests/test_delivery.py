"""What the contract promises about delivery, checked over real HTTP on loopback.

Each test points a real exporter at a :class:`faultserver.FaultServer` that answers like the
Altertable API, and counts what arrived: requests, items per request, headers, connections.
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import requests
from faultserver import FaultServer, reject_items, retry_later
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import T0_NS, emitted_log_records, finished_spans
from support import MakeExporter, Spans, seqs

from opentelemetry_exporter_altertable import (
    AltertableLogExporter,
    __version__,
)


def identity_spans(email: str, user: str = "u1") -> list[ReadableSpan]:
    """One untagged span that carries an identity with a trait (so: one identify call)."""
    return finished_spans([("login", {"user.id": user, "user.email": email}, (), T0_NS, T0_NS)])


def test_batches_hold_at_most_max_batch_size_items(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter(max_batch_size=100)

    result = exporter.export(spans(250))

    assert result is SpanExportResult.SUCCESS
    tracks = server.requests_to("/track")
    assert [len(r.body) for r in tracks] == [100, 100, 50]
    assert all(isinstance(r.body, list) for r in tracks)
    assert seqs(server.accepted_items("/track")) == list(range(250))
    assert len(server.requests) == 3
    stats = exporter.stats()
    assert stats["records_seen"] == 250
    assert stats["calls_built"] == 250
    assert stats["calls_exported"] == 250
    assert stats["requests"] == 3
    assert stats["retries"] == 0
    assert stats["calls_dropped"] == 0


def test_a_single_item_is_still_sent_as_an_array(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter()

    assert exporter.export(spans(1)) is SpanExportResult.SUCCESS

    (request,) = server.requests
    assert isinstance(request.body, list)
    assert seqs(request.body) == [0]


def test_headers_name_the_key_the_package_and_json(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, api_key: str
) -> None:
    exporter = make_exporter()

    exporter.export(spans(3))

    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/track"
    assert request.query == {}
    assert request.headers["x-api-key"] == api_key
    assert f"opentelemetry-exporter-altertable/{__version__}" in request.headers["user-agent"]
    assert request.headers["content-type"] == "application/json"
    assert "content-encoding" not in request.headers
    assert "authorization" not in request.headers  # the key travels in one header only
    assert json.loads(request.raw_body) == request.body


def test_sync_adds_the_query_parameter(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter(sync=True, max_batch_size=2)

    exporter.export(spans(3) + identity_spans("a@example.com"))

    assert [(r.path, r.query) for r in server.requests] == [
        ("/identify", {"sync": ["true"]}),
        ("/track", {"sync": ["true"]}),
        ("/track", {"sync": ["true"]}),
    ]


def test_gzip_compresses_every_body(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter(compression="gzip", max_batch_size=40)

    assert exporter.export(spans(100)) is SpanExportResult.SUCCESS

    requests_seen = server.requests
    assert len(requests_seen) == 3
    for request in requests_seen:
        assert request.headers["content-encoding"] == "gzip"
        assert request.raw_body[:2] == b"\x1f\x8b"
        assert json.loads(gzip.decompress(request.raw_body)) == request.body
        assert int(request.headers["content-length"]) == len(request.raw_body)
    assert seqs(server.accepted_items("/track")) == list(range(100))


def test_identifies_then_aliases_then_tracks_within_one_export(
    server: FaultServer, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter(max_batch_size=2)
    # Record order is the opposite of the promised call order.
    batch = finished_spans(
        [
            *[
                (f"t{i}", {"analytics.event": "Viewed", "user.id": "u1", "seq": i}, (), 0, T0_NS)
                for i in range(3)
            ],
            *[
                (f"a{i}", {"analytics.alias": f"new-{i}", "user.id": f"old-{i}"}, (), 0, T0_NS)
                for i in range(3)
            ],
            *[
                (f"i{i}", {"user.id": f"u{i}", "user.email": f"u{i}@example.com"}, (), 0, T0_NS)
                for i in range(3)
            ],
        ]
    )

    assert exporter.export(batch) is SpanExportResult.SUCCESS

    assert [r.path for r in server.requests] == [
        "/identify",
        "/identify",
        "/alias",
        "/alias",
        "/track",
        "/track",
    ]
    assert [i["distinct_id"] for i in server.items("/identify")] == ["u0", "u1", "u2"]
    assert [i["new_user_id"] for i in server.items("/alias")] == ["new-0", "new-1", "new-2"]
    assert seqs(server.items("/track")) == [0, 1, 2]


def test_one_pooled_connection_serves_every_export(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    exporter = make_exporter(max_batch_size=10)

    for round_number in range(4):
        assert exporter.export(spans(25, start=round_number * 25)) is SpanExportResult.SUCCESS

    assert len(server.requests) == 12
    assert server.connections_accepted == 1
    assert {r.client_port for r in server.requests} == {server.requests[0].client_port}
    assert seqs(server.accepted_items("/track")) == list(range(100))


def test_a_user_session_is_used_as_given(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, api_key: str
) -> None:
    session = requests.Session()
    session.headers["X-Tenant"] = "acme"
    session.auth = ("svc-user", "svc-password")
    hooked: list[int] = []

    def on_response(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        hooked.append(response.status_code)

    session.hooks["response"].append(on_response)
    try:
        exporter = make_exporter(session=session, max_batch_size=5)

        assert exporter.export(spans(12)) is SpanExportResult.SUCCESS

        assert len(server.requests) == 3
        expected_auth = "Basic " + base64.b64encode(b"svc-user:svc-password").decode()
        for request in server.requests:
            assert request.headers["x-tenant"] == "acme"
            assert request.headers["authorization"] == expected_auth
            assert request.headers["x-api-key"] == api_key
        assert hooked == [200, 200, 200]

        # Shutting the exporter down leaves the caller's session and its pool alone.
        exporter.shutdown()
        after = session.post(f"{server.endpoint}/elsewhere", json={"still": "usable"})
        assert after.status_code == 200
        assert server.connections_accepted == 1
        assert server.requests[-1].connection == server.requests[0].connection
    finally:
        session.close()


def test_the_same_identify_is_sent_once(server: FaultServer, make_exporter: MakeExporter) -> None:
    exporter = make_exporter()

    assert exporter.export(identity_spans("a@example.com")) is SpanExportResult.SUCCESS
    assert exporter.export(identity_spans("a@example.com")) is SpanExportResult.SUCCESS
    assert exporter.export(identity_spans("b@example.com")) is SpanExportResult.SUCCESS

    assert [i["traits"] for i in server.items("/identify")] == [
        {"email": "a@example.com"},
        {"email": "b@example.com"},
    ]
    assert len(server.requests) == 2


def test_an_identify_that_was_not_delivered_is_sent_again(
    server: FaultServer, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter()
    server.script("/identify", [retry_later(503)] * 4)  # the whole retry budget of one export

    assert exporter.export(identity_spans("a@example.com")) is SpanExportResult.FAILURE
    assert exporter.export(identity_spans("a@example.com")) is SpanExportResult.SUCCESS

    assert len(server.requests_to("/identify")) == 5
    assert [i["traits"] for i in server.accepted_items("/identify")] == [{"email": "a@example.com"}]


def test_success_only_when_every_call_was_accepted(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.add_rule(reject_items(lambda item: item["event"] == "bad"))
    exporter = make_exporter(max_batch_size=100)

    good = exporter.export(spans(300))
    one_bad = exporter.export(spans(299, start=300) + spans(1, start=599, event="bad"))
    nothing_tagged = exporter.export(
        finished_spans([("GET /health", {"http.route": "/health"}, (), 0, T0_NS)])
    )

    assert good is SpanExportResult.SUCCESS
    assert one_bad is SpanExportResult.FAILURE
    assert nothing_tagged is SpanExportResult.SUCCESS
    assert sorted(seqs(server.accepted_items("/track"))) == list(range(599))
    stats = exporter.stats()
    assert stats["calls_exported"] == 599
    assert stats["calls_dropped"] == 1
    assert stats["dropped_by_reason"] == {"invalid-event": 1}


def test_the_log_exporter_delivers_the_same_way(server: FaultServer, api_key: str) -> None:
    exporter = AltertableLogExporter(
        api_key=api_key, endpoint=server.endpoint, timeout=2.0, max_batch_size=4, sync=True
    )
    try:
        records = emitted_log_records(
            [
                {"attributes": {"analytics.event": "Signed Up", "user.id": "u1", "seq": i}}
                for i in range(10)
            ]
        )

        assert exporter.export(records) is LogRecordExportResult.SUCCESS

        assert [len(r.body) for r in server.requests] == [4, 4, 2]
        assert {r.path for r in server.requests} == {"/track"}
        assert all(r.query == {"sync": ["true"]} for r in server.requests)
        assert all(r.headers["x-api-key"] == api_key for r in server.requests)
        assert seqs(server.accepted_items("/track")) == list(range(10))
        assert server.connections_accepted == 1
    finally:
        exporter.shutdown()
