"""The bridge over OTLP/gRPC: the SDK's own gRPC exporters -> bridge -> Altertable, and the
answers said in gRPC's words (codes, ``partial_success``, ``RetryInfo`` in the trailers)."""

from __future__ import annotations

import gzip
import threading
from typing import Any

import grpc
import pytest
import requests
from faultserver import Answer, FaultServer, bad_request, retry_later
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from grpc_support import (
    LOGS_METHOD,
    TRACES_METHOD,
    call,
    grpc_log_exporter,
    grpc_span_exporter,
    running_fronts,
    with_span_attributes,
)
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult
from support import (
    KEY,
    otlp_log_exporter,
    otlp_span_exporter,
    sample_logs,
    sample_spans,
    stored_identities,
    stored_rows,
    wire_field,
)

from opentelemetry_exporter_altertable import AltertableLogExporter, AltertableSpanExporter
from opentelemetry_exporter_altertable._http_server import ListenerBounds
from opentelemetry_exporter_altertable.bridge._grpc import retry_info, status_details
from opentelemetry_exporter_altertable.receiver import LocalReceiver

ENDPOINTS = ("/identify", "/alias", "/track")



def _gzip(on: bool) -> grpc.Compression:
    return grpc.Compression.Gzip if on else grpc.Compression.NoCompression


@pytest.mark.parametrize("gzip_on", [True, False], ids=["gzip", "plain"])
def test_rows_equal_in_process_over_http_and_over_grpc(gzip_on: bool) -> None:
    spans, logs = sample_spans(), sample_logs()
    with LocalReceiver() as direct, LocalReceiver() as over_http, LocalReceiver() as over_grpc:
        span_exporter = AltertableSpanExporter(api_key=KEY, endpoint=direct.endpoint, sync=True)
        log_exporter = AltertableLogExporter(api_key=KEY, endpoint=direct.endpoint, sync=True)
        assert span_exporter.export(spans) is SpanExportResult.SUCCESS
        assert log_exporter.export(logs) is LogRecordExportResult.SUCCESS
        span_exporter.shutdown()
        log_exporter.shutdown()
        with running_fronts(over_http.endpoint, sync=True) as fronts:
            exporters = (otlp_span_exporter(fronts.http.endpoint),
                         otlp_log_exporter(fronts.http.endpoint))  # fmt: skip
            assert exporters[0].export(spans) is SpanExportResult.SUCCESS
            assert exporters[1].export(logs) is LogRecordExportResult.SUCCESS
            for exporter in exporters:
                exporter.shutdown()
        with running_fronts(over_grpc.endpoint, sync=True) as fronts:
            grpc_spans = grpc_span_exporter(fronts.grpc.endpoint, compression=_gzip(gzip_on))
            grpc_logs = grpc_log_exporter(fronts.grpc.endpoint, compression=_gzip(gzip_on))
            assert grpc_spans.export(spans) is SpanExportResult.SUCCESS
            assert grpc_logs.export(logs) is LogRecordExportResult.SUCCESS
            grpc_spans.shutdown()
            grpc_logs.shutdown()
            answers = fronts.grpc.answers()
        expected = stored_rows(direct)
        assert len(expected) == 15
        assert stored_rows(over_http) == expected
        assert stored_rows(over_grpc) == expected
        assert stored_identities(over_grpc) == stored_identities(direct)
    assert answers == {("/v1/traces", "OK"): 1, ("/v1/logs", "OK"): 1}


def test_same_calls_in_the_same_order_as_in_process() -> None:
    spans, logs = sample_spans(), sample_logs()
    with FaultServer() as direct, FaultServer() as bridged:
        span_exporter = AltertableSpanExporter(api_key=KEY, endpoint=direct.endpoint)
        log_exporter = AltertableLogExporter(api_key=KEY, endpoint=direct.endpoint)
        assert span_exporter.export(spans) is SpanExportResult.SUCCESS
        assert log_exporter.export(logs) is LogRecordExportResult.SUCCESS
        span_exporter.shutdown()
        log_exporter.shutdown()
        with running_fronts(bridged.endpoint) as fronts:
            grpc_spans = grpc_span_exporter(fronts.grpc.endpoint)
            grpc_logs = grpc_log_exporter(fronts.grpc.endpoint)
            assert grpc_spans.export(spans) is SpanExportResult.SUCCESS
            assert grpc_logs.export(logs) is LogRecordExportResult.SUCCESS
            grpc_spans.shutdown()
            grpc_logs.shutdown()
        expected = {path: direct.accepted_items(path) for path in ENDPOINTS}
        got = {path: bridged.accepted_items(path) for path in ENDPOINTS}
    assert len(expected["/track"]) == 15
    assert got == expected
    assert all(r.headers.get("x-api-key") == KEY for r in bridged.requests)


