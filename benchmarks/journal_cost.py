"""What the journal costs the calling thread: ``on_end`` per analytics record, with and without.

    python benchmarks/journal_cost.py            # prints the figures
    python benchmarks/journal_cost.py --quick

:func:`measure_journal_cost` times ``AltertableSpanProcessor.on_end`` one call at a time
(``perf_counter_ns``) on the benchmark's tagged spans, the same processor with and without a
spool directory (the journal), and reports medians in microseconds. The queue is large and
the export delay long, so the export thread stays out of the measurement: what is left is the
work ``span.end()`` pays for. It also times the alternative the journal does not take
(mapping the span into calls on the calling thread and journaling those), and the untagged
path against the SDK's ``BatchSpanProcessor`` (it must stay within 3x).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

from _spans import build_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor
from opentelemetry_exporter_altertable._mapping import MappingOptions
from opentelemetry_exporter_altertable._sdk import map_spans

#: The target: the journal adds at most this many microseconds per record (median).
TARGET_US = 25.0


def _per_call_us(call: Callable[[ReadableSpan], Any], spans: list[ReadableSpan], n: int) -> float:
    timings = []
    clock = time.perf_counter_ns
    for i in range(n):
        span = spans[i % len(spans)]
        started = clock()
        call(span)
        timings.append(clock() - started)
    return statistics.median(timings[n // 10 :]) / 1000  # the first tenth warms up


def _processor(spool_dir: str | None, n: int) -> AltertableSpanProcessor:
    # No API key: an export (only at shutdown here) refuses at once, so no sink is needed.
    exporter = AltertableSpanExporter(api_key="", spool_dir=spool_dir)
    return AltertableSpanProcessor(
        exporter,
        max_queue_size=n + 1,
        max_export_batch_size=512,
        schedule_delay_millis=3_600_000,
    )


def measure_journal_cost(n: int = 20_000) -> dict[str, float]:
    """Median microseconds per ``on_end`` call on the calling thread (see the module doc)."""
    logging.getLogger("opentelemetry_exporter_altertable").setLevel(logging.CRITICAL)
    tagged = build_spans(1000, tagged=True)
    untagged = build_spans(1000, tagged=False)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, spool in (("tagged_no_spool_us", None), ("tagged_journal_us", tmp + "/a")):
            processor = _processor(spool, n)
            out[label] = _per_call_us(processor.on_end, tagged, n)
            processor.shutdown()
        processor = _processor(tmp + "/b", n)
        out["untagged_journal_us"] = _per_call_us(processor.on_end, untagged, n)
        processor.shutdown()
        sdk = BatchSpanProcessor(AltertableSpanExporter(api_key=""), max_queue_size=n + 1)
        out["untagged_sdk_batch_us"] = _per_call_us(sdk.on_end, untagged, n)
        sdk.shutdown()
        # The road not taken: map on the calling thread and journal the calls.
        options = MappingOptions(environment="production")
        fd = os.open(tmp + "/calls", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def journal_calls(span: ReadableSpan) -> None:
            body = json.dumps(map_spans([span], options).by_endpoint()).encode()
            os.write(fd, b"C1 %08x %s\n" % (zlib.crc32(body), body))

        out["mapped_calls_journal_us"] = _per_call_us(journal_calls, tagged, n)
        os.close(fd)
    out["journal_added_us"] = out["tagged_journal_us"] - out["tagged_no_spool_us"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    figures = measure_journal_cost(2_000 if args.quick else 20_000)
    rows = [
        ("on_end, tagged, no spool", figures["tagged_no_spool_us"]),
        ("on_end, tagged, journal", figures["tagged_journal_us"]),
        ("  the journal adds", figures["journal_added_us"]),
        ("  (mapped calls journaled instead)", figures["mapped_calls_journal_us"]),
        ("on_end, untagged, journal on", figures["untagged_journal_us"]),
        ("on_end, untagged, BatchSpanProcessor", figures["untagged_sdk_batch_us"]),
    ]
    for label, value in rows:
        print(f"{label:<40} {value:8.2f} us (median)")
    verdict = "ok" if figures["journal_added_us"] <= TARGET_US else "OVER"
    print(f"journal cost target <= {TARGET_US:.0f} us per record: {verdict}")


if __name__ == "__main__":
    main()
