"""Helpers the test files share: waiting for a receiver's counts, a port nobody listens on."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry_exporter_altertable.receiver import LocalReceiver


def answered(receiver: LocalReceiver, path: str, expected: int, timeout: float = 2.0) -> int:
    """Requests the receiver answered on ``path`` with 200, once it has counted ``expected``.

    The receiver counts a request just after writing its response, so right after an export
    the count may still lag by one: wait (briefly) for it to settle.
    """
    deadline = time.monotonic() + timeout
    while receiver.requests[(path, 200)] < expected and time.monotonic() < deadline:
        time.sleep(0.005)
    return receiver.requests[(path, 200)]


def closed_port() -> int:
    """A loopback port that was free a moment ago and has no listener now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def refusing_endpoint() -> Iterator[str]:
    """A loopback URL that refuses connections: bound (so no one else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