def test_status_details_are_what_googles_own_classes_read() -> None:
    # Hand-encoded so the otlp extra needs no googleapis-common-protos: checked against it.
    status = Status.FromString(status_details(grpc.StatusCode.UNAVAILABLE, "wait, é", 7))
    assert (status.code, status.message) == (14, "wait, é")
    (detail,) = status.details
    info = RetryInfo()
    assert detail.Unpack(info)
    assert info.retry_delay.seconds == 7
    assert RetryInfo.FromString(retry_info(300)).retry_delay.seconds == 300
    plain = Status.FromString(status_details(grpc.StatusCode.INVALID_ARGUMENT, "x" * 300))
    assert (plain.code, plain.message, len(plain.details)) == (3, "x" * 300, 0)


def test_partial_success_counts_records_refused_for_good() -> None:
    def refuse(request: Any) -> Any:
        if any(item.get("event") == "Payment Sent" for item in request.items):
            return bad_request("invalid-event")
        return None

    with FaultServer() as api, running_fronts(api.endpoint) as fronts:
        api.add_rule(refuse, "/track")
        body = encode_spans(sample_spans(3)).SerializeToString()
        reply = call(fronts.grpc.target, TRACES_METHOD, body)
        delivered = {t["event"] for t in api.accepted_items("/track")}
    assert reply.code is grpc.StatusCode.OK
    partial = ExportTraceServiceResponse.FromString(reply.body).partial_success
    assert partial.rejected_spans == 3
    assert "refused 3 calls" in partial.error_message
    assert delivered == {"Cart Viewed", "item added"}


def test_logs_answer_an_empty_logs_response() -> None:
    with FaultServer() as api, running_fronts(api.endpoint) as fronts:
        body = encode_logs(sample_logs(1)).SerializeToString()
        reply = call(fronts.grpc.target, LOGS_METHOD, body, compression=grpc.Compression.Gzip)
        tracks = api.accepted_items("/track")
    assert reply.code is grpc.StatusCode.OK
    assert ExportLogsServiceResponse.FromString(reply.body).ByteSize() == 0
    assert sorted(t["event"] for t in tracks) == ["Signed In", "order.placed"]


def _retry_seconds(reply: Any) -> tuple[int, int]:
    """RetryInfo's delay from both trailers: the Status details and Python's own key."""
    status = Status.FromString(reply.trailers["grpc-status-details-bin"])
    info = RetryInfo()
    assert status.details[0].Unpack(info)
    python = RetryInfo.FromString(reply.trailers["google.rpc.retryinfo-bin"])
    return info.retry_delay.seconds, python.retry_delay.seconds


def test_unavailable_with_retry_info_when_neither_delivered_nor_spooled() -> None:
    with FaultServer() as api, running_fronts(api.endpoint, timeout=0.5) as fronts:
        api.set_default(retry_later(503))
        body = encode_spans(sample_spans(1)).SerializeToString()
        reply = call(fronts.grpc.target, TRACES_METHOD, body)
    assert reply.code is grpc.StatusCode.UNAVAILABLE
    assert _retry_seconds(reply) == (5, 5)
    assert KEY not in reply.details
    assert Status.FromString(reply.trailers["grpc-status-details-bin"]).code == 14


