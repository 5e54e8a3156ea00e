"""The bridge's OTLP/HTTP contract: both encodings, every AnyValue kind, and the answer rules."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from faultserver import Answer, FaultServer, bad_request, retry_later
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from support import KEY, running_bridge, sample_logs, sample_spans

from opentelemetry_exporter_altertable.bridge import BridgeServer

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
ENDPOINTS = ("/identify", "/alias", "/track")


def otlp_json(message: Any) -> bytes:
    """A protobuf request in the OTLP JSON encoding: hex ids, camelCase, enum integers."""
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)

    def hexify(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hexify(value)
        elif isinstance(node, list):
            for item in node:
                hexify(item)

    hexify(doc)
    return json.dumps(doc).encode()


def post(
    bridge: BridgeServer, path: str, body: bytes, headers: dict[str, str]
) -> requests.Response:
    return requests.post(f"{bridge.endpoint}{path}", data=body, headers=headers, timeout=10)


@pytest.fixture
def api() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def bridge(api: FaultServer) -> Iterator[BridgeServer]:
    with running_bridge(api.endpoint) as server:
        yield server


def _payloads(server: FaultServer) -> dict[str, list[Any]]:
    return {path: server.accepted_items(path) for path in ENDPOINTS}


def test_json_and_protobuf_encodings_give_the_same_calls() -> None:
    traces, logs = encode_spans(sample_spans()), encode_logs(sample_logs())
    results = []
    for encode, headers in ((lambda m: m.SerializeToString(), PROTOBUF), (otlp_json, JSON)):
        with FaultServer() as api, running_bridge(api.endpoint) as bridge:
            assert post(bridge, "/v1/traces", encode(traces), headers).status_code == 200
            assert post(bridge, "/v1/logs", encode(logs), headers).status_code == 200
            results.append(_payloads(api))
    assert len(results[0]["/track"]) == 15
    assert results[1] == results[0]


def _any_value_doc(trace_id: str, span_id: str) -> dict[str, Any]:
    attributes = [
        {"key": "analytics.event", "value": {"stringValue": "Every Kind"}},
        {"key": "user.id", "value": {"stringValue": "u-1"}},
        {"key": "s", "value": {"stringValue": "text"}},
        {"key": "b", "value": {"boolValue": True}},
        {"key": "i_string", "value": {"intValue": "9007199254740993"}},
        {"key": "i_number", "value": {"intValue": 42}},
        {"key": "d", "value": {"doubleValue": 1.5}},
        {"key": "d_int", "value": {"doubleValue": 2}},
        {"key": "raw", "value": {"bytesValue": base64.b64encode(b"hello").decode()}},
        {
            "key": "arr",
            "value": {"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": "1"}, {}]}},
        },
        {
            "key": "kv",
            "value": {
                "kvlistValue": {
                    "values": [
                        {"key": "inner", "value": {"boolValue": False}},
                        {
                            "key": "deep",
                            "value": {"arrayValue": {"values": [{"doubleValue": 0.5}]}},
                        },
                    ]
                }
            },
        },
        {"key": "empty", "value": {}},
    ]
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "go"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "any-language"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": "op",
                                "kind": 2,
                                "startTimeUnixNano": "1672574399000000000",
                                "endTimeUnixNano": "1672574400123000000",
                                "attributes": attributes,
                                "droppedAttributesCount": 3,
                                "status": {"code": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }


def test_otlp_json_carries_every_any_value_kind(api: FaultServer, bridge: BridgeServer) -> None:
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = json.dumps(_any_value_doc(trace_id, span_id)).encode()
    answer = post(bridge, "/v1/traces", body, JSON)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {}
    (track,) = api.accepted_items("/track")
    assert track["event"] == "Every Kind"
    assert track["distinct_id"] == "u-1"
    assert track["timestamp"] == "2023-01-01T12:00:00.123Z"
    props = track["properties"]
    assert props["otel.trace_id"] == trace_id
    assert props["otel.span_id"] == span_id
    assert props["service.name"] == "go"
    assert {k: props[k] for k in ("s", "b", "i_string", "i_number", "d", "d_int", "raw")} == {
        "s": "text",
        "b": True,
        "i_string": 9007199254740993,
        "i_number": 42,
        "d": 1.5,
        "d_int": 2.0,
        "raw": "hello",
    }
    assert props["arr"] == ["x", 1, None]
    assert props["kv"] == {"inner": False, "deep": [0.5]}
    assert props["empty"] is None


def test_answers_come_in_the_request_encoding(api: FaultServer, bridge: BridgeServer) -> None:
    message = encode_spans(sample_spans(1))
    answer = post(bridge, "/v1/traces", message.SerializeToString(), PROTOBUF)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse.FromString(answer.content)
    assert not parsed.HasField("partial_success")
    gzipped = gzip.compress(encode_logs(sample_logs(1)).SerializeToString())
    answer = post(bridge, "/v1/logs", gzipped, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert answer.status_code == 200
    assert ExportLogsServiceResponse.FromString(answer.content).ByteSize() == 0
    assert bridge.bridge.answers()[("/v1/logs", "protobuf", 200)] == 1


def test_partial_success_counts_records_refused_for_good(api: FaultServer) -> None:
    # The API refuses tracks of one event for good (400 on those items: bisected out).
    def refuse(request: Any) -> Any:
        if any(item.get("event") == "Payment Sent" for item in request.items):
            return bad_request("invalid-event")
        return None

    api.add_rule(refuse, "/track")
    with running_bridge(api.endpoint) as bridge:
        message = encode_spans(sample_spans(3))
        answer = post(bridge, "/v1/traces", message.SerializeToString(), PROTOBUF)
        json_answer = post(bridge, "/v1/traces", otlp_json(message), JSON)
    assert answer.status_code == 200
    partial = ExportTraceServiceResponse.FromString(answer.content).partial_success
    assert partial.rejected_spans == 3
    assert "refused 3 calls" in partial.error_message
    assert json_answer.json()["partialSuccess"]["rejectedSpans"] == "3"
    delivered = [t["event"] for t in api.accepted_items("/track")]
    assert sorted(set(delivered)) == ["Cart Viewed", "item added"]


def test_503_with_retry_after_when_calls_are_neither_delivered_nor_spooled(
    api: FaultServer,
) -> None:
    api.set_default(retry_later(503))
    with running_bridge(api.endpoint, timeout=0.5) as bridge:
        body = encode_spans(sample_spans(1)).SerializeToString()
        answer = post(bridge, "/v1/traces", body, PROTOBUF)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert KEY not in answer.text


def test_200_once_the_calls_are_spooled_without_the_journal(
    api: FaultServer, tmp_path: Any
) -> None:
    api.set_default(retry_later(503))
    spool = tmp_path / "spool"
    with running_bridge(api.endpoint, timeout=0.5, spool_dir=str(spool), journal=False) as bridge:
        body = encode_spans(sample_spans(1)).SerializeToString()
        assert post(bridge, "/v1/traces", body, PROTOBUF).status_code == 200
        assert bridge.bridge.delivery.stats()["calls_spooled"] == 5
        api.set_default(Answer(200))
        # The next request replays the spool first: nothing accepted is lost.
        assert post(bridge, "/v1/traces", body, PROTOBUF).status_code == 200
    tracks = api.accepted_items("/track")
    assert len(tracks) == 6  # 3 spooled + 3 new (the identify is sent once: deduplicated)


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"\xff\xff\xff not protobuf", PROTOBUF, 400),
        (b"{not json", JSON, 400),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', JSON, 400),
        (b"[]", JSON, 400),
        (b"x", {"Content-Type": "text/plain"}, 415),
        (b"x", {}, 415),
        (b"\x1f\x8b broken", {**PROTOBUF, "Content-Encoding": "gzip"}, 400),
    ],
)
def test_bad_requests(
    api: FaultServer, bridge: BridgeServer, body: bytes, headers: dict[str, str], status: int
) -> None:
    answer = post(bridge, "/v1/traces", body, headers)
    assert answer.status_code == status
    assert api.requests == []


def test_400_body_is_a_status_message_in_the_request_encoding(bridge: BridgeServer) -> None:
    from google.rpc.status_pb2 import Status

    answer = post(bridge, "/v1/logs", b"\xff\xff\xff", PROTOBUF)
    assert answer.status_code == 400
    status = Status.FromString(answer.content)
    assert status.code == 3
    assert status.message.startswith("undecodable OTLP body")
    answer = post(bridge, "/v1/logs", b"{", JSON)
    assert answer.json()["code"] == 3


def test_413_past_the_body_limit_before_and_after_gzip(api: FaultServer) -> None:
    with running_bridge(api.endpoint, max_body_bytes=4096) as bridge:
        big = encode_spans(sample_spans(40)).SerializeToString()
        assert len(big) > 4096
        assert post(bridge, "/v1/traces", big, PROTOBUF).status_code == 413
        bomb = gzip.compress(b"\x00" * 100_000)
        assert len(bomb) < 4096
        answer = post(bridge, "/v1/traces", bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
        assert answer.status_code == 413
    assert api.requests == []


def test_token_required(api: FaultServer) -> None:
    body = encode_spans(sample_spans(1)).SerializeToString()
    with running_bridge(api.endpoint, token="s3cret") as bridge:
        assert post(bridge, "/v1/traces", body, PROTOBUF).status_code == 401
        wrong = {**PROTOBUF, "Authorization": "Bearer nope"}
        assert post(bridge, "/v1/traces", body, wrong).status_code == 401
        assert api.requests == []
        good = {**PROTOBUF, "Authorization": "Bearer s3cret"}
        assert post(bridge, "/v1/traces", body, good).status_code == 200
    assert len(api.accepted_items("/track")) == 3


def test_token_from_the_environment(api: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTERTABLE_BRIDGE_TOKEN", "from-env")
    body = encode_spans(sample_spans(1)).SerializeToString()
    with running_bridge(api.endpoint) as bridge:
        assert post(bridge, "/v1/traces", body, PROTOBUF).status_code == 401
        good = {**PROTOBUF, "Authorization": "Bearer from-env"}
        assert post(bridge, "/v1/traces", body, good).status_code == 200


def test_unknown_paths_and_methods(bridge: BridgeServer) -> None:
    assert post(bridge, "/v1/metrics", b"", PROTOBUF).status_code == 404
    answer = requests.get(f"{bridge.endpoint}/v1/traces", timeout=5)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"


def test_beyond_the_in_flight_bound_503_at_once(api: FaultServer) -> None:
    # Altertable answers slowly; one request holds the only place, the next is refused.
    release = threading.Event()

    def slow(request: Any) -> Any:
        release.wait(10)
        return None

    api.add_rule(slow, "/identify")
    body = encode_spans(sample_spans(1)).SerializeToString()
    with running_bridge(api.endpoint, max_in_flight=1, timeout=10) as bridge:
        first: list[int] = []
        worker = threading.Thread(
            target=lambda: first.append(post(bridge, "/v1/traces", body, PROTOBUF).status_code)
        )
        worker.start()
        assert api.wait_for_requests(1)
        second = post(bridge, "/v1/traces", body, PROTOBUF)
        release.set()
        worker.join(10)
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "5"
    assert first == [200]


def test_a_request_without_analytics_data_costs_no_call(
    api: FaultServer, bridge: BridgeServer
) -> None:
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "GET /", "kind": 2}]}]}]}
    assert post(bridge, "/v1/traces", json.dumps(doc).encode(), JSON).status_code == 200
    assert post(bridge, "/v1/traces", b"", PROTOBUF).status_code == 200
    assert api.requests == []
