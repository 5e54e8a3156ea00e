"""The gRPC listener under attack: a flood of streams on one connection, many idle
connections, a message that inflates, deep ``AnyValue`` nesting, clients that never read their
answer. The bridge runs as its own process (its threads and memory read from ``/proc``); it
must stay within bounds, keep answering real senders, and leave its HTTP port unaffected."""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from faultserver import FaultServer
from grpc_support import TRACES_METHOD, call, with_span_attributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from support import bridge_options, start_bridge_process, tagged_spans, wire_field

from opentelemetry_exporter_altertable._http_server import ListenerBounds
from opentelemetry_exporter_altertable.bridge import GrpcBridgeServer, create_bridge

# Real bridge processes under attack or outage: the main suite runs them once.
pytestmark = pytest.mark.once

MAX_IN_FLIGHT = 4
#: Threads the bridge may add under any attack: its gRPC pool (in flight + 2 spare), gRPC's
#: own few, and the HTTP front's per-connection threads for the checks made meanwhile.
THREAD_ALLOWANCE = MAX_IN_FLIGHT + 2 + 8
OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class Running:
    process: subprocess.Popen[str]
    http: str
    target: str

    def status(self) -> dict[str, int]:
        """Threads, resident and peak memory (KiB) of the bridge process."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out


@contextlib.contextmanager
def bridge_process(api: FaultServer, *extra: str) -> Iterator[Running]:
    process, base, target = start_bridge_process(
        api.endpoint, "--max-in-flight", str(MAX_IN_FLIGHT), *extra
    )
    try:
        running = Running(process, base, target)
        # Warm up both fronts once, so the baseline includes what any first call creates.
        assert call(running.target, TRACES_METHOD, _small()).code is grpc.StatusCode.OK
        assert _http_ok(running)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, err
    assert "Traceback" not in err


def _small() -> bytes:
    return encode_spans(tagged_spans(1, event="Probe")).SerializeToString()


def _http_ok(running: Running) -> bool:
    answer = requests.post(
        f"{running.http}/v1/traces",
        data=_small(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    return answer.status_code == 200


def _still_serving(running: Running) -> None:
    """A real sender is answered (at once), and the HTTP port is unaffected."""
    started = time.monotonic()
    reply = call(running.target, TRACES_METHOD, _small(), timeout=10)
    assert reply.code is grpc.StatusCode.OK, reply
    assert time.monotonic() - started < 5
    assert _http_ok(running)


class Sampler:
    """The bridge's thread count, sampled while an attack runs."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.peak_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                threads = self.running.status()["Threads"]
                self.peak_threads = max(self.peak_threads, threads)
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_flood_of_streams_on_one_connection() -> None:
    with FaultServer() as api, bridge_process(api) as running:
        baseline = running.status()
        body = _small()
        with grpc.insecure_channel(running.target) as channel, Sampler(running) as sampler:
            stub = channel.unary_unary(TRACES_METHOD)
            futures = [stub.future(body, timeout=60) for _ in range(1000)]
            http_during = _http_ok(running)
            codes = [f.exception().code() if f.exception() else grpc.StatusCode.OK  # type: ignore[union-attr]
                     for f in futures]  # fmt: skip
        after = running.status()
        _still_serving(running)
    assert http_during
    assert set(codes) <= OK_CODES, set(codes)
    assert codes.count(grpc.StatusCode.OK) >= 1
    _bounded(baseline, sampler, after)