def test_ok_once_the_calls_are_spooled_without_the_journal(tmp_path: Any) -> None:
    spool = tmp_path / "spool"
    with (
        FaultServer() as api,
        running_fronts(api.endpoint, timeout=0.5, spool_dir=str(spool), journal=False) as fronts,
    ):
        api.set_default(retry_later(503))
        body = encode_spans(sample_spans(1)).SerializeToString()
        assert call(fronts.grpc.target, TRACES_METHOD, body).code is grpc.StatusCode.OK
        assert fronts.bridge.delivery.stats()["calls_spooled"] == 5
        api.set_default(Answer(200))
        assert call(fronts.grpc.target, TRACES_METHOD, body).code is grpc.StatusCode.OK
        tracks = api.accepted_items("/track")
    assert len(tracks) == 6


@pytest.mark.parametrize("method", [TRACES_METHOD, LOGS_METHOD])
@pytest.mark.parametrize(
    "body", [b"\xff\xff\xff not protobuf", b"\x0a\x05\x0a\x03"], ids=["garbage", "truncated"]
)
def test_a_malformed_message_is_invalid_argument(method: str, body: bytes) -> None:
    with FaultServer() as api, running_fronts(api.endpoint) as fronts:
        reply = call(fronts.grpc.target, method, body)
        answers = fronts.grpc.answers()
        assert api.requests == []
    assert reply.code is grpc.StatusCode.INVALID_ARGUMENT
    assert reply.details.startswith("undecodable OTLP body")
    assert Status.FromString(reply.trailers["grpc-status-details-bin"]).code == 3
    assert sum(answers.values()) == 1


