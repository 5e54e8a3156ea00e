"""Export throughput, memory and burst behaviour, measured in one run on the same spans.

    python benchmarks/bench_export.py            # full run (``make bench``)
    python benchmarks/bench_export.py --quick    # smoke run, small counts, a few seconds
    python benchmarks/bench_export.py --json out.json

Every scenario uses the same spans, built once with the real SDK (512 per export batch), and
the same loopback sink that answers like the Altertable API (``_sink.py``). Each timed
scenario is warmed up, then repeated ``--rounds`` times; the table shows the best and the
median round, and the ratios use the best round (the least disturbed by other processes).
Everything runs in this process except the memory run, which needs a clean process to
measure its peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from _sink import ProcessSink, Sink
from _spans import (
    batches,
    build_spans,
    make_provider,
    tagged_attributes,
    track_payload,
    untagged_attributes,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind

BATCH = 512
API_KEY = "pk_test_benchmark"
ENVIRONMENT = "production"


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does (per round)."""

    rounds: int = 5
    export_batches: int = 40  # 40 x 512 = 20,480 events per round
    skip_batches: int = 200
    sdk_events: int = 1000
    receiver_batches: int = 10
    receiver_events: int = 50_000
    memory_events: int = 1_000_000
    burst_untagged: int = 200_000
    burst_tagged: int = 2_000
    on_end_calls: int = 200_000


QUICK = Sizes(
    rounds=3,
    export_batches=4,
    skip_batches=20,
    sdk_events=100,
    receiver_batches=2,
    receiver_events=5_000,
    memory_events=20_000,
    burst_untagged=20_000,
    burst_tagged=200,
    on_end_calls=20_000,
)

AnySink = Sink | ProcessSink

#: The package's targets for each ratio: (at least, at most).
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "ours/OTLP": (2.5, None),
    "ours/SDK": (55.0, None),
    "ours/floor": (0.45, None),
    "skip/tagged": (15.0, None),
    "bridge/ours": (0.5, None),
    "on_end/BSP": (None, 3.0),
}


@dataclass
class Result:
    name: str
    unit: str  # "events" or "spans"
    per_round: int
    rates: list[float] = field(default_factory=list)
    bytes_per_item: float | None = None
    note: str = ""

    @property
    def best(self) -> float:
        return max(self.rates) if self.rates else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


def _timed(run_round: Callable[[], int], rounds: int) -> list[float]:
    """Warm up with one round, then time ``rounds`` rounds; items per second of each."""
    run_round()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        items = run_round()
        rates.append(items / (time.perf_counter() - start))
    return rates


def _ours(endpoint: str, max_batch_size: int, compression: str | None, **kwargs: Any) -> Any:
    from opentelemetry_exporter_altertable.exporters import AltertableSpanExporter

    extra: dict[str, Any] = {"compression": compression} if compression else {}
    return AltertableSpanExporter(
        api_key=API_KEY,
        endpoint=endpoint,
        environment=ENVIRONMENT,
        max_batch_size=max_batch_size,
        **extra,
        **kwargs,
    )


def _export_rounds(
    exporter: Any, pool: Sequence[list[ReadableSpan]], n_batches: int
) -> Callable[[], int]:
    def run_round() -> int:
        done = 0
        for k in range(n_batches):
            batch = pool[k % len(pool)]
            if exporter.export(batch) is not SpanExportResult.SUCCESS:
                raise RuntimeError(f"{type(exporter).__name__}.export did not succeed")
            done += len(batch)
        return done

    return run_round


def _per_item(sink: AnySink, path: str, items: int) -> float | None:
    snap = sink.snapshot()
    sent = snap["bytes"].get(path, 0)
    return sent / items if items and sent else None


# --------------------------------------------------------------------------- scenarios