def _bounded(baseline: dict[str, int], sampler: Sampler, after: dict[str, int]) -> None:
    """No thread per call or connection, and no memory per call or connection to speak of."""
    print(f"threads {baseline['Threads']} -> peak {sampler.peak_threads}; "
          f"RSS {baseline['VmRSS']} KiB -> peak {after['VmHWM']} KiB")  # fmt: skip
    assert sampler.peak_threads <= baseline["Threads"] + THREAD_ALLOWANCE
    assert after["VmHWM"] - baseline["VmRSS"] < 200 * 1024


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream)
    return head + payload


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _hpack(headers: list[tuple[str, str]]) -> bytes:
    """Headers as HPACK literals without indexing (no Huffman): all a server must read."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + _hpack_int(len(name)) + name.encode() + _hpack_int(len(value))
        out += value.encode()
    return bytes(out)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _stalled_connection(target: str, streams: int, body: bytes) -> socket.socket:
    """An HTTP/2 connection that opens ``streams`` Export calls and never reads a byte:
    its flow-control window is 0, so no answer can ever be sent to it."""
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    settings = struct.pack(">HI", 0x4, 0)  # SETTINGS_INITIAL_WINDOW_SIZE = 0
    out = bytearray(PREFACE + _h2_frame(0x4, 0, 0, settings) + _h2_frame(0x4, 0x1, 0))
    message = b"\x00" + struct.pack(">I", len(body)) + body
    for index in range(streams):
        stream = 1 + 2 * index
        headers = _hpack([
            (":method", "POST"), (":scheme", "http"), (":path", TRACES_METHOD),
            (":authority", target), ("content-type", "application/grpc"), ("te", "trailers"),
        ])  # fmt: skip
        out += _h2_frame(0x1, 0x4, stream, headers)
        out += _h2_frame(0x0, 0x1, stream, message)
    sock.sendall(out)
    return sock


def test_clients_that_never_read_their_answer() -> None:
    with FaultServer() as api, bridge_process(api) as running:
        baseline = running.status()
        body = _small()
        stalled: list[socket.socket] = []
        try:
            with Sampler(running) as sampler:
                for _ in range(20):
                    stalled.append(_stalled_connection(running.target, 30, body))
                time.sleep(1.0)
                _still_serving(running)
        finally:
            for sock in stalled:
                sock.close()
        after = running.status()
        time.sleep(0.5)
        _still_serving(running)
    _bounded(baseline, sampler, after)


def test_many_idle_connections() -> None:
    with FaultServer() as api, bridge_process(api) as running:
        baseline = running.status()
        host, port = running.target.rsplit(":", 1)
        idle: list[socket.socket] = []
        try:
            with Sampler(running) as sampler:
                for index in range(400):
                    sock = socket.create_connection((host, int(port)), timeout=10)
                    if index % 2:  # half finish the HTTP/2 handshake, half say nothing at all
                        sock.sendall(PREFACE + _h2_frame(0x4, 0, 0) + _h2_frame(0x4, 0x1, 0))
                    idle.append(sock)
                time.sleep(0.5)
                _still_serving(running)
        finally:
            for sock in idle:
                sock.close()
        after = running.status()
        _still_serving(running)
    _bounded(baseline, sampler, after)


def test_a_message_that_inflates_is_refused_before_it_is_inflated() -> None:
    # 256 MiB of zeros, gzip-compressed by the client to a few hundred KiB: far under the
    # 16 MiB limit on the wire, 16 times over it once inflated.
    with FaultServer() as api, bridge_process(api) as running:
        baseline = running.status()
        bomb = b"\x00" * (256 << 20)
        replies = [
            call(running.target, TRACES_METHOD, bomb, compression=grpc.Compression.Gzip, timeout=60)
            for _ in range(3)
        ]
        del bomb
        after = running.status()
        _still_serving(running)
        assert [r for r in api.requests if r.path == "/track" and "Probe" not in str(r.items)] == []
    assert {r.code for r in replies} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    print(f"RSS {baseline['VmRSS']} KiB -> peak {after['VmHWM']} KiB")
    assert after["VmHWM"] - baseline["VmRSS"] < 96 * 1024, (baseline, after)


def _nested_attribute(depth: int) -> bytes:
    """A ``KeyValue`` ``deep`` whose value nests ``depth`` key-value lists, then ``"leaf"``."""
    value = wire_field(1, b"leaf")  # AnyValue{string_value}
    for _ in range(depth):
        pair = wire_field(1, b"k") + wire_field(2, value)  # KeyValue{key, value}
        value = wire_field(6, wire_field(1, pair))  # AnyValue{kvlist_value: KeyValueList{values}}
    return wire_field(1, b"deep") + wire_field(2, value)


def _request_with(attribute: bytes) -> bytes:
    return with_span_attributes(_small(), wire_field(9, attribute))


def test_deep_anyvalue_nesting_is_invalid_argument_and_shallow_nesting_arrives() -> None:
    with FaultServer() as api, bridge_process(api) as running:
        deep = _request_with(_nested_attribute(10_000))
        reply = call(running.target, TRACES_METHOD, deep)
        assert reply.code is grpc.StatusCode.INVALID_ARGUMENT
        shallow = _request_with(_nested_attribute(20))
        assert call(running.target, TRACES_METHOD, shallow).code is grpc.StatusCode.OK
        _still_serving(running)
        probes = [t for t in api.accepted_items("/track") if "deep" in t["properties"]]
    assert len(probes) == 1
    value = probes[0]["properties"]["deep"]
    for _ in range(20):
        value = value["k"]
    assert value == "leaf"


def _answer_pings(sock: socket.socket) -> None:
    """Acknowledge the server's SETTINGS and PINGs, as a live client does: the connection
    is never dead by keepalive's measure."""
    buffered = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            buffered += data
            while len(buffered) >= 9:
                length, kind, flags = int.from_bytes(buffered[:3], "big"), buffered[3], buffered[4]
                if len(buffered) < 9 + length:
                    break
                payload, buffered = buffered[9 : 9 + length], buffered[9 + length :]
                if kind in (0x4, 0x6) and not flags & 0x1:  # SETTINGS or PING, not an ACK
                    sock.sendall(_h2_frame(kind, 0x1, 0, payload if kind == 0x6 else b""))