def test_a_bad_token_is_unauthenticated(monkeypatch: pytest.MonkeyPatch) -> None:
    body = encode_spans(sample_spans(1)).SerializeToString()
    with FaultServer() as api, running_fronts(api.endpoint, token="s3cret") as fronts:
        target = fronts.grpc.target
        assert call(target, TRACES_METHOD, body).code is grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer nope"),)
        reply = call(target, TRACES_METHOD, body, metadata=wrong)
        assert reply.code is grpc.StatusCode.UNAUTHENTICATED
        assert "s3cret" not in reply.details
        # The SDK's exporter does not retry it, and sends nothing more.
        exporter = grpc_span_exporter(fronts.grpc.endpoint, timeout=5)
        assert exporter.export(sample_spans(1)) is SpanExportResult.FAILURE
        assert api.requests == []
        good = grpc_span_exporter(fronts.grpc.endpoint, headers={"authorization": "Bearer s3cret"})
        assert good.export(sample_spans(1)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        good.shutdown()
        answers = fronts.grpc.answers()
    assert answers[("/v1/traces", "UNAUTHENTICATED")] == 3
    assert answers[("/v1/traces", "OK")] == 1
    assert len(api.accepted_items("/track")) == 3


def test_the_token_comes_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTERTABLE_BRIDGE_TOKEN", "from-env")
    body = encode_spans(sample_spans(1)).SerializeToString()
    with FaultServer() as api, running_fronts(api.endpoint) as fronts:
        target = fronts.grpc.target
        assert call(target, TRACES_METHOD, body).code is grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer from-env"),)
        assert call(target, TRACES_METHOD, body, metadata=good).code is grpc.StatusCode.OK


def test_past_the_size_limit_is_resource_exhausted_compressed_or_inflated() -> None:
    with FaultServer() as api, running_fronts(api.endpoint, max_body_bytes=4096) as fronts:
        big = encode_spans(sample_spans(40)).SerializeToString()
        assert len(big) > 4096
        reply = call(fronts.grpc.target, TRACES_METHOD, big)
        assert reply.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        # Small on the wire, past the limit once inflated.
        zeros = b"\x00" * 100_000
        assert len(gzip.compress(zeros)) < 4096
        inflated = call(fronts.grpc.target, TRACES_METHOD, zeros, compression=grpc.Compression.Gzip)
        assert inflated.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        # Below the limit, the same way, it goes through.
        small = encode_spans(sample_spans(1)).SerializeToString()
        ok = call(fronts.grpc.target, TRACES_METHOD, small, compression=grpc.Compression.Gzip)
        assert ok.code is grpc.StatusCode.OK
        assert len(api.accepted_items("/track")) == 3


def test_beyond_the_in_flight_bound_unavailable_with_retry_info_at_once() -> None:
    release = threading.Event()
    body = encode_spans(sample_spans(1)).SerializeToString()
    with (
        FaultServer() as api,
        running_fronts(api.endpoint, max_in_flight=1, timeout=10) as fronts,
    ):
        api.add_rule(lambda request: (release.wait(10), None)[1], "/identify")
        first: list[Any] = []
        worker = threading.Thread(
            target=lambda: first.append(call(fronts.grpc.target, TRACES_METHOD, body))
        )
        worker.start()
        assert api.wait_for_requests(1)
        second = call(fronts.grpc.target, TRACES_METHOD, body, timeout=5)
        release.set()
        worker.join(10)
    assert second.code is grpc.StatusCode.UNAVAILABLE
    assert "capacity" in second.details
    assert _retry_seconds(second) == (5, 5)
    assert [r.code for r in first] == [grpc.StatusCode.OK]


def test_other_services_are_unimplemented_and_an_empty_message_costs_nothing() -> None:
    with FaultServer() as api, running_fronts(api.endpoint) as fronts:
        metrics = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
        assert call(fronts.grpc.target, metrics, b"").code is grpc.StatusCode.UNIMPLEMENTED
        assert call(fronts.grpc.target, TRACES_METHOD, b"").code is grpc.StatusCode.OK
        assert api.requests == []


#: One empty attribute ``"a"`` as a ``Span.attributes`` field: 5 bytes.
EMPTY_ATTRIBUTE = wire_field(9, wire_field(1, b"a"))


def _elements(request: bytes) -> int:
    """The smallest element bound the bridge accepts ``request`` under, by its own count."""
    from opentelemetry_exporter_altertable.bridge import _elements as counting

    limit = 1
    while True:
        try:
            counting._walk(request, "ExportTraceServiceRequest", ListenerBounds(max_elements=limit))
        except counting.TooManyElements:
            limit += 1
        else:
            return limit


def test_elements_are_bounded_as_well_as_bytes_on_both_fronts() -> None:
    base = encode_spans(sample_spans(1)[:1]).SerializeToString()
    limit = _elements(base) + 100
    at_limit = with_span_attributes(base, EMPTY_ATTRIBUTE * 100)
    past = with_span_attributes(base, EMPTY_ATTRIBUTE * 101)
    assert _elements(at_limit) == limit
    assert _elements(past) > limit
    bounds = ListenerBounds(max_elements=limit)
    with FaultServer() as api, running_fronts(api.endpoint, bounds=bounds) as fronts:
        assert call(fronts.grpc.target, TRACES_METHOD, at_limit).code is grpc.StatusCode.OK
        refused = call(fronts.grpc.target, TRACES_METHOD, past)
        http = requests.post(
            f"{fronts.http.endpoint}/v1/traces",
            data=past,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        tracks = api.accepted_items("/track")
    assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "send smaller batches" in refused.details
    assert http.status_code == 413
    assert sorted(t["event"] for t in tracks) == ["Cart Viewed", "item added"]  # once


def test_six_megabytes_of_empty_attributes_are_refused_by_default() -> None:
    # 1,200,000 attributes in 6 MB, well under the 16 MiB limit in bytes.
    flood = with_span_attributes(
        encode_spans(sample_spans(1)[:1]).SerializeToString(), EMPTY_ATTRIBUTE * 1_200_000
    )
    with FaultServer() as api, running_fronts(api.endpoint) as fronts:
        reply = call(fronts.grpc.target, TRACES_METHOD, flood)
        assert api.requests == []
    assert reply.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_bug_in_the_bridge_is_internal_with_a_log_line_and_the_port_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = encode_spans(sample_spans(1)).SerializeToString()
    with FaultServer() as api, running_fronts(api.endpoint) as fronts:
        handle = fronts.bridge.handle

        def broken(*args: Any) -> Any:
            raise KeyError("a bug")

        fronts.bridge.handle = broken
        with caplog.at_level("ERROR"):
            reply = call(fronts.grpc.target, TRACES_METHOD, body)
        fronts.bridge.handle = handle
        assert call(fronts.grpc.target, TRACES_METHOD, body).code is grpc.StatusCode.OK
    assert reply.code is grpc.StatusCode.INTERNAL
    assert reply.details == "internal error in the bridge"
    assert "internal error handling /v1/traces over gRPC" in caplog.text