def bench_ours(
    sink: AnySink,
    pool: Sequence[list[ReadableSpan]],
    sizes: Sizes,
    args: Any,
    *,
    stdlib_json: bool = False,
) -> Result:
    """Ours on tagged spans; ``stdlib_json`` as if orjson (the ``fast`` extra) were absent."""
    from opentelemetry_exporter_altertable import _transport

    chosen = _transport.fast_encoder
    if stdlib_json:
        _transport.fast_encoder = lambda: None
    try:
        exporter = _ours(sink.url, args.max_batch_size, args.compression)
    finally:
        _transport.fast_encoder = chosen
    name = (
        "ours, stdlib json (no orjson)" if stdlib_json else "ours: AltertableSpanExporter -> /track"
    )
    res = Result(name, "events", sizes.export_batches * BATCH)
    try:
        sink.reset()
        res.rates = _timed(_export_rounds(exporter, pool, sizes.export_batches), sizes.rounds)
        res.bytes_per_item = _per_item(sink, "/track", (sizes.rounds + 1) * res.per_round)
    finally:
        exporter.shutdown()
    return res


def bench_otlp(sink: AnySink, pool: Sequence[list[ReadableSpan]], sizes: Sizes) -> Result:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter: Any = OTLPSpanExporter(endpoint=f"{sink.url}/v1/traces")
    res = Result("OTLP/HTTP protobuf exporter -> /v1/traces", "spans", sizes.export_batches * BATCH)
    try:
        sink.reset()
        res.rates = _timed(_export_rounds(exporter, pool, sizes.export_batches), sizes.rounds)
        res.bytes_per_item = _per_item(sink, "/v1/traces", (sizes.rounds + 1) * res.per_round)
    finally:
        exporter.shutdown()
    return res


def bench_sdk(sink: AnySink, payloads: Sequence[dict[str, Any]], sizes: Sizes) -> Result:
    from altertable import Altertable

    client = Altertable(API_KEY, server_url=sink.url, environment=ENVIRONMENT)
    res = Result("official altertable SDK: track() per event", "events", sizes.sdk_events)

    def run_round() -> int:
        for k in range(sizes.sdk_events):
            p = payloads[k % len(payloads)]
            client.track(
                p["event"],
                p["distinct_id"],
                {"properties": p["properties"], "timestamp": p["timestamp"]},
            )
        return sizes.sdk_events

    sink.reset()
    try:
        res.rates = _timed(run_round, sizes.rounds)
        res.bytes_per_item = _per_item(sink, "/track", (sizes.rounds + 1) * res.per_round)
    finally:
        client.session.close()
    return res


def bench_floor(payloads: Sequence[dict[str, Any]], sizes: Sizes, max_batch_size: int) -> Result:
    """json.dumps + encode of pre-built /track items, chunked like our requests; no HTTP."""
    chunks = [list(payloads[i : i + max_batch_size]) for i in range(0, BATCH, max_batch_size)]
    res = Result("floor: json.dumps of pre-built payloads", "events", sizes.export_batches * BATCH)
    nbytes = 0

    def run_round() -> int:
        nonlocal nbytes
        nbytes = 0
        for _ in range(sizes.export_batches):
            for chunk in chunks:
                nbytes += len(json.dumps(chunk).encode())
        return sizes.export_batches * BATCH

    res.rates = _timed(run_round, sizes.rounds)
    res.bytes_per_item = nbytes / res.per_round
    return res


def bench_skip(
    sink: AnySink, pool: Sequence[list[ReadableSpan]], sizes: Sizes, args: Any
) -> Result:
    exporter = _ours(sink.url, args.max_batch_size, args.compression)
    res = Result("ours on untagged spans (skip path)", "spans", sizes.skip_batches * BATCH)
    try:
        sink.reset()
        res.rates = _timed(_export_rounds(exporter, pool, sizes.skip_batches), sizes.rounds)
        sent = sum(sink.snapshot()["requests"].values())
        res.note = f"{sent} requests sent"
    finally:
        exporter.shutdown()
    return res