def _partial_call(target: str) -> socket.socket:
    """A connection with one Export call whose message announces 100 bytes, sends 10, and
    then stalls (the connection stays alive)."""
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    headers = _hpack([
        (":method", "POST"), (":scheme", "http"), (":path", TRACES_METHOD),
        (":authority", target), ("content-type", "application/grpc"), ("te", "trailers"),
    ])  # fmt: skip
    partial = b"\x00" + struct.pack(">I", 100) + b"x" * 10
    sock.sendall(
        PREFACE
        + _h2_frame(0x4, 0, 0)
        + _h2_frame(0x1, 0x4, 1, headers)
        + _h2_frame(0x0, 0, 1, partial)
    )
    threading.Thread(target=_answer_pings, args=(sock,), daemon=True).start()
    return sock


def test_calls_stalled_mid_message_are_cut_and_honest_calls_get_through() -> None:
    """Each stalled call holds one of the gRPC pool's threads while it lives: more of them
    than the pool has threads would starve every honest call for ever. Connections end a
    grace after the request deadline, so an honest call gets through within that bound."""
    deadline, timeout = 1.0, 0.5
    with FaultServer() as api:
        bridge = create_bridge(
            **bridge_options(
                api.endpoint, timeout=timeout, bounds=ListenerBounds(request_deadline=deadline)
            )
        )
        server = GrpcBridgeServer(bridge, port=0, max_in_flight=2).start()
        stalled: list[socket.socket] = []
        try:
            # More than the pool's 2 + 2 threads, fewer than the 8 calls gRPC may hold.
            stalled = [_partial_call(server.target) for _ in range(6)]
            started = time.monotonic()
            time.sleep(0.2)  # every thread taken before the honest call comes
            # Asked to go away after the deadline (+10% jitter), cut a grace later.
            bound = deadline * 1.1 + deadline + timeout + 1.0
            reply = call(server.target, TRACES_METHOD, _small(), timeout=bound + 5.0)
            elapsed = time.monotonic() - started
        finally:
            for sock in stalled:
                sock.close()
            server.stop(grace=1)
    assert reply.code is grpc.StatusCode.OK, (reply.code, elapsed)
    assert elapsed < bound + 3.0  # a margin for a loaded machine; without the bound: never
