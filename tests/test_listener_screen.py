"""One screen for browsers and keys, over real loopback: a keyed ``serve`` keys OTLP too, the
bridge refuses rebinding hosts and foreign origins, keys are masked in logs however the query
spells them, and secrets can be given without showing them in ``ps``."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from listener_support import connect, post, post_head, read_answer, status_of, tagged_spans_request
from support import KEY, running_bridge

from opentelemetry_exporter_altertable.bridge import BridgeServer, GrpcBridgeServer, create_bridge
from opentelemetry_exporter_altertable.bridge._cli import add_otlp_routes
from opentelemetry_exporter_altertable.cli import build_parser
from opentelemetry_exporter_altertable.receiver import LocalReceiver

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def events(receiver: LocalReceiver) -> int:
    return int(receiver.query("SELECT count(*) FROM altertable.analytics.events")[0][0])


def test_a_keyed_serve_requires_the_key_on_the_otlp_routes() -> None:
    with LocalReceiver(api_keys=["pk_only"]) as receiver:
        stop = add_otlp_routes(receiver, "pk_only")
        assert stop is not None
        try:
            port = port_of(receiver.endpoint)
            body = tagged_spans_request(0, 1)
            assert post(port, "/v1/traces", body, PROTOBUF) == 401
            assert post(port, "/v1/logs", b"", PROTOBUF) == 401
            assert post(port, "/v1/traces", body, {**PROTOBUF, "X-API-Key": "wrong"}) == 401
            assert events(receiver) == 0
            keyed = {**PROTOBUF, "Authorization": "Bearer pk_only"}
            assert post(port, "/v1/traces", body, keyed) == 200
            assert events(receiver) > 0
        finally:
            stop()


def test_an_unkeyed_serve_takes_otlp_from_an_sdk_left_at_its_defaults() -> None:
    with LocalReceiver() as receiver:
        stop = add_otlp_routes(receiver, "local")
        assert stop is not None
        try:
            assert post(port_of(receiver.endpoint), "/v1/traces", tagged_spans_request(0, 1),
                        PROTOBUF) == 200  # fmt: skip
        finally:
            stop()


def test_the_bridge_refuses_a_rebinding_host_and_forwards_nothing() -> None:
    with LocalReceiver() as sink, running_bridge(sink.endpoint) as bridge:
        port = port_of(bridge.endpoint)
        body = tagged_spans_request(0, 1)
        status = post(port, "/v1/traces", body, {**PROTOBUF, "Host": "attacker.example:4318"})
        assert status == 403
        assert events(sink) == 0
        assert post(port, "/v1/traces", body, {**PROTOBUF, "Host": "localhost:4318"}) == 200


def test_the_bridge_refuses_origins_not_listed() -> None:
    with LocalReceiver() as sink, running_bridge(sink.endpoint) as bridge:
        answer = requests.post(
            bridge.endpoint + "/v1/traces",
            data=tagged_spans_request(0, 1),
            headers={**PROTOBUF, "Origin": "http://attacker.example"},
            timeout=5,
        )
        assert answer.status_code == 403
        assert events(sink) == 0


def test_a_listed_origin_may_send() -> None:
    with LocalReceiver() as sink:
        bridge = create_bridge(api_key=KEY, endpoint=sink.endpoint)
        server = BridgeServer(bridge, port=0, allow_origins=["https://app.example.com/"])
        with server:
            answer = requests.post(
                server.endpoint + "/v1/traces",
                data=tagged_spans_request(0, 1),
                headers={**PROTOBUF, "Origin": "https://app.example.com"},
                timeout=5,
            )
        assert answer.status_code == 200


def test_the_bridge_beyond_loopback_does_not_start_without_a_token() -> None:
    bridge = create_bridge(api_key=KEY, endpoint="http://127.0.0.1:9")
    server = BridgeServer(bridge, host="0.0.0.0", port=0)
    try:
        with pytest.raises(ValueError, match="token"):
            server.start()
    finally:
        server.stop()
        bridge.delivery.shutdown()


def test_the_grpc_bridge_beyond_loopback_does_not_start_without_a_token() -> None:
    bridge = create_bridge(api_key=KEY, endpoint="http://127.0.0.1:9")
    server = GrpcBridgeServer(bridge, host="0.0.0.0", port=0)
    try:
        with pytest.raises(ValueError, match="token"):
            server.start()
    finally:
        server.stop()
        bridge.delivery.shutdown()


@pytest.mark.parametrize("name", ["api%4Bey", "%61piKey", "APIKEY", "apikey"])
def test_a_key_in_the_query_is_masked_however_its_name_is_spelled(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="opentelemetry_exporter_altertable")
    secret = "pk_SECRET_in_the_query"
    body = b'{"environment":"production","event":"Masked","distinct_id":"u","properties":{}}'
    with LocalReceiver(request_log_level=logging.INFO) as receiver:
        # Sent as written: an HTTP library would normalise %4B to K on its own.
        head = post_head(f"/track?{name}={secret}", {"Content-Length": str(len(body))})
        with connect(port_of(receiver.endpoint)) as sock:
            sock.sendall(head + body)
            assert status_of(read_answer(sock, 5.0)) in (200, 401)  # only apiKey is a key
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/track" in logged
    assert secret not in logged


def test_secret_flags_read_a_file_given_as_at_path(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok_from_file\n")
    args = build_parser().parse_args(
        ["bridge", "--token", f"@{token_file}", "--api-key", f"@{token_file}"]
    )
    assert args.token == "tok_from_file" and args.api_key == "tok_from_file"
    args = build_parser().parse_args(["serve", "--api-key", f"@{token_file}"])
    assert args.api_keys == ["tok_from_file"]
    assert build_parser().parse_args(["bridge", "--token", "@@literal"]).token == "@literal"


def test_serve_given_its_key_in_a_file_keeps_it_out_of_ps(tmp_path: Path) -> None:
    secret = "pk_file_only_secret"
    key_file = tmp_path / "key"
    key_file.write_text(secret + "\n")
    command = [sys.executable, "-m", "opentelemetry_exporter_altertable.cli", "serve",
               "--db", ":memory:", "--port", "0", "--api-key", f"@{key_file}"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        endpoint = banner.strip().rsplit(" ", 1)[-1]
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        event = {"environment": "production", "event": "Keyed", "distinct_id": "u",
                 "properties": {}}  # fmt: skip
        good = requests.post(f"{endpoint}/track", json=event, headers={"X-API-Key": secret},
                             timeout=5)  # fmt: skip
        bad = requests.post(f"{endpoint}/track", json=event, headers={"X-API-Key": f"@{key_file}"},
                            timeout=5)  # fmt: skip
        assert (good.status_code, bad.status_code) == (200, 401)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def test_a_keyed_serve_refuses_a_request_without_its_key_before_reading_the_body() -> None:
    with (
        LocalReceiver(api_keys=["pk_only"]) as receiver,
        connect(port_of(receiver.endpoint)) as sock,
    ):
        length = 100 * 1024 * 1024  # announced, never sent
        sock.sendall(post_head("/track", {"X-API-Key": "wrong", "Content-Length": str(length)}))
        assert status_of(read_answer(sock, 3.0)) == 401
