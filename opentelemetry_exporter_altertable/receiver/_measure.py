"""Measure the receiver's ingest rate end to end: HTTP, validation and DuckDB insert."""

from __future__ import annotations

import gzip as gzip_module
import http.client
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from .._api import LIB_NAME
from ..version import __version__

__all__ = ["measure_ingest"]


def _events(n_events: int) -> list[dict[str, Any]]:
    """Track payloads shaped like the exporter's (built-ins, OTel ids, a few custom properties)."""
    start = datetime(2025, 6, 15, 14, 30, tzinfo=timezone.utc)
    events = []
    for i in range(n_events):
        stamp = (start + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")
        events.append(
            {
                "environment": "production",
                "event": ("Checkout Completed", "Page Viewed", "Signup")[i % 3],
                "distinct_id": f"user_{i % 1000}",
                "session_id": f"sess_{i % 5000}",
                "timestamp": stamp.replace("+00:00", "Z"),
                "properties": {
                    "amount": i * 0.5,
                    "currency": "USD",
                    "plan": "pro",
                    "service.name": "checkout",
                    "otel.trace_id": f"{i:032x}",
                    "otel.span_id": f"{i:016x}",
                    "$lib": LIB_NAME,
                    "$lib_version": __version__,
                    "$ip": 0,
                },
            }
        )
    return events


def measure_ingest(
    n_events: int = 50_000, batch: int = 500, *, connections: int = 1, gzip: bool = False
) -> float:
    """Post ``n_events`` track calls in arrays of ``batch`` to an in-memory
    :class:`LocalReceiver` over ``connections`` keep-alive connections; returns events/s.

    Bodies are encoded before the clock starts, so this measures the receiver, not the client.
    Raises ``RuntimeError`` if a request fails or the stored count differs.
    """
    from ._local import LocalReceiver

    events = _events(n_events)
    bodies = [json.dumps(events[i : i + batch]).encode() for i in range(0, n_events, batch)]
    del events  # 10^5 live dicts would slow every garbage collection in the timed part
    headers = {"Content-Type": "application/json", "X-API-Key": "pk_test_bench"}
    if gzip:
        bodies = [gzip_module.compress(b, compresslevel=1) for b in bodies]
        headers["Content-Encoding"] = "gzip"
    failures: list[str] = []

    with LocalReceiver() as receiver:

        def post_all(share: list[bytes]) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=60)
            try:
                for body in share:
                    conn.request("POST", "/track", body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    if response.status != 200:
                        failures.append(f"{response.status} {payload[:200]!r}")
                        return
            finally:
                conn.close()

        shares = [bodies[i::connections] for i in range(connections)]
        threads = [threading.Thread(target=post_all, args=(share,)) for share in shares]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"ingest failed: {failures[0]}")
        stored = receiver.query("SELECT count(*) FROM altertable.analytics.events")[0][0]
        if stored != n_events:
            raise RuntimeError(f"stored {stored} events, expected {n_events}")
    return n_events / elapsed
