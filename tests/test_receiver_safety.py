"""The receiver on a developer's machine, over real loopback HTTP: requests from web pages
(foreign ``Origin``, DNS rebinding ``Host``) are refused on every endpoint, malformed JSON of
any depth is 400, and bodies and concurrency are bounded (413, 503 with ``Retry-After``)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests

from opentelemetry_exporter_altertable.receiver import LocalReceiver
from opentelemetry_exporter_altertable.receiver._app import Application
from opentelemetry_exporter_altertable.receiver._server import Server
from opentelemetry_exporter_altertable.receiver._validation import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_VALUES,
    ApiError,
    decode_body,
)

KEY = "pk_test_safety"


def track(event: str = "Safe", **extra: Any) -> dict[str, Any]:
    return {"environment": "production", "event": event, "properties": {}, **extra}


def stored(receiver: LocalReceiver) -> int:
    return int(receiver.query("SELECT count(*) FROM altertable.analytics.events")[0][0])


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as local:
        yield local


def error_code(response: requests.Response) -> str:
    return str(response.json()["error_code"])


# -- 13: cross-site requests and DNS rebinding ------------------------------------------------


def test_csrf_text_plain_post_to_query_with_a_foreign_origin_is_refused(
    receiver: LocalReceiver, tmp_path: Path
) -> None:
    # What any web page can send without a preflight: a text/plain "simple request".
    target = tmp_path / "pwned.sh"
    statement = f"COPY (SELECT 'echo pwned') TO '{target}' (FORMAT csv, HEADER false)"
    response = requests.post(
        receiver.endpoint + "/query?apiKey=x",
        data=json.dumps({"statement": statement}),
        headers={"Content-Type": "text/plain", "Origin": "https://attacker.example"},
        timeout=5,
    )
    assert response.status_code == 403
    assert error_code(response) == "forbidden-origin"
    assert not target.exists()


def test_csrf_text_plain_post_to_track_stores_nothing(receiver: LocalReceiver) -> None:
    response = requests.post(
        receiver.endpoint + "/track?apiKey=x",
        data=json.dumps(track()),
        headers={"Content-Type": "text/plain", "Origin": "http://evil.localhost.example:15001"},
        timeout=5,
    )
    assert response.status_code == 403
    assert stored(receiver) == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/health"), ("GET", "/"), ("GET", "/nowhere"), ("POST", "/track"),
     ("POST", "/identify"), ("POST", "/alias"), ("POST", "/query")],
)  # fmt: skip
@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example:15001"},  # DNS rebinding: the page's own name
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},  # sandboxed frames, file:// pages
    ],
)
def test_foreign_origin_or_host_is_refused_on_every_endpoint(
    receiver: LocalReceiver, method: str, path: str, headers: dict[str, str]
) -> None:
    with requests.Session() as session:
        response = session.request(
            method,
            receiver.endpoint + path,
            data=json.dumps(track()) if method == "POST" else None,
            headers={"X-API-Key": KEY, **headers},
            timeout=5,
        )
        assert response.status_code == 403
        assert error_code(response) in ("forbidden-origin", "forbidden-host")
        # The body was read and discarded: the connection still serves the next request.
        assert session.get(receiver.endpoint + "/health", timeout=5).status_code == 200
    assert stored(receiver) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "127.3.4.5", "[::1]"])
def test_loopback_hosts_and_the_own_origin_are_accepted(receiver: LocalReceiver, host: str) -> None:
    authority = f"{host}:{receiver.port}"
    response = requests.post(
        receiver.endpoint + "/track",
        json=track(),
        headers={"X-API-Key": KEY, "Host": authority, "Origin": f"http://{authority}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert stored(receiver) == 1


def test_a_request_on_a_raw_socket_without_host_or_origin_is_served(
    receiver: LocalReceiver,
) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200 ")


def _screen(bound: str, host: str, origin: str | None = None) -> int | None:
    app = Application(cast(Any, None), None, None, 1024, host=bound)
    headers = {"host": host} if origin is None else {"host": host, "origin": origin}
    refusal = app.screen(headers)
    return None if refusal is None else refusal.status


def test_the_host_given_is_accepted_and_a_wildcard_accepts_addresses_not_names() -> None:
    assert _screen("devbox.internal", "devbox.internal:15001") is None
    assert _screen("devbox.internal", "DevBox.Internal:15001") is None
    assert _screen("devbox.internal", "other.internal:15001") == 403
    assert _screen("10.1.2.3", "10.1.2.3:15001") is None
    assert _screen("10.1.2.3", "10.1.2.4:15001") == 403
    assert _screen("0.0.0.0", "192.168.1.20:15001") is None
    assert _screen("0.0.0.0", "[fe80::1]:15001") is None
    assert _screen("0.0.0.0", "rebind.attacker.example:15001") == 403
    assert _screen("0.0.0.0", "192.168.1.20:15001", "http://192.168.1.20:15001") is None
    assert _screen("0.0.0.0", "192.168.1.20:15001", "http://localhost:15001") == 403


def test_beyond_loopback_without_keys_the_receiver_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="api-key"):
        LocalReceiver(host="0.0.0.0").start()


def test_on_every_interface_the_loopback_endpoint_works_and_names_are_refused() -> None:
    with LocalReceiver(host="0.0.0.0", api_keys=[KEY]) as local:
        assert local.bound_address == f"http://0.0.0.0:{local.port}"
        ok = requests.post(
            local.endpoint + "/track", json=track(), headers={"X-API-Key": KEY}, timeout=5
        )
        assert ok.status_code == 200
        rebound = requests.get(
            local.endpoint + "/health",
            headers={"Host": f"attacker.example:{local.port}"},
            timeout=5,
        )
        assert rebound.status_code == 403


# -- 17: nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1_000, 10_000, 100_000])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_400_never_500(
    receiver: LocalReceiver, depth: int, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    body = opener * depth + closer * depth
    response = requests.post(
        receiver.endpoint + "/track", data=body, headers={"X-API-Key": KEY}, timeout=10
    )
    assert response.status_code == 400
    assert error_code(response) == "invalid-json"
    deep = '{"a":' * (depth // 10) + '"deep"' + "}" * (depth // 10)
    inside = json.dumps([track(properties={"deep": "DEEP"})]).replace('"DEEP"', deep)
    response = requests.post(
        receiver.endpoint + "/track", data=inside, headers={"X-API-Key": KEY}, timeout=10
    )
    assert response.status_code == 400
    assert stored(receiver) == 0


def test_nesting_up_to_the_limit_is_accepted_and_one_more_level_is_not() -> None:
    def nested(depth: int) -> bytes:
        return b"[" * depth + b"]" * depth

    assert decode_body(nested(MAX_DEPTH), None, 1 << 20) is not None
    with pytest.raises(ApiError) as refused:
        decode_body(nested(MAX_DEPTH + 1), None, 1 << 20)
    assert refused.value.status == 400
    surrogate = b"[" * (MAX_DEPTH + 1) + b'"\\ud800"' + b"]" * (MAX_DEPTH + 1)
    with pytest.raises(ApiError) as refused:
        decode_body(surrogate, None, 1 << 20)
    assert refused.value.status == 400


# -- 16: memory per request and concurrency ------------------------------------------------------


def test_more_values_than_the_limit_is_413_before_parsing() -> None:
    body = b"[" + b"0," * MAX_VALUES + b"0]"
    with pytest.raises(ApiError) as refused:
        decode_body(body, None, len(body))
    assert refused.value.status == 413
    # Commas inside strings are not values: a long string full of them is fine.
    text = json.dumps({"s": "," * (MAX_VALUES + 10)}).encode()
    assert decode_body(text, None, len(text)) == {"s": "," * (MAX_VALUES + 10)}


def test_more_items_than_the_limit_is_413_and_stores_nothing(receiver: LocalReceiver) -> None:
    too_many = json.dumps([track()] * (MAX_ITEMS + 1))
    response = requests.post(
        receiver.endpoint + "/track", data=too_many, headers={"X-API-Key": KEY}, timeout=30
    )
    assert response.status_code == 413
    assert error_code(response) == "payload-too-large"
    assert stored(receiver) == 0
    exactly = json.dumps([track()] * MAX_ITEMS)
    response = requests.post(
        receiver.endpoint + "/track", data=exactly, headers={"X-API-Key": KEY}, timeout=30
    )
    assert response.status_code == 200
    assert stored(receiver) == MAX_ITEMS


def _send_head(port: int, body_length: int) -> socket.socket:
    """A /track request whose body has not arrived yet: it holds a place in work."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /track HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: k\r\n"
        b"Content-Length: " + str(body_length).encode() + b"\r\n\r\n"
    )
    return sock