def bench_receiver(
    pool: Sequence[list[ReadableSpan]], sizes: Sizes, args: Any
) -> dict[str, Result | str]:
    """The local receiver, when the package ships one: its own ingest rate
    (``measure_ingest``: pre-encoded bodies, no exporter) and ours -> receiver end to end."""
    try:
        from opentelemetry_exporter_altertable import receiver
    except ImportError as exc:
        note = f"skipped: receiver not importable ({exc})"
        return {"receiver_ingest": note, "receiver_e2e": note}
    out: dict[str, Result | str] = {}
    measure = getattr(receiver, "measure_ingest", None)
    if measure is None:
        out["receiver_ingest"] = "skipped: receiver has no measure_ingest"
    else:
        res = Result("local receiver ingest (measure_ingest)", "events", sizes.receiver_events)
        try:
            measure(1000, 500)  # warm-up
            rounds = max(2, sizes.rounds // 2)
            res.rates = [measure(sizes.receiver_events, 500) for _ in range(rounds)]
            res.note = "arrays of 500, 1 connection, stored count checked"
            out["receiver_ingest"] = res
        except Exception as exc:  # report, do not sink the whole run
            out["receiver_ingest"] = f"skipped: measure_ingest failed ({type(exc).__name__}: {exc})"
    local_receiver = getattr(receiver, "LocalReceiver", None)
    if local_receiver is None:
        out["receiver_e2e"] = "skipped: receiver has no LocalReceiver"
        return out
    res = Result("ours -> LocalReceiver (end to end)", "events", sizes.receiver_batches * BATCH)
    try:
        with local_receiver(db_path=None) as rec:
            exporter = _ours(rec.endpoint, args.max_batch_size, args.compression)
            try:
                rounds = max(2, sizes.rounds // 2)
                res.rates = _timed(_export_rounds(exporter, pool, sizes.receiver_batches), rounds)
                rows = rec.query("SELECT count(*) FROM altertable.analytics.events")[0][0]
            finally:
                exporter.shutdown()
        expected = (rounds + 1) * res.per_round
        res.note = f"{rows} rows stored of {expected} sent"
        if rows != expected:
            res.note += " (MISMATCH)"
        out["receiver_e2e"] = res
    except Exception as exc:
        out["receiver_e2e"] = f"skipped: receiver failed ({type(exc).__name__}: {exc})"
    return out


def bench_bridge(
    sink: AnySink, pool: Sequence[list[ReadableSpan]], sizes: Sizes, args: Any
) -> Result:
    """The OTLP bridge: a sender process posts OTLP protobuf requests of 512 tagged spans to a
    bridge in this process, which maps and delivers them to the sink; spans per second, each
    request answered 200 only once its calls were accepted."""
    import pickle
    import tempfile

    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge
    except ImportError as exc:
        return Result(f"bridge skipped: {exc}", "spans", 0)
    res = Result(
        "bridge: OTLP protobuf (512/request) -> /track", "spans", sizes.export_batches * BATCH
    )
    bodies = [encode_spans(batch).SerializeToString() for batch in pool]
    extra: dict[str, Any] = {"compression": args.compression} if args.compression else {}
    bridge = create_bridge(
        api_key=API_KEY, endpoint=sink.url, environment=ENVIRONMENT,
        max_batch_size=args.max_batch_size, **extra,
    )  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".pickle") as f, BridgeServer(bridge, port=0) as server:
        pickle.dump(bodies, f)
        f.flush()
        sink.reset()
        client = Path(__file__).with_name("_bridge_client.py")
        done = subprocess.run(
            [sys.executable, str(client), server.endpoint, f.name, str(sizes.export_batches),
             str(sizes.rounds), str(BATCH)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bridge client failed: {done.stderr[-500:]}")
        res.rates = json.loads(done.stdout)
        res.bytes_per_item = _per_item(sink, "/track", (sizes.rounds + 1) * res.per_round)
        res.note = (
            f"sender in its own process, {sum(len(b) for b in bodies) // len(bodies):,} B/request"
        )
    return res


# --------------------------------------------------------------------------- on_end


def bench_on_end(
    pool: Sequence[list[ReadableSpan]], sizes: Sizes, args: Any
) -> dict[str, Any]:
    """The application thread's cost of ``on_end`` for untagged spans, per span: CPU time of
    the calling thread only (``time.thread_time``), so the processors' worker threads (which
    export, or here skip, what was queued) are not billed to it."""
    from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

    spans = [span for batch in pool for span in batch]
    calls = sizes.on_end_calls
    out: dict[str, Any] = {"calls_per_round": calls}
    sdk_logger = logging.getLogger("opentelemetry.sdk")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.ERROR)  # a full BatchSpanProcessor queue logs; not measured
    try:
        for label, cls in (
            ("BatchSpanProcessor", BatchSpanProcessor),
            ("AltertableSpanProcessor", AltertableSpanProcessor),
        ):
            exporter = _ours("http://127.0.0.1:9", args.max_batch_size, args.compression)
            processor = cls(exporter)
            on_end = processor.on_end
            per_call = []
            try:
                for _ in range(sizes.rounds + 1):
                    start = time.thread_time()
                    for k in range(calls):
                        on_end(spans[k % len(spans)])
                    per_call.append((time.thread_time() - start) / calls * 1e9)
            finally:
                processor.shutdown()
            per_call = per_call[1:]  # the first round warms up
            out[label] = {"best_ns": min(per_call), "median_ns": statistics.median(per_call)}
    finally:
        sdk_logger.setLevel(level)
    out["ratio"] = out["AltertableSpanProcessor"]["best_ns"] / out["BatchSpanProcessor"]["best_ns"]
    return out


# --------------------------------------------------------------------------- burst


def bench_burst(sizes: Sizes, args: Any) -> dict[str, Any]:
    """A burst of untagged + tagged spans through BatchSpanProcessor vs ours, default queues.

    Spans are created and ended by a real tracer on one thread, as fast as it can, with one
    tagged span every ``total / tagged`` spans; the sink counts the /track items it receives.
    Run once per sink latency (0 = loopback; a real API is a network round trip away).
    """
    from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

    out: dict[str, Any] = {
        "untagged": sizes.burst_untagged,
        "tagged": sizes.burst_tagged,
        "runs": [],
    }
    sdk_logger = logging.getLogger("opentelemetry.sdk")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.ERROR)  # "Queue full, dropping Span." is what we measure
    try:
        for latency_ms in args.burst_latency_ms:
            run: dict[str, Any] = {"sink_latency_ms": latency_ms}
            for label, cls in (
                ("BatchSpanProcessor", BatchSpanProcessor),
                ("AltertableSpanProcessor", AltertableSpanProcessor),
            ):
                run[label] = _burst_once(cls, sizes, latency_ms, args)
            out["runs"].append(run)
    finally:
        sdk_logger.setLevel(level)
    return out


def _burst_once(
    cls: type[BatchSpanProcessor], sizes: Sizes, latency_ms: float, args: Any
) -> dict[str, Any]:
    tagged_pool = [tagged_attributes(i) for i in range(1000)]
    untagged_pool = [untagged_attributes(i) for i in range(1000)]
    total = sizes.burst_untagged + sizes.burst_tagged
    every = max(1, total // sizes.burst_tagged)
    with Sink(count_items=True, latency=latency_ms / 1000) as sink:
        exporter = _ours(sink.url, args.max_batch_size, args.compression)
        provider = make_provider(cls(exporter))
        tracer = provider.get_tracer("shop.checkout")
        tagged = untagged = 0
        start = time.perf_counter()
        for i in range(total):
            if (i % every == every - 1 or untagged >= sizes.burst_untagged) and (
                tagged < sizes.burst_tagged
            ):
                attrs = tagged_pool[tagged % 1000]
                tagged += 1
            else:
                attrs = untagged_pool[untagged % 1000]
                untagged += 1
            tracer.start_span("GET /products/{sku}", kind=SpanKind.SERVER, attributes=attrs).end()
        burst_s = time.perf_counter() - start
        provider.shutdown()  # flushes what is still queued
        flushed_s = time.perf_counter() - start
        delivered = sink.snapshot()["items"].get("/track", 0)
    return {
        "tagged_delivered": delivered,
        "tagged_lost": tagged - delivered,
        "burst_seconds": round(burst_s, 3),
        "spans_per_second_produced": round(total / burst_s),
        "seconds_until_flushed": round(flushed_s, 3),
    }


# --------------------------------------------------------------------------- memory


def _rss_kb() -> int:
    """Current resident set size in KiB (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kb() -> int:
    """This process image's peak RSS in KiB (``VmHWM``).

    ``ru_maxrss`` is not used for this: Linux folds the spawning process's peak into a child's
    ``ru_maxrss`` at ``exec``, so a child of a large parent reports the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _BridgeSender:
    """Posts OTLP protobuf bodies of 512 tagged spans to a bridge in this process (memory run)."""

    def __init__(self, pool: Sequence[list[ReadableSpan]], sink_url: str, args: Any) -> None:
        import http.client
        from urllib.parse import urlsplit

        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge

        self._bodies = [encode_spans(batch).SerializeToString() for batch in pool]
        extra: dict[str, Any] = {"compression": args[1]} if args[1] else {}
        bridge = create_bridge(
            api_key=API_KEY, endpoint=sink_url, environment=ENVIRONMENT,
            max_batch_size=args[0], **extra,
        )  # fmt: skip
        self.server = BridgeServer(bridge, port=0).__enter__()
        parts = urlsplit(self.server.endpoint)
        self._http = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)

    def export(self, k: int) -> bool:
        body = self._bodies[k % len(self._bodies)]
        self._http.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        answer = self._http.getresponse()
        answer.read()
        return answer.status == 200

    def close(self) -> None:
        self._http.close()
        self.server.__exit__(None, None, None)


def memory_child(
    events: int, max_batch_size: int, compression: str | None, bridge: bool = False
) -> None:
    """Runs in a subprocess: ``events`` tagged events in batches of 512 through ours (or
    through the bridge, posted to it as OTLP protobuf), print JSON."""
    spans = build_spans(BATCH * 4, tagged=True)
    pool = batches(spans, BATCH)
    checkpoint = min(100_000, max(BATCH, events // 10))
    events -= events % BATCH  # whole requests only
    with Sink() as sink:
        sender: Any = None
        exporter: Any = None
        if bridge:
            sender = _BridgeSender(pool, sink.url, (max_batch_size, compression))
        else:
            exporter = _ours(sink.url, max_batch_size, compression)
        rss_before = _rss_kb()
        peak_before = _peak_rss_kb()
        rss_checkpoint = None
        done = 0
        failures = 0
        start = time.perf_counter()
        k = 0
        while done < events:
            batch = pool[k % len(pool)]
            if sender is not None:
                ok = sender.export(k)
            else:
                ok = exporter.export(batch) is SpanExportResult.SUCCESS
            k += 1
            failures += not ok
            done += len(batch)
            if rss_checkpoint is None and done >= checkpoint:
                rss_checkpoint = _rss_kb()
        seconds = time.perf_counter() - start
        if sender is not None:
            sender.close()
        else:
            exporter.shutdown()
        rss_end = _rss_kb()
        peak = _peak_rss_kb()
        requests = sum(sink.snapshot()["requests"].values())
    print(
        json.dumps(
            {
                "events": done,
                "failures": failures,
                "requests": requests,
                "seconds": round(seconds, 2),
                "rss_before_export_kb": rss_before,
                "peak_rss_before_export_kb": peak_before,
                "checkpoint_events": checkpoint,
                "rss_at_checkpoint_kb": rss_checkpoint,
                "rss_at_end_kb": rss_end,
                "peak_rss_kb": peak,
            }
        )
    )


def bench_memory(events: int, args: Any, bridge: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(events)]
    if bridge:
        cmd.append("--memory-bridge")
    cmd += ["--max-batch-size", str(args.max_batch_size)]
    if args.compression:
        cmd += ["--compression", args.compression]
    parent_peak = _peak_rss_kb()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-2000:]}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # Cross-check; it cannot be below the spawning process's own peak (see _peak_rss_kb), which
    # is why main() runs this first, while the benchmark process is still small.
    out["ru_maxrss_children_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["parent_peak_rss_at_spawn_kb"] = parent_peak
    return out


# --------------------------------------------------------------------------- report


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "opentelemetry-exporter-altertable",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "altertable",
        "requests",
        "orjson",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _print_memory(title: str, mem: dict[str, Any]) -> None:
    print(f"\nmemory: {title} (subprocess)")
    if "error" in mem:
        print(f"  failed: {mem['error']}")
        return
    growth = (mem["rss_at_end_kb"] - mem["rss_at_checkpoint_kb"]) / 1024
    print(
        f"  {mem['events']:,} events, {mem['requests']:,} requests, {mem['failures']} "
        f"failed exports, {mem['seconds']} s ({mem['events'] / mem['seconds']:,.0f}/s)\n"
        f"  RSS before export {mem['rss_before_export_kb'] / 1024:.1f} MiB, after "
        f"{mem['checkpoint_events']:,} events {mem['rss_at_checkpoint_kb'] / 1024:.1f} MiB,"
        f" at end {mem['rss_at_end_kb'] / 1024:.1f} MiB ({growth:+.1f} MiB after the "
        f"first {mem['checkpoint_events']:,})\n"
        f"  peak RSS {mem['peak_rss_kb'] / 1024:.1f} MiB (VmHWM; "
        f"{mem['peak_rss_before_export_kb'] / 1024:.1f} MiB already before exporting); "
        f"RUSAGE_CHILDREN ru_maxrss {mem['ru_maxrss_children_kb'] / 1024:.1f} MiB "
        f"(includes this process's {mem['parent_peak_rss_at_spawn_kb'] / 1024:.1f} MiB "
        "at spawn)"
    )


def print_report(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print(f"\nopentelemetry-exporter-altertable export benchmark  {meta['date']}")
    print(
        f"Python {meta['versions']['python']} on {meta['platform']}, cpu_count={meta['cpu_count']}"
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if k != "python"))
    print(
        f"  {BATCH} spans per export batch, max_batch_size={meta['max_batch_size']}, "
        f"compression={meta['compression'] or 'exporter default'}, "
        f"{meta['rounds']} rounds after a warm-up round{', QUICK' if meta['quick'] else ''}\n"
    )
    head = f"{'scenario':<46} {'unit':<7} {'per round':>10} {'best /s':>11} {'median /s':>11}"
    print(head + f" {'bytes/item':>10}  note")
    print("-" * (len(head) + 18))
    for r in report["scenarios"].values():
        if isinstance(r, str):
            continue
        bpi = f"{r['bytes_per_item']:.0f}" if r["bytes_per_item"] else "-"
        print(
            f"{r['name']:<46} {r['unit']:<7} {r['per_round']:>10,} {_fmt_rate(r['best']):>11} "
            f"{_fmt_rate(r['median']):>11} {bpi:>10}  {r['note']}"
        )
    for key, r in report["scenarios"].items():
        if isinstance(r, str):
            print(f"{key}: {r}")
    print("\nratios (best rounds; ours = the default install: stdlib json, no extras)")
    for key, value in report["ratios"].items():
        target = TARGETS.get(key)
        verdict = ""
        if target is not None and value is not None:
            low, high = target
            met = (low is None or value >= low) and (high is None or value <= high)
            bound = f">= {low:g}x" if low is not None else f"<= {high:g}x"
            verdict = f"   target {bound}: {'met' if met else 'NOT met'}"
        shown = f"{value:>8.2f}x" if value is not None else "     n/a"
        print(f"  {key:<14} {shown}{verdict}")
    fast = report["scenarios"]["ours"]
    print(
        f"  fast extra     {fast['best']:>8,.0f} events/s   target >= 100,000: "
        f"{'met' if fast['best'] >= 100_000 else 'NOT met'}"
    )
    on_end = report["on_end"]
    print(
        f"\non_end, untagged spans, application thread CPU per call "
        f"({on_end['calls_per_round']:,} calls per round, best / median):"
    )
    for label in ("BatchSpanProcessor", "AltertableSpanProcessor"):
        row = on_end[label]
        print(f"  {label:<24} {row['best_ns']:>7,.0f} ns  {row['median_ns']:>7,.0f} ns")
    for key, title in (
        ("memory", "ours, tagged events in batches of 512 into the sink"),
        ("memory_bridge", "the bridge, OTLP requests of 512 tagged spans posted to it"),
    ):
        mem = report.get(key)
        if mem:
            _print_memory(title, mem)
    burst = report.get("burst")
    if burst:
        print(
            f"\nburst: {burst['untagged']:,} untagged + {burst['tagged']:,} tagged spans from one "
            "thread, default queue sizes (2048/512), tagged events that reached the sink"
        )
        for run in burst["runs"]:
            print(f"  sink latency {run['sink_latency_ms']:g} ms")
            for label in ("BatchSpanProcessor", "AltertableSpanProcessor"):
                b = run[label]
                print(
                    f"    {label:<24} delivered {b['tagged_delivered']:>6,}  lost "
                    f"{b['tagged_lost']:>6,}  (burst {b['burst_seconds']} s at "
                    f"{b['spans_per_second_produced']:,} spans/s, all flushed after "
                    f"{b['seconds_until_flushed']} s)"
                )


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None or not b.best:
        return None
    return float(a.best / b.best)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--rounds", type=int, help="timed rounds per scenario")
    parser.add_argument("--memory-events", type=int, help="events in the memory run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory run")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst scenario")
    parser.add_argument(
        "--burst-latency-ms",
        type=float,
        nargs="+",
        default=[0.0, 50.0],
        help="sink answer delays for the burst scenario, one run each (default: 0 50)",
    )
    parser.add_argument("--max-batch-size", type=int, default=100, help="items per request")
    parser.add_argument("--compression", choices=("gzip", "none"), default=None)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-bridge", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child is not None:
        memory_child(args.memory_child, args.max_batch_size, args.compression, args.memory_bridge)
        return 0

    sizes = QUICK if args.quick else Sizes()
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    if args.memory_events is not None:
        sizes = replace(sizes, memory_events=args.memory_events)

    # The memory run goes first, while this process is small (see bench_memory).
    memory, bridge_memory = (
        (None, None)
        if args.no_memory
        else (
            bench_memory(sizes.memory_events, args),
            bench_memory(sizes.memory_events, args, bridge=True),
        )
    )

    tagged = build_spans(BATCH * 4, tagged=True)
    untagged = build_spans(BATCH * 4, tagged=False)
    tagged_pool = batches(tagged, BATCH)
    untagged_pool = batches(untagged, BATCH)
    payloads = [track_payload(s, ENVIRONMENT) for s in tagged[:BATCH]]

    scenarios: dict[str, Any] = {}
    with ProcessSink() as sink:
        scenarios["ours"] = bench_ours(sink, tagged_pool, sizes, args)
        scenarios["ours_stdlib"] = bench_ours(sink, tagged_pool, sizes, args, stdlib_json=True)
        scenarios["otlp"] = bench_otlp(sink, tagged_pool, sizes)
        scenarios["sdk"] = bench_sdk(sink, payloads, sizes)
        scenarios["floor"] = bench_floor(payloads, sizes, args.max_batch_size)
        scenarios["skip"] = bench_skip(sink, untagged_pool, sizes, args)
        scenarios["bridge"] = bench_bridge(sink, tagged_pool, sizes, args)
    scenarios.update(bench_receiver(tagged_pool, sizes, args))
    on_end = bench_on_end(untagged_pool, sizes, args)

    # The default install (no extras) is what most users get: the ratios are of it.
    default = scenarios["ours_stdlib"]
    ratios = {
        "ours/OTLP": _ratio(default, scenarios["otlp"]),
        "ours/SDK": _ratio(default, scenarios["sdk"]),
        "ours/floor": _ratio(default, scenarios["floor"]),
        "skip/tagged": _ratio(scenarios["skip"], default),
        "bridge/ours": _ratio(scenarios["bridge"], default),
        "fast/stdlib": _ratio(scenarios["ours"], default),
        "on_end/BSP": on_end["ratio"],
    }
    report: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "versions": _versions(),
            "quick": args.quick,
            "rounds": sizes.rounds,
            "statistic": "best round (median also shown)",
            "max_batch_size": args.max_batch_size,
            "compression": args.compression,
            "sizes": asdict(sizes),
        },
        "scenarios": {
            k: (v if isinstance(v, str) else {**asdict(v), "best": v.best, "median": v.median})
            for k, v in scenarios.items()
        },
        "ratios": ratios,
        "on_end": on_end,
    }
    if not args.no_burst:
        report["burst"] = bench_burst(sizes, args)
    if memory is not None:
        report["memory"] = memory
    if bridge_memory is not None:
        report["memory_bridge"] = bridge_memory
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
