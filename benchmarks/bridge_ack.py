"""How long an OTLP sender waits for the bridge's answer, with its journal on and off.

    python benchmarks/bridge_ack.py              # prints the figures
    python benchmarks/bridge_ack.py --quick

:func:`measure_ack_latency` runs an in-process bridge (HTTP front, loopback) in front of a
sink that answers like the Altertable API after ``api_latency`` seconds (100 ms by default),
POSTs OTLP protobuf requests of tagged spans one after another, and times each from the POST
to the 200: journaled (the answer waits for the calls to be written and flushed to disk) and
with ``journal=False`` (the answer waits for Altertable). It reports the median and the 99th
percentile in milliseconds, and checks that every span reached the sink.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from typing import Any

import requests
from _sink import Sink
from _spans import build_spans
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _tracks(sink: Sink) -> int:
    return int(sink.snapshot()["items"].get("/track", 0))


def _one_mode(journal: bool, bodies: list[bytes], api_latency: float, spans: int) -> list[float]:
    """Seconds from POST to 200 for each body, through a bridge with or without its journal."""
    with Sink(latency=api_latency, count_items=True) as sink, tempfile.TemporaryDirectory() as tmp:
        bridge = create_bridge(
            api_key="bench", endpoint=sink.url, spool_dir=tmp, journal=journal, timeout=30.0
        )
        timings: list[float] = []
        with BridgeServer(bridge, port=0) as server, requests.Session() as session:
            url = f"{server.endpoint}/v1/traces"
            for data in bodies:
                started = time.perf_counter()
                answer = session.post(url, data=data, headers=PROTOBUF, timeout=60)
                timings.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"the bridge answered {answer.status_code}: {answer.text}")
            deadline = time.monotonic() + 120
            while _tracks(sink) < spans and time.monotonic() < deadline:
                time.sleep(0.05)
            if _tracks(sink) < spans:
                raise RuntimeError(f"only {_tracks(sink)} of {spans} spans arrived")
        return timings


def measure_ack_latency(
    requests_per_mode: int = 50, spans_per_request: int = 512, api_latency: float = 0.1
) -> dict[str, float]:
    """Median and p99 milliseconds from POST to 200, journal on and off (see the module doc)."""
    logging.getLogger("opentelemetry_exporter_altertable").setLevel(logging.CRITICAL)
    spans = build_spans(spans_per_request * requests_per_mode, tagged=True)
    bodies = [
        encode_spans(spans[i : i + spans_per_request]).SerializeToString()
        for i in range(0, len(spans), spans_per_request)
    ]
    out: dict[str, float] = {}
    for label, journal in (("journal", True), ("no_journal", False)):
        seconds = _one_mode(journal, bodies, api_latency, len(spans))
        out[f"{label}_median_ms"] = statistics.median(seconds) * 1000
        out[f"{label}_p99_ms"] = _percentile(seconds, 0.99) * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--spans", type=int, default=512, help="spans per request")
    parser.add_argument("--latency", type=float, default=0.1, help="API answer delay, seconds")
    args = parser.parse_args()
    figures: dict[str, Any] = measure_ack_latency(
        10 if args.quick else 50, args.spans, args.latency
    )
    print(f"POST -> 200, {args.spans} tagged spans a request, API answering in {args.latency}s")
    for label in ("journal", "no_journal"):
        name = "journal on " if label == "journal" else "journal off"
        print(
            f"  {name}: median {figures[f'{label}_median_ms']:8.1f} ms   "
            f"p99 {figures[f'{label}_p99_ms']:8.1f} ms"
        )


if __name__ == "__main__":
    main()