def test_requests_beyond_the_bound_in_work_get_503_with_retry_after() -> None:
    with LocalReceiver(max_in_work=1, queue_wait=0.05) as local:
        server = cast(Server, local._server)
        body = json.dumps(track("Held")).encode()
        held = _send_head(local.port, len(body))
        try:
            assert server.slots("/track").wait_taken(1, timeout=10)
            busy = requests.post(
                local.endpoint + "/track",
                json=track("Turned Away"),
                headers={"X-API-Key": KEY},
                timeout=10,
            )
            assert busy.status_code == 503
            assert busy.headers["Retry-After"] == "1"
            assert error_code(busy) == "busy"
            # Queries have places of their own: ingestion in work never blocks them.
            query = requests.post(
                local.endpoint + "/query",
                json={"statement": "SELECT 1"},
                auth=("local", "local"),
                timeout=10,
            )
            assert query.status_code == 200
            held.sendall(body)
            assert held.recv(64).startswith(b"HTTP/1.1 200 ")
        finally:
            held.close()
        assert server.slots("/track").wait_taken(0, timeout=10)
        after = requests.post(
            local.endpoint + "/track", json=track("After"), headers={"X-API-Key": KEY}, timeout=10
        )
        assert after.status_code == 200
        assert [
            row[0]
            for row in local.query("SELECT event FROM altertable.analytics.events ORDER BY event")
        ] == ["After", "Held"]


def test_a_request_waits_briefly_for_a_place_instead_of_failing() -> None:
    with LocalReceiver(max_in_work=1, queue_wait=30) as local:
        server = cast(Server, local._server)
        body = json.dumps(track("First")).encode()
        held = _send_head(local.port, len(body))
        answers: list[int] = []
        waiting = threading.Thread(
            target=lambda: answers.append(
                requests.post(
                    local.endpoint + "/track",
                    json=track("Second"),
                    headers={"X-API-Key": KEY},
                    timeout=30,
                ).status_code
            )
        )
        try:
            assert server.slots("/track").wait_taken(1, timeout=10)
            waiting.start()
            held.sendall(body)
            assert held.recv(64).startswith(b"HTTP/1.1 200 ")
        finally:
            held.close()
        waiting.join(30)
        assert answers == [200]
        assert stored(local) == 2
