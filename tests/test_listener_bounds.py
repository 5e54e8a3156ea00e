"""The listener under attack, over real loopback sockets, for ``serve`` and the bridge alike:
chunk sizes, decoded elements, the whole-request deadline, the connection cap, counters and
log lines, and every gzip member."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from listener_support import (
    connect,
    empty_attributes_request,
    empty_spans_request,
    gzip_members,
    post,
    post_head,
    read_answer,
    status_of,
    tagged_spans_request,
)
from support import KEY, running_bridge

from opentelemetry_exporter_altertable._http_server import ListenerBounds
from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge
from opentelemetry_exporter_altertable.bridge._cli import add_otlp_routes
from opentelemetry_exporter_altertable.receiver import LocalReceiver

PROTOBUF = {"Content-Type": "application/x-protobuf"}


@contextmanager
def serve_with_otlp(**settings: object) -> Iterator[LocalReceiver]:
    """``serve`` as the command runs it: the receiver with its OTLP routes."""
    with LocalReceiver(**settings) as receiver:  # type: ignore[arg-type]
        stop = add_otlp_routes(receiver, "local")
        assert stop is not None
        try:
            yield receiver
        finally:
            stop()


@pytest.fixture
def sink() -> Iterator[LocalReceiver]:
    with LocalReceiver() as receiver:
        yield receiver


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# -- chunk sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("front", ["bridge", "serve"])
def test_a_negative_chunk_size_is_refused_not_read_to_the_end(
    front: str, sink: LocalReceiver
) -> None:
    with ExitStack() as stack:
        if front == "bridge":
            port = port_of(stack.enter_context(running_bridge(sink.endpoint)).endpoint)
            path = "/v1/traces"
        else:
            port = port_of(sink.endpoint)
            path = "/track?apiKey=k"
        with connect(port) as sock:
            head = post_head(path, {**PROTOBUF, "Transfer-Encoding": "chunked"})
            sock.sendall(head + b"-1\r\n" + b"x" * 65536)  # and the connection stays open
            answer = read_answer(sock, 3.0)
    assert status_of(answer) == 400


# -- decoded elements -----------------------------------------------------------------------


@pytest.mark.parametrize("front", ["bridge", "serve"])
def test_many_empty_spans_in_a_small_gzip_body_are_refused_before_decoding(
    front: str, sink: LocalReceiver
) -> None:
    body = gzip_members(empty_spans_request(70_000))  # 140 KB inflated, 70,000 spans
    assert len(body) < 4096
    headers = {**PROTOBUF, "Content-Encoding": "gzip"}
    with ExitStack() as stack:
        if front == "bridge":
            endpoint = stack.enter_context(running_bridge(sink.endpoint)).endpoint
        else:
            endpoint = stack.enter_context(serve_with_otlp()).endpoint
        started = time.monotonic()
        status = post(port_of(endpoint), "/v1/traces", body, headers)
        elapsed = time.monotonic() - started
    assert status == 413
    assert elapsed < 2.0


def test_elements_are_bounded_as_well_as_records(sink: LocalReceiver) -> None:
    bounds = ListenerBounds(max_elements=1000)
    bridge = create_bridge(api_key=KEY, endpoint=sink.endpoint, bounds=bounds)
    with BridgeServer(bridge, port=0) as server:
        port = port_of(server.endpoint)
        assert post(port, "/v1/traces", empty_attributes_request(1001), PROTOBUF) == 413
        assert post(port, "/v1/traces", empty_attributes_request(990), PROTOBUF) == 200


def test_otlp_json_with_too_many_objects_is_refused_before_parsing(sink: LocalReceiver) -> None:
    spans = ",".join(["{}"] * 70_000)
    doc = f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}'.encode()
    with running_bridge(sink.endpoint) as bridge:
        port = port_of(bridge.endpoint)
        status = post(port, "/v1/traces", doc, {"Content-Type": "application/json"})
        assert status == 413
        brackets = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": []}]}], "x": "{" * 10})
        assert (
            post(port, "/v1/traces", brackets.encode(), {"Content-Type": "application/json"}) == 200
        )


# -- the whole-request deadline -------------------------------------------------------------


def _drip(port: int, head: bytes, pieces: list[bytes], gap: float, wait: float) -> int | None:
    with connect(port) as sock:
        sock.sendall(head)
        for piece in pieces:
            time.sleep(gap)
            try:
                sock.sendall(piece)
            except OSError:
                break
        return status_of(read_answer(sock, wait))


@pytest.mark.parametrize("front", ["bridge", "serve"])
def test_a_body_dripped_slower_than_the_deadline_is_cut_off(
    front: str, sink: LocalReceiver
) -> None:
    bounds = ListenerBounds(request_deadline=1.0, idle_timeout=5.0)
    with ExitStack() as stack:
        if front == "bridge":
            bridge = create_bridge(api_key=KEY, endpoint=sink.endpoint)
            server = stack.enter_context(BridgeServer(bridge, port=0, bounds=bounds))
            port, path = port_of(server.endpoint), "/v1/traces"
        else:
            receiver = stack.enter_context(LocalReceiver(bounds=bounds))
            port, path = port_of(receiver.endpoint), "/track?apiKey=k"
        started = time.monotonic()
        head = post_head(path, {**PROTOBUF, "Content-Length": "100"})
        status = _drip(port, head, [b"x"] * 8, 0.3, 3.0)  # each byte well within any idle wait
        elapsed = time.monotonic() - started
    assert status == 408
    assert elapsed < 2.5


def test_slow_senders_hold_no_place_in_work(sink: LocalReceiver) -> None:
    with running_bridge(sink.endpoint, max_in_flight=2) as bridge:
        port = port_of(bridge.endpoint)
        slow = [connect(port) for _ in range(4)]  # twice as many as there are places
        try:
            for sock in slow:
                sock.sendall(post_head("/v1/traces", {**PROTOBUF, "Content-Length": "100"}))
                sock.sendall(b"x")
            time.sleep(0.3)
            body = tagged_spans_request(0, 1)
            assert [post(port, "/v1/traces", body, PROTOBUF, wait=5.0) for _ in range(3)] == [
                200
            ] * 3
        finally:
            for sock in slow:
                sock.close()


def test_bodies_held_at_once_are_bounded_in_bytes(sink: LocalReceiver) -> None:
    bounds = ListenerBounds(max_buffered_bytes=100_000)
    bridge = create_bridge(api_key=KEY, endpoint=sink.endpoint)
    with BridgeServer(bridge, port=0, bounds=bounds) as server:
        port = port_of(server.endpoint)
        assert post(port, "/v1/traces", b"\x0a\x00" * 100_000, PROTOBUF) == 503
        assert post(port, "/v1/traces", b"\x0a\x00" * 20_000, PROTOBUF) == 200


def test_headers_dripped_slower_than_the_deadline_are_cut_off(sink: LocalReceiver) -> None:
    bounds = ListenerBounds(request_deadline=1.0, idle_timeout=5.0)
    bridge = create_bridge(api_key=KEY, endpoint=sink.endpoint)
    with (
        BridgeServer(bridge, port=0, bounds=bounds) as server,
        connect(port_of(server.endpoint)) as sock,
    ):
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        for number in range(20):
            time.sleep(0.25)
            try:
                sock.sendall(f"X-Drip-{number}: 1\r\n".encode())
                sock.settimeout(0.01)
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - started < 2.5


# -- connections ----------------------------------------------------------------------------


def test_connections_beyond_the_cap_are_refused_at_once_and_the_bridge_stays_usable(
    sink: LocalReceiver,
) -> None:
    cap = ListenerBounds().max_connections  # the default: what a bridge started plainly has
    with running_bridge(sink.endpoint) as bridge:
        port = port_of(bridge.endpoint)
        idle = [connect(port) for _ in range(cap)]
        try:
            time.sleep(0.3)
            with connect(port) as extra:
                assert status_of(read_answer(extra, 2.0)) == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        assert post(port, "/v1/traces", tagged_spans_request(0, 1), PROTOBUF) == 200


_EMFILE_SCRIPT = textwrap.dedent(
    """
    import resource, socket, sys, time
    from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    bridge = create_bridge(api_key="k", endpoint="http://127.0.0.1:9")
    server = BridgeServer(bridge, port=0).start()
    hoard = []
    try:
        while True:
            hoard.append(socket.socket())
    except OSError:
        pass
    hoard.pop().close()
    hoard.pop().close()
    print(server.port, flush=True)
    sys.stdin.readline()  # the test connects, then says go on
    before = time.process_time()
    time.sleep(1.0)
    print(round(time.process_time() - before, 3), flush=True)
    """
)


def test_running_out_of_file_descriptors_does_not_spin_the_accept_loop() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None and process.stdin is not None
        port = int(process.stdout.readline())
        for _ in range(5):  # more than the two free descriptors: accept fails with EMFILE
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(0.2)
        process.stdin.write("go\n")
        process.stdin.flush()
        cpu = float(process.stdout.readline())
    finally:
        for sock in clients:
            sock.close()
        process.kill()
        process.wait(10)
    assert cpu < 0.5  # a spinning accept loop uses the whole second


# -- counters and log lines -----------------------------------------------------------------


def test_answers_are_counted_by_route_never_by_raw_path(sink: LocalReceiver) -> None:
    with running_bridge(sink.endpoint) as bridge:
        port = port_of(bridge.endpoint)
        for number in range(50):
            post(port, f"/nothing-{number}-" + "p" * 100, b"", PROTOBUF)
        assert len(bridge.bridge.answers()) <= 2
    with LocalReceiver() as receiver:
        port = port_of(receiver.endpoint)
        for number in range(50):
            with connect(port) as sock:
                sock.sendall(f"GET /nothing-{number} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                read_answer(sock, 2.0)
        assert len(receiver.requests) <= 2


def test_request_log_lines_are_cut(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="opentelemetry_exporter_altertable")
    with (
        LocalReceiver(request_log_level=logging.INFO) as receiver,
        connect(port_of(receiver.endpoint)) as sock,
    ):
        path = "/" + "a" * 30_000
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert status_of(read_answer(sock, 2.0)) == 404
    lines = [record.getMessage() for record in caplog.records]
    assert lines and max(len(line) for line in lines) < 400


# -- gzip members ---------------------------------------------------------------------------


def test_every_gzip_member_is_delivered_and_trailing_garbage_refused(sink: LocalReceiver) -> None:
    headers = {**PROTOBUF, "Content-Encoding": "gzip"}
    with running_bridge(sink.endpoint) as bridge:
        port = port_of(bridge.endpoint)
        both = gzip_members(tagged_spans_request(0, 1), tagged_spans_request(1, 1))
        assert post(port, "/v1/traces", both, headers) == 200
        garbage = gzip_members(tagged_spans_request(2, 1)) + b"not gzip at all"
        assert post(port, "/v1/traces", garbage, headers) == 400
    users = {row[0] for row in sink.query("SELECT distinct_id FROM altertable.analytics.events")}
    assert {"user-0", "user-1"} <= users
    assert "user-2" not in users


def test_values_nested_in_arrays_and_kvlists_are_counted() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from opentelemetry_exporter_altertable.bridge._decode import TooManyElements, decode

    def request(count: int) -> bytes:
        message = ExportTraceServiceRequest()
        span = message.resource_spans.add().scope_spans.add().spans.add()
        listed = span.attributes.add()
        listed.key = "list"
        for _ in range(count):
            listed.value.array_value.values.add()
        mapped = span.attributes.add()
        mapped.key = "map"
        for _ in range(count):
            mapped.value.kvlist_value.values.add()
        return bytes(message.SerializeToString())

    bounds = ListenerBounds(max_elements=1000)
    assert decode("/v1/traces", request(400), False, bounds).items == 1
    with pytest.raises(TooManyElements):
        decode("/v1/traces", request(600), False, bounds)


# -- request framing --------------------------------------------------------------------------


def _until_closed(sock: socket.socket, wait: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within ``wait``."""
    sock.settimeout(wait)
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("front", ["bridge", "serve"])
def test_a_get_with_an_unread_body_is_answered_once_and_its_connection_closed(
    front: str, framing: str, sink: LocalReceiver
) -> None:
    """A GET's body is never read: parsed as the next request, it would be smuggled past a
    proxy that saw one request. One answer, then the connection closes."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    if framing == "chunked":
        header, body = "Transfer-Encoding: chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    else:
        header, body = f"Content-Length: {len(inner)}", inner
    with ExitStack() as stack:
        if front == "bridge":
            port, path = (
                port_of(stack.enter_context(running_bridge(sink.endpoint)).endpoint),
                "/v1/traces",
            )
        else:
            port, path = port_of(sink.endpoint), "/"
        with connect(port) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n\r\n".encode() + body
            )
            received, closed = _until_closed(sock, 3.0)
    answers = re.findall(rb"HTTP/1\.1 \d{3} ", received)  # a second may follow a body's end
    assert len(answers) == 1, answers
    assert closed
    assert b"connection: close" in received.lower()
