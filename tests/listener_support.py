"""Raw-socket clients for the listener tests: requests as an attacker writes them."""

from __future__ import annotations

import gzip
import socket
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from support import sample_spans, wire_field


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent before closing or going quiet for ``timeout`` seconds."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            if b"\r\n\r\n" in received:
                head, _, body = received.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    length = line.lower().startswith(b"content-length:")
                    if length and len(body) >= int(line.split(b":")[1]):
                        return received
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def post_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(
    port: int, path: str, body: bytes, headers: dict[str, str], wait: float = 10.0
) -> int | None:
    """One POST on a fresh connection; the answer's status (``None``: no answer)."""
    with connect(port) as sock:
        sock.sendall(post_head(path, {"Content-Length": str(len(body)), **headers}) + body)
        return status_of(read_answer(sock, wait))


def empty_spans_request(count: int) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``count`` empty spans (two bytes each)."""
    return wire_field(1, wire_field(2, b"\x12\x00" * count))  # resource_spans{scope_spans{spans}}


def empty_attributes_request(count: int) -> bytes:
    """One span holding ``count`` empty attributes (two bytes each)."""
    span = b"\x4a\x00" * count
    return wire_field(1, wire_field(2, wire_field(2, span)))


def tagged_spans_request(first: int, count: int) -> bytes:
    """Tagged spans for users ``user-first`` .. ``user-(first+count-1)``, serialized."""
    spans = sample_spans(first + count)[first:]
    return bytes(encode_spans(spans).SerializeToString())


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(part) for part in parts)


def wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False
