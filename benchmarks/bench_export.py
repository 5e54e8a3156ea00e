"""Export throughput, app overhead, memory and burst behaviour, measured in one run.

    python benchmarks/bench_export.py            # full run (``make bench``)
    python benchmarks/bench_export.py --quick    # smoke run, small counts, a few seconds
    python benchmarks/bench_export.py --json out.json

Every export scenario uses the same spans, built once with the real SDK (512 per export
batch), and the same loopback sink that answers like the Altertable API (``_sink.py``). The
timed scenarios are interleaved: each round runs one window of every scenario (starting one
scenario later each round), so a burst of load on the shared machine lands on all of them
alike rather than on whichever ran at that minute. After a warm-up window each, ``--rounds``
rounds; the table shows the best window, the median and the spread ((best - worst) / best),
and ratios use the best windows (the least disturbed). The app-overhead rows serve requests
through real Flask and FastAPI apps (``_apps.py``), interleaved the same way. Everything runs
in this process except the sink, the bridges' senders, the process whose journal ``replay``
recovers (killed with SIGKILL once it has journaled) and the memory runs.

With a spool directory the processors journal each analytics record; the journal's rows are
its calling-thread cost per record (``journal_cost.py``), ``replay`` of a killed process's
journal and the bridge over gRPC (both in the export rounds), the apps with the journal on
(in the app rounds) and memory over 1,000,000 records through it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
    app_requests: int = 1_500  # per window and app configuration
    app_rounds: int = 10  # short windows, many rounds: the best ones are the quiet ones
    journal_calls: int = 20_000  # on_end calls timed per processor and run
    journal_runs: int = 3
    ack_requests: int = 50  # per mode (journal on, off) of the acknowledgement row


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
    app_requests=100,
    app_rounds=3,
    journal_calls=2_000,
    journal_runs=2,
    ack_requests=10,
)

AnySink = Sink | ProcessSink

#: The targets of each ratio: (at least, at most).
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "ours/OTLP": (2.5, None),
    "ours/SDK": (55.0, None),
    "ours/floor": (0.45, None),
    "skip/tagged": (15.0, None),
    "skip_ids/tagged": (15.0, None),
    "bridge/ours": (0.5, None),
    "bridge_grpc/ours": (0.5, None),
    "on_end/BSP": (None, 3.0),
}
#: What each scenario row is held to (printed beside it): ratio names of TARGETS, or a rate.
ROW_TARGETS: dict[str, tuple[str, ...]] = {
    "ours": ("fast >= 100,000/s",),
    "ours_stdlib": ("ours/OTLP", "ours/SDK", "ours/floor"),
    "skip": ("skip/tagged",),
    "skip_ids": ("skip_ids/tagged",),
    "bridge": ("bridge/ours",),
    "bridge_grpc": ("bridge_grpc/ours", "grpc/http bridge"),
    "replay": ("replay/ours",),
}
FAST_TARGET = 100_000.0
#: The app-overhead targets: ours takes at most this share of the app's requests/s ...
APP_OVERHEAD_MAX = 0.05
#: ... and the journal at most this much more than ours without it.
JOURNAL_EXTRA_MAX = 0.05
#: Memory is flat when RSS at the end is at most this above RSS after the first 100,000.
MEMORY_GROWTH_MAX_MIB = 2.0


@dataclass
class Result:
    name: str
    unit: str  # "events", "spans" or "requests"
    per_round: int
    rates: list[float] = field(default_factory=list)
    bytes_per_item: float | None = None
    note: str = ""
    cpu_us: list[float] = field(default_factory=list)
    """This process's CPU time per item of each window (all its threads: a processor's worker
    included, the sink and senders in other processes not)."""

    @property
    def best(self) -> float:
        return max(self.rates) if self.rates else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def spread(self) -> float:
        """(best - worst) / best of the windows: how much the machine moved this row."""
        return (self.best - min(self.rates)) / self.best if self.rates and self.best else 0.0


def _nothing() -> None:
    return None


@dataclass
class Scenario:
    """One timed scenario: ``window`` does one window's work and returns its item count."""

    key: str
    result: Result
    window: Callable[[], int]
    close: Callable[[], None] = _nothing
    sink_path: str | None = None
    """Where its requests land on the shared sink: the bytes and requests its windows sent
    there are counted per scenario (snapshots taken between windows, outside the timing)."""
    prepare: Callable[[], None] = _nothing
    """Run before each window, outside the timing (e.g. a fresh copy of what it consumes)."""


def run_interleaved(
    scenarios: Sequence[Scenario], rounds: int, sink: AnySink | None = None
) -> None:
    """One warm-up window each, then ``rounds`` rounds of one window of every scenario.

    Round ``r`` starts with scenario ``r`` (mod their number), so no scenario always runs
    right after the same neighbour (a neighbour's background work, such as a processor
    thread flushing, would otherwise land on the same scenario every round).
    """
    counted: dict[str, list[int]] = {s.key: [0, 0, 0] for s in scenarios}  # items, bytes, reqs

    def window(scenario: Scenario, timed: bool) -> None:
        scenario.prepare()
        before = sink.snapshot() if sink is not None and scenario.sink_path else None
        cpu = time.process_time()
        start = time.perf_counter()
        items = scenario.window()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if timed:
            scenario.result.rates.append(items / seconds)
            scenario.result.cpu_us.append(cpu / items * 1e6)
        if before is not None and sink is not None and scenario.sink_path:
            after = sink.snapshot()
            path = scenario.sink_path
            tally = counted[scenario.key]
            tally[0] += items
            tally[1] += after["bytes"].get(path, 0) - before["bytes"].get(path, 0)
            tally[2] += after["requests"].get(path, 0) - before["requests"].get(path, 0)

    for scenario in scenarios:
        window(scenario, timed=False)
    for r in range(rounds):
        for k in range(len(scenarios)):
            window(scenarios[(r + k) % len(scenarios)], timed=True)
    for scenario in scenarios:
        items, nbytes, requests = counted[scenario.key]
        if items and nbytes:
            scenario.result.bytes_per_item = nbytes / items
        if scenario.sink_path and not scenario.result.note:
            scenario.result.note = f"{requests} requests sent"


def _timed(run_round: Callable[[], int], rounds: int) -> list[float]:
    """Warm up with one round, then time ``rounds`` rounds (not interleaved); items/s each."""
    run_round()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        items = run_round()
        rates.append(items / (time.perf_counter() - start))
    return rates


def _close_all(scenarios: Sequence[Scenario]) -> None:
    for scenario in scenarios:
        scenario.close()


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


def _export_window(
    exporter: Any, pool: Sequence[list[ReadableSpan]], n_batches: int
) -> Callable[[], int]:
    def window() -> int:
        done = 0
        for k in range(n_batches):
            batch = pool[k % len(pool)]
            if exporter.export(batch) is not SpanExportResult.SUCCESS:
                raise RuntimeError(f"{type(exporter).__name__}.export did not succeed")
            done += len(batch)
        return done

    return window


# --------------------------------------------------------------------------- scenarios


def scenario_ours(
    sink: AnySink,
    pool: Sequence[list[ReadableSpan]],
    sizes: Sizes,
    args: Any,
    *,
    stdlib_json: bool = False,
) -> Scenario:
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
    return Scenario(
        "ours_stdlib" if stdlib_json else "ours",
        Result(name, "events", sizes.export_batches * BATCH),
        _export_window(exporter, pool, sizes.export_batches),
        exporter.shutdown,
        "/track",
    )


def scenario_otlp(sink: AnySink, pool: Sequence[list[ReadableSpan]], sizes: Sizes) -> Scenario:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter: Any = OTLPSpanExporter(endpoint=f"{sink.url}/v1/traces")
    return Scenario(
        "otlp",
        Result("OTLP/HTTP protobuf exporter -> /v1/traces", "spans", sizes.export_batches * BATCH),
        _export_window(exporter, pool, sizes.export_batches),
        exporter.shutdown,
        "/v1/traces",
    )


def scenario_sdk(sink: AnySink, payloads: Sequence[dict[str, Any]], sizes: Sizes) -> Scenario:
    from altertable import Altertable

    client = Altertable(API_KEY, server_url=sink.url, environment=ENVIRONMENT)

    def window() -> int:
        for k in range(sizes.sdk_events):
            p = payloads[k % len(payloads)]
            client.track(
                p["event"],
                p["distinct_id"],
                {"properties": p["properties"], "timestamp": p["timestamp"]},
            )
        return sizes.sdk_events

    return Scenario(
        "sdk",
        Result("official altertable SDK: track() per event", "events", sizes.sdk_events),
        window,
        client.session.close,
        "/track",
    )


def scenario_floor(
    payloads: Sequence[dict[str, Any]], sizes: Sizes, max_batch_size: int
) -> Scenario:
    """json.dumps + encode of pre-built /track items, chunked like our requests; no HTTP."""
    chunks = [list(payloads[i : i + max_batch_size]) for i in range(0, BATCH, max_batch_size)]
    res = Result("floor: json.dumps of pre-built payloads", "events", sizes.export_batches * BATCH)

    def window() -> int:
        nbytes = 0
        for _ in range(sizes.export_batches):
            for chunk in chunks:
                nbytes += len(json.dumps(chunk).encode())
        res.bytes_per_item = nbytes / res.per_round
        return sizes.export_batches * BATCH

    return Scenario("floor", res, window)


def scenario_skip(
    sink: AnySink, pool: Sequence[list[ReadableSpan]], sizes: Sizes, args: Any, *, ids: bool
) -> Scenario:
    """Ours on untagged spans: plain requests, or (``ids``) requests naming their user
    (``user.id``, ``enduser.id``, ``session.id``: the most common span of a traced service)."""
    exporter = _ours(sink.url, args.max_batch_size, args.compression)
    name = (
        "ours on untagged spans with user.id (skip)"
        if ids
        else "ours on untagged spans (skip path)"
    )
    return Scenario(
        "skip_ids" if ids else "skip",
        Result(name, "spans", sizes.skip_batches * BATCH),
        _export_window(exporter, pool, sizes.skip_batches),
        exporter.shutdown,
        "/track",
    )


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
                res.rates = _timed(_export_window(exporter, pool, sizes.receiver_batches), rounds)
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


def scenario_bridge(
    sink: AnySink, pool: Sequence[list[ReadableSpan]], sizes: Sizes, args: Any
) -> Scenario | str:
    """The OTLP bridge: a sender process posts OTLP protobuf requests of 512 tagged spans to a
    bridge in this process, which maps and delivers them to the sink; spans per second, each
    request answered 200 only once its calls were accepted. The sender runs one window per
    command (``_bridge_client.py``), so the bridge's windows interleave with the others'."""
    import pickle
    import tempfile

    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge
    except ImportError as exc:
        return f"skipped: bridge not importable ({exc})"
    bodies = [encode_spans(batch).SerializeToString() for batch in pool]
    extra: dict[str, Any] = {"compression": args.compression} if args.compression else {}
    bridge = create_bridge(
        api_key=API_KEY, endpoint=sink.url, environment=ENVIRONMENT,
        max_batch_size=args.max_batch_size, **extra,
    )  # fmt: skip
    server = BridgeServer(bridge, port=0).__enter__()
    bodies_file = tempfile.NamedTemporaryFile(suffix=".pickle")  # noqa: SIM115  # closed in close()
    pickle.dump(bodies, bodies_file)
    bodies_file.flush()
    client = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("_bridge_client.py")), server.endpoint,
         bodies_file.name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None
    stdin, stdout = client.stdin, client.stdout

    def window() -> int:
        stdin.write(f"{sizes.export_batches}\n")
        stdin.flush()
        if stdout.readline().strip() != "ok":
            raise RuntimeError("the bridge's sender failed (see its stderr above)")
        return sizes.export_batches * BATCH

    def close() -> None:
        stdin.close()
        try:
            client.wait(timeout=60)
        finally:
            server.__exit__(None, None, None)
            bodies_file.close()

    res = Result(
        "bridge: OTLP protobuf (512/request) -> /track", "spans", sizes.export_batches * BATCH
    )
    res.note = (
        f"sender in its own process, {sum(len(b) for b in bodies) // len(bodies):,} B/request"
    )
    return Scenario("bridge", res, window, close, "/track")


# --------------------------------------------------------------------------- the journal's paths


def scenario_bridge_grpc(
    sink: AnySink, pool: Sequence[list[ReadableSpan]], sizes: Sizes, args: Any
) -> Scenario | str:
    """The bridge over OTLP/gRPC, fed the same requests as ``scenario_bridge`` (512 tagged
    spans each, from a sender in its own process: ``grpc_bridge.py``), in the same rounds."""
    try:
        from grpc_bridge import GrpcBridgeWindows
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        bodies = [encode_spans(batch).SerializeToString() for batch in pool]
        windows = GrpcBridgeWindows(
            sink.url, bodies, max_batch_size=args.max_batch_size, compression=args.compression
        )
    except ImportError as exc:
        return f"skipped: the gRPC bridge is not importable ({exc})"

    def window() -> int:
        windows.window(sizes.export_batches)
        return sizes.export_batches * BATCH

    res = Result(
        "bridge over gRPC: the same requests -> /track", "spans", sizes.export_batches * BATCH
    )
    res.note = "sender in its own process, one channel, unary calls"
    return Scenario("bridge_grpc", res, window, windows.close, "/track")


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the duration (what ``replay`` reads its settings from)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def journal_child(directory: str, records: int) -> None:
    """Runs in a subprocess: journal ``records`` tagged spans through an
    ``AltertableSpanProcessor`` with ``directory`` as its spool, say ``ready`` and wait for
    the SIGKILL that leaves them behind (the queue is never exported: it is larger than
    ``records`` and so is its export batch). It ends by itself if its parent goes away."""
    from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

    spans = build_spans(BATCH * 4, tagged=True)
    exporter = _ours("http://127.0.0.1:9", 100, None, spool_dir=directory)
    processor = AltertableSpanProcessor(
        exporter,
        max_queue_size=records + 1,
        max_export_batch_size=records + 1,
        schedule_delay_millis=3_600_000,
    )
    for k in range(records):
        processor.on_end(spans[k % len(spans)])
    print("ready", flush=True)
    sys.stdin.read()  # until the SIGKILL, or the parent's end closes the pipe


def _killed_journals(directory: Path, records: int) -> None:
    """Fill ``directory`` with the journal of a process killed (SIGKILL) after journaling
    ``records`` tagged spans."""
    import select

    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--journal-child", str(directory),
         str(records)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = ""
    try:
        assert child.stdout is not None
        if select.select([child.stdout], [], [], 300)[0]:
            line = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdin is not None:
            child.stdin.close()
    if line != "ready":
        raise RuntimeError("the journaling child did not finish (see its stderr above)")


def scenario_replay(sink: AnySink, sizes: Sizes, args: Any) -> Scenario | str:
    """``replay`` throughput: calls per second that ``altertable-otel replay`` (its function,
    in this process, settings from the environment as the command reads them) delivers from
    the journal of a process killed with SIGKILL after journaling ``export_batches x 512``
    tagged spans: recovery (read, map, spool) and delivery of the spool to the sink.

    The killed process's directory is made once; each window replays a fresh copy of it,
    made before the window (outside the timing), and checks that every call was delivered."""
    import io
    import shutil
    import tempfile

    from opentelemetry_exporter_altertable import environment_variables as ev
    from opentelemetry_exporter_altertable._replay import run_replay

    records = sizes.export_batches * BATCH
    base = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    pristine = base / "killed"
    try:
        _killed_journals(pristine, records)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        return f"skipped: no journal to replay ({type(exc).__name__}: {exc})"
    journal_bytes = sum(f.stat().st_size for f in pristine.iterdir())
    settings = {
        ev.OTEL_EXPORTER_ALTERTABLE_API_KEY: API_KEY,
        ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT: sink.url,
        ev.OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT: ENVIRONMENT,
        ev.OTEL_EXPORTER_ALTERTABLE_MAX_BATCH_SIZE: str(args.max_batch_size),
    }
    if args.compression:
        settings[ev.OTEL_EXPORTER_ALTERTABLE_COMPRESSION] = args.compression
    work = base / "work"

    def prepare() -> None:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)

    def window() -> int:
        out, err = io.StringIO(), io.StringIO()
        with _environment(settings):
            status = run_replay(str(work), out, err)
        said = out.getvalue()
        expected = f"recovered {records} call(s) from journals of ended processes; delivered "
        if status != 0 or f"{expected}{records} call(s)" not in said:
            raise RuntimeError(f"replay did not deliver {records} calls: {said[-400:]!r}")
        return records

    res = Result("replay: a killed process's journal -> /track", "calls", records)
    res.note = (
        f"{len(list(pristine.iterdir()))} journal files, {journal_bytes / records:,.0f} B/record"
    )
    return Scenario(
        "replay", res, window, lambda: shutil.rmtree(base, ignore_errors=True), "/track", prepare
    )


def bench_journal_record(sizes: Sizes, args: Any) -> dict[str, Any]:
    """The journal's calling-thread cost per analytics record: ``journal_cost.py``'s
    ``measure_journal_cost`` (the median of ``on_end`` calls timed one by one, the same
    ``AltertableSpanProcessor`` with and without the exporter's spool directory, and the
    untagged path with the journal on against ``BatchSpanProcessor``), run
    ``journal_runs`` times between other work: per figure the best and the median run."""
    from journal_cost import TARGET_US, measure_journal_cost

    package = logging.getLogger("opentelemetry_exporter_altertable")
    level = package.level
    try:
        runs = [measure_journal_cost(sizes.journal_calls) for _ in range(sizes.journal_runs)]
    finally:
        package.setLevel(level)
    for run in runs:
        run["untagged_ratio"] = run["untagged_journal_us"] / run["untagged_sdk_batch_us"]
    figures = {
        key: {"best": min(r[key] for r in runs), "median": statistics.median(r[key] for r in runs)}
        for key in runs[0]
    }
    return {
        "calls_per_run": sizes.journal_calls,
        "runs": runs,
        "figures": figures,
        "target_added_us": TARGET_US,
        "target_untagged_ratio": TARGETS["on_end/BSP"][1],
    }


def bench_bridge_ack_latency(sizes: Sizes) -> dict[str, Any]:
    """The bridge's acknowledgement latency on its journal: ``bridge_ack.py``'s
    ``measure_ack_latency`` (an HTTP bridge in this process in front of a sink of its own
    that answers after 100 ms, as a remote API; ``ack_requests`` OTLP requests of 512 tagged
    spans posted one after another, each timed from the POST to the 200), journal on and, for
    comparison, off (the answer then waits for the API); every span must reach the sink."""
    from bridge_ack import measure_ack_latency

    package = logging.getLogger("opentelemetry_exporter_altertable")
    level = package.level
    try:
        figures = measure_ack_latency(sizes.ack_requests, BATCH, ACK_API_LATENCY)
    finally:
        package.setLevel(level)
    return {
        "p50_ms": figures["journal_median_ms"],
        "p99_ms": figures["journal_p99_ms"],
        "no_journal_p50_ms": figures["no_journal_median_ms"],
        "no_journal_p99_ms": figures["no_journal_p99_ms"],
        "requests": sizes.ack_requests,
        "api_latency_ms": ACK_API_LATENCY * 1000,
    }


def journal_processor(sink_url: str, args: Any, spool_dir: str) -> Any:
    """``AltertableSpanProcessor(AltertableSpanExporter(...))`` with the journal on (the
    exporter's ``spool_dir``), for the app-overhead rows (target: at most 5% more than
    without it)."""
    from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

    return AltertableSpanProcessor(
        _ours(sink_url, args.max_batch_size, args.compression, spool_dir=spool_dir)
    )


#: The sink of the acknowledgement row answers after this many seconds (a remote API).
ACK_API_LATENCY = 0.1


# --------------------------------------------------------------------------- app overhead


def app_scenarios(sink: AnySink, sizes: Sizes, args: Any) -> list[Scenario]:
    """Per framework (Flask over WSGI, FastAPI over ASGI), one app per exporter setup: none,
    ``BatchSpanProcessor(OTLPSpanExporter)``, ``AltertableSpanProcessor(AltertableSpanExporter)``
    and ours with the journal (a spool directory of its own). Each window serves
    ``app_requests`` requests and then flushes the provider, so all of the export work the
    requests caused is inside the window."""
    import tempfile

    from _apps import FRAMEWORKS
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

    setups: list[tuple[str, str, Callable[[str], Any]]] = [
        ("none", "no exporter", lambda _: None),
        (
            "otlp",
            "BatchSpanProcessor(OTLPSpanExporter)",
            lambda _: BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink.url}/v1/traces")),
        ),
        (
            "ours",
            "AltertableSpanProcessor(AltertableSpanExporter)",
            lambda _: AltertableSpanProcessor(
                _ours(sink.url, args.max_batch_size, args.compression)
            ),
        ),
        (
            "journal",
            "ours with the journal (spool_dir)",
            lambda spool_dir: journal_processor(sink.url, args, spool_dir),
        ),
    ]
    out: list[Scenario] = []
    for framework, make_driver in FRAMEWORKS.items():
        for setup, title, make_processor in setups:
            spool = tempfile.TemporaryDirectory(prefix="bench-journal-")
            processor = make_processor(spool.name)
            provider = make_provider(*([processor] if processor is not None else []))
            serve = make_driver(provider, f"bench-{framework}-{setup}")

            def window(
                serve: Callable[[int], None] = serve, provider: Any = provider
            ) -> int:
                serve(sizes.app_requests)
                provider.force_flush()
                return sizes.app_requests

            def close(
                serve: Any = serve,
                provider: Any = provider,
                spool: tempfile.TemporaryDirectory[str] = spool,
            ) -> None:
                provider.shutdown()
                getattr(serve, "close", _nothing)()
                spool.cleanup()

            out.append(
                Scenario(
                    f"app_{framework}_{setup}",
                    Result(f"{framework}: {title}", "requests", sizes.app_requests),
                    window,
                    close,
                )
            )
    return out


def app_overheads(results: dict[str, Result]) -> dict[str, dict[str, Any]]:
    """Per framework and exporter setup: the share of the app's requests/s it takes, from the
    best windows, and the median of the same-round pairs (each round's window of the setup
    against that round's window without an exporter), and the CPU it adds per request (least
    CPU per request of its windows against the app's without an exporter)."""
    out: dict[str, dict[str, Any]] = {}
    for key, res in results.items():
        if not key.startswith("app_") or key.endswith("_none"):
            continue
        framework = key.split("_")[1]
        base = results[f"app_{framework}_none"]
        paired = [1 - rate / b for rate, b in zip(res.rates, base.rates, strict=False) if b]
        out[key] = {
            "framework": framework,
            "setup": key.rsplit("_", 1)[1],
            "overhead_best": 1 - res.best / base.best if base.best else None,
            "overhead_paired_median": statistics.median(paired) if paired else None,
            "cpu_extra": (
                min(res.cpu_us) / min(base.cpu_us) - 1 if res.cpu_us and base.cpu_us else None
            ),
        }
    return out


# --------------------------------------------------------------------------- on_end


def bench_on_end(
    pool: Sequence[list[ReadableSpan]],
    identity_pool: Sequence[list[ReadableSpan]],
    sizes: Sizes,
    args: Any,
) -> dict[str, Any]:
    """The application thread's cost of ``on_end`` for untagged spans, per span: CPU time of
    the calling thread only (``time.thread_time``), so the processors' worker threads (which
    export, or here skip, what was queued) are not billed to it. Ours also on spans naming
    their user (``user.id``, ``enduser.id``, ``session.id``)."""
    from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

    calls = sizes.on_end_calls
    out: dict[str, Any] = {"calls_per_round": calls}
    sdk_logger = logging.getLogger("opentelemetry.sdk")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.ERROR)  # a full BatchSpanProcessor queue logs; not measured
    runs: tuple[tuple[str, type[BatchSpanProcessor], Sequence[list[ReadableSpan]]], ...] = (
        ("BatchSpanProcessor", BatchSpanProcessor, pool),
        ("AltertableSpanProcessor", AltertableSpanProcessor, pool),
        ("AltertableSpanProcessor, user.id", AltertableSpanProcessor, identity_pool),
    )
    try:
        for label, cls, batches_ in runs:
            spans = [span for batch in batches_ for span in batch]
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


class _JournalSender:
    """Ends tagged spans into ``AltertableSpanProcessor`` with the journal on (memory run):
    each ``on_end`` journals its record, the processor's thread exports and retires them. A
    flush every 2,048 spans (the default queue) paces the spans so that the queue drops none."""

    def __init__(self, sink_url: str, max_batch_size: int, compression: str | None) -> None:
        import tempfile

        from opentelemetry_exporter_altertable.processor import AltertableSpanProcessor

        self._spool = tempfile.TemporaryDirectory(prefix="bench-journal-memory-")
        self.exporter = _ours(sink_url, max_batch_size, compression, spool_dir=self._spool.name)
        self._processor = AltertableSpanProcessor(self.exporter)
        self._ended = 0

    def export(self, batch: Sequence[ReadableSpan]) -> bool:
        on_end = self._processor.on_end
        for span in batch:
            on_end(span)
        self._ended += len(batch)
        if self._ended % 2048 == 0:
            return bool(self._processor.force_flush())
        return True

    def journal_bytes(self) -> int:
        return sum(f.stat().st_size for f in Path(self._spool.name).iterdir())

    def close(self) -> dict[str, Any]:
        """Flush, shut down; what the exporter counted and what is left on disk."""
        self._processor.force_flush()
        left = self.journal_bytes()
        self._processor.shutdown()
        stats = self.exporter.stats()
        self._spool.cleanup()
        return {
            "calls_exported": stats["calls_exported"],
            "queue_dropped": stats["queue_dropped"],
            "calls_spooled": stats["calls_spooled"],
            "journal_bytes_before_shutdown": left,
        }


def memory_child(
    events: int,
    max_batch_size: int,
    compression: str | None,
    bridge: bool = False,
    journal: bool = False,
) -> None:
    """Runs in a subprocess: ``events`` tagged events in batches of 512 through ours (or
    through the bridge, posted to it as OTLP protobuf, or ended one by one into
    ``AltertableSpanProcessor`` with the journal on), print JSON."""
    spans = build_spans(BATCH * 4, tagged=True)
    pool = batches(spans, BATCH)
    checkpoint = min(100_000, max(BATCH, events // 10))
    events -= events % BATCH  # whole requests only
    with Sink() as sink:
        sender: Any = None
        exporter: Any = None
        journaled: _JournalSender | None = None
        if bridge:
            sender = _BridgeSender(pool, sink.url, (max_batch_size, compression))
        elif journal:
            journaled = _JournalSender(sink.url, max_batch_size, compression)
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
            elif journaled is not None:
                ok = journaled.export(batch)
            else:
                ok = exporter.export(batch) is SpanExportResult.SUCCESS
            k += 1
            failures += not ok
            done += len(batch)
            if rss_checkpoint is None and done >= checkpoint:
                rss_checkpoint = _rss_kb()
        extra: dict[str, Any] = {}
        if journaled is not None:
            extra = journaled.close()  # the last flush belongs to the run's time
        seconds = time.perf_counter() - start
        if sender is not None:
            sender.close()
        elif exporter is not None:
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
                **extra,
            }
        )
    )


def bench_memory(
    events: int, args: Any, bridge: bool = False, journal: bool = False
) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(events)]
    if bridge:
        cmd.append("--memory-bridge")
    if journal:
        cmd.append("--memory-journal")
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
    if "calls_exported" in mem:
        print(
            f"  exported {mem['calls_exported']:,} calls, queue drops {mem['queue_dropped']:,}, "
            f"spooled {mem['calls_spooled']:,}; journal {mem['journal_bytes_before_shutdown']:,} B"
            " on disk after the last flush"
        )
    print(
        f"  target: flat, at most {MEMORY_GROWTH_MAX_MIB:g} MiB more at the end than after the "
        f"first {mem['checkpoint_events']:,}: {_verdict(growth, None, MEMORY_GROWTH_MAX_MIB)}"
    )


def _print_journal_record(journal: dict[str, Any] | None) -> None:
    if not journal:
        print("\njournal: calling-thread cost per record   not measured")
        return
    fig = journal["figures"]
    target = journal["target_added_us"]
    print(
        f"\njournal: calling-thread cost per analytics record, on_end timed call by call "
        f"({journal['calls_per_run']:,} calls per processor and run, {len(journal['runs'])} runs;"
        f" best run / median run of the per-call medians)"
    )
    rows = (
        ("tagged_no_spool_us", "tagged, no spool"),
        ("tagged_journal_us", "tagged, journal on (spool_dir)"),
        ("journal_added_us", "  the journal adds"),
        ("mapped_calls_journal_us", "  (mapping on the calling thread, calls journaled)"),
        ("untagged_sdk_batch_us", "untagged, BatchSpanProcessor"),
        ("untagged_journal_us", "untagged, ours with the journal on"),
    )
    for key, label in rows:
        row = fig[key]
        line = f"  {label:<52} {row['best']:>7.2f} us  {row['median']:>7.2f} us"
        if key == "journal_added_us":
            line += f"   target <= {target:g} us: {_verdict(row['best'], None, target)}"
        print(line)
    ratio = fig["untagged_ratio"]
    high = journal["target_untagged_ratio"]
    print(
        f"  untagged with the journal on / BatchSpanProcessor: {ratio['best']:.2f}x (best run),"
        f" {ratio['median']:.2f}x (median run)   target <= {high:g}x: "
        f"{_verdict(ratio['best'], None, high)}"
    )


def _verdict(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "n/a"
    return "met" if (low is None or value >= low) and (high is None or value <= high) else "NOT met"


def _target_text(name: str, ratios: dict[str, float | None], fast_best: float) -> str:
    """A row's target, its figure and the verdict, e.g. ``>= 15x tagged: 29.1x met``."""
    if name == "fast >= 100,000/s":
        return f"fast extra >= {FAST_TARGET:,.0f}/s: {_verdict(fast_best, FAST_TARGET, None)}"
    value = ratios.get(name)
    if name not in TARGETS:
        return f"{name} {value:.2f}x (context, no target)" if value else f"{name} n/a"
    low, high = TARGETS[name]
    bound = f">= {low:g}x" if low is not None else f"<= {high:g}x"
    shown = f"{value:.2f}x" if value is not None else "n/a"
    return f"{name} {bound}: {shown} {_verdict(value, low, high)}"


def print_report(report: dict[str, Any]) -> None:  # noqa: PLR0912, PLR0915  # one flat report
    meta = report["meta"]
    print(f"\nopentelemetry-exporter-altertable export benchmark  {meta['date']}")
    print(
        f"Python {meta['versions']['python']} on {meta['platform']}, cpu_count={meta['cpu_count']}"
        f", load average {meta['load_before']} before, {meta.get('load_after', '?')} after"
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if k != "python"))
    print(
        f"  {BATCH} spans per export batch, max_batch_size={meta['max_batch_size']}, "
        f"compression={meta['compression'] or 'exporter default'}, "
        f"{meta['rounds']} interleaved rounds after a warm-up window"
        f"{', QUICK' if meta['quick'] else ''}\n"
    )
    head = (
        f"{'scenario':<46} {'unit':<8} {'per window':>10} {'best /s':>11} {'median /s':>11} "
        f"{'spread':>6} {'bytes/item':>10}"
    )
    print(head + "  note")
    print("-" * (len(head) + 20))
    ratios = report["ratios"]
    fast_best = report["scenarios"]["ours"]["best"]
    for key, r in report["scenarios"].items():
        if isinstance(r, str) or key.startswith("app_"):
            continue
        bpi = f"{r['bytes_per_item']:.0f}" if r["bytes_per_item"] else "-"
        print(
            f"{r['name']:<46} {r['unit']:<8} {r['per_round']:>10,} {_fmt_rate(r['best']):>11} "
            f"{_fmt_rate(r['median']):>11} {r['spread']:>6.1%} {bpi:>10}  {r['note']}"
        )
        targets = ROW_TARGETS.get(key)
        if targets:
            texts = (_target_text(name, ratios, fast_best) for name in targets)
            print(f"{'':<4}target: {'; '.join(texts)}")
        else:
            print(f"{'':<4}target: none (a reference for the ratios, or context)")
    for key, r in report["scenarios"].items():
        if isinstance(r, str):
            print(f"{key}: {r}")
    print("\nratios (best windows; ours = the default install: stdlib json, no extras)")
    for key, value in ratios.items():
        target = TARGETS.get(key)
        verdict = ""
        if target is not None:
            low, high = target
            bound = f">= {low:g}x" if low is not None else f"<= {high:g}x"
            verdict = f"   target {bound}: {_verdict(value, low, high)}"
        shown = f"{value:>8.2f}x" if value is not None else "     n/a"
        print(f"  {key:<16} {shown}{verdict}")
    print(
        f"  fast extra       {fast_best:>8,.0f} events/s   target >= {FAST_TARGET:,.0f}: "
        f"{_verdict(fast_best, FAST_TARGET, None)}"
    )
    apps = report.get("apps")
    if apps:
        print(
            f"\napp overhead: requests/s of an SDK-instrumented app served in-process, 1 request"
            f" in {report['meta']['tag_every']} tagged, every request with user.id; each window"
            f" ends with a flush; {report['meta']['sizes']['app_rounds']} interleaved rounds"
        )
        print(
            f"  {'app and exporter setup':<58} {'best /s':>9} {'median /s':>9} {'spread':>6} "
            f"{'CPU us':>6} {'takes':>6} {'paired':>6} {'+CPU':>6}  target"
        )
        overheads = report["app_overheads"]
        for key, r in report["scenarios"].items():
            if not key.startswith("app_"):
                continue
            line = (
                f"  {r['name']:<58} {_fmt_rate(r['best']):>9} {_fmt_rate(r['median']):>9} "
                f"{r['spread']:>6.1%} {min(r['cpu_us']):>6.1f}"
            )
            over = overheads.get(key)
            if over is None:
                print(line + f" {'-':>6} {'-':>6} {'-':>6}  (the baseline)")
                continue
            target = ""
            if over["setup"] == "ours":
                otlp = overheads.get(f"app_{over['framework']}_otlp", {}).get("overhead_best")
                met = over["overhead_best"] <= APP_OVERHEAD_MAX and (
                    otlp is None or over["overhead_best"] < otlp
                )
                target = (
                    f"<= {APP_OVERHEAD_MAX:.0%} and less than OTLP's: "
                    f"{'met' if met else 'NOT met'}"
                )
            elif over["setup"] == "journal":
                ours = overheads[f"app_{over['framework']}_ours"]["overhead_best"]
                extra = over["overhead_best"] - ours
                target = (
                    f"<= {JOURNAL_EXTRA_MAX:.0%} more than ours ({extra:+.1%}): "
                    f"{_verdict(extra, None, JOURNAL_EXTRA_MAX)}"
                )
            print(
                line + f" {over['overhead_best']:>6.1%} {over['overhead_paired_median']:>6.1%} "
                f"{over['cpu_extra']:>+6.1%}  " + (target or "(a reference)")
            )
        print(
            "  takes: 1 - best/best of the no-exporter app (the target's figure); paired: median"
            " over rounds of the same round's 1 - rate/rate;\n  CPU us: least CPU per request of"
            " this process (app, instrumentation, exporter threads); +CPU: against no exporter"
        )
    _print_journal_record(report.get("journal_record"))
    ack = report.get("bridge_ack")
    if ack:
        print(
            f"\nbridge acknowledgement latency: {ack['requests']} OTLP requests of {BATCH} tagged "
            f"spans, POST to 200, API answering in {ack['api_latency_ms']:g} ms"
        )
        print(
            f"  journal on (the default with a spool directory)  p50 {ack['p50_ms']:7.1f} ms  "
            f"p99 {ack['p99_ms']:7.1f} ms   target: none set (journal off beside it)"
        )
        print(
            f"  journal off (answers once the API accepted)       p50 "
            f"{ack['no_journal_p50_ms']:7.1f} ms  p99 {ack['no_journal_p99_ms']:7.1f} ms"
        )
    on_end = report["on_end"]
    print(
        f"\non_end, untagged spans, application thread CPU per call "
        f"({on_end['calls_per_round']:,} calls per round, best / median):"
    )
    for label in (
        "BatchSpanProcessor", "AltertableSpanProcessor", "AltertableSpanProcessor, user.id"
    ):  # fmt: skip
        row = on_end[label]
        print(f"  {label:<34} {row['best_ns']:>7,.0f} ns  {row['median_ns']:>7,.0f} ns")
    low, high = TARGETS["on_end/BSP"]
    print(
        f"  target: ours <= {high:g}x BatchSpanProcessor: {on_end['ratio']:.2f}x "
        f"{_verdict(on_end['ratio'], low, high)}"
    )
    for key, title in (
        ("memory", "ours, tagged events in batches of 512 into the sink"),
        ("memory_bridge", "the bridge, OTLP requests of 512 tagged spans posted to it"),
        ("memory_journal", "AltertableSpanProcessor with the journal on, tagged spans ended"),
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
                target = (
                    f"  target: none lost: {'met' if b['tagged_lost'] == 0 else 'NOT met'}"
                    if label == "AltertableSpanProcessor"
                    else "  (a reference)"
                )
                print(
                    f"    {label:<24} delivered {b['tagged_delivered']:>6,}  lost "
                    f"{b['tagged_lost']:>6,}  (burst {b['burst_seconds']} s at "
                    f"{b['spans_per_second_produced']:,} spans/s, all flushed after "
                    f"{b['seconds_until_flushed']} s){target}"
                )
    print(f"\ntotal run time {meta.get('seconds', 0):.0f} s")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None or not b.best:
        return None
    return float(a.best / b.best)


def measure_timed(
    sizes: Sizes,
    args: Any,
    pools: tuple[Sequence[list[ReadableSpan]], ...],
    payloads: Sequence[dict[str, Any]],
) -> tuple[dict[str, Any], list[Scenario]]:
    """The interleaved export scenarios (the gRPC bridge and ``replay`` among them), then the
    interleaved app-overhead ones, against one sink in its own process."""
    tagged_pool, untagged_pool, identity_pool = pools
    scenarios: dict[str, Any] = {}
    with ProcessSink() as sink:
        timed: list[Scenario] = [
            scenario_ours(sink, tagged_pool, sizes, args),
            scenario_ours(sink, tagged_pool, sizes, args, stdlib_json=True),
            scenario_otlp(sink, tagged_pool, sizes),
            scenario_sdk(sink, payloads, sizes),
            scenario_floor(payloads, sizes, args.max_batch_size),
            scenario_skip(sink, untagged_pool, sizes, args, ids=False),
            scenario_skip(sink, identity_pool, sizes, args, ids=True),
        ]
        bridge = scenario_bridge(sink, tagged_pool, sizes, args)
        if isinstance(bridge, str):
            scenarios["bridge"] = bridge
        else:
            timed.append(bridge)
        for key, hook in (
            ("bridge_grpc", lambda: scenario_bridge_grpc(sink, tagged_pool, sizes, args)),
            ("replay", lambda: scenario_replay(sink, sizes, args)),
        ):
            extra = hook()
            if isinstance(extra, str):
                scenarios[key] = extra
            else:
                timed.append(extra)
        try:
            run_interleaved(timed, sizes.rounds, sink)
        finally:
            _close_all(timed)
        for scenario in timed:
            scenarios[scenario.key] = scenario.result
        apps = [] if args.no_apps else app_scenarios(sink, sizes, args)
        try:
            run_interleaved(apps, sizes.app_rounds)
        finally:
            _close_all(apps)
        for scenario in apps:
            scenarios[scenario.key] = scenario.result
    return scenarios, apps


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--rounds", type=int, help="timed rounds per scenario")
    parser.add_argument("--memory-events", type=int, help="events in the memory run")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory run")
    parser.add_argument("--no-burst", action="store_true", help="skip the burst scenario")
    parser.add_argument("--no-apps", action="store_true", help="skip the app-overhead rows")
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
    parser.add_argument("--memory-journal", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--journal-child", nargs=2, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    if args.memory_child is not None:
        memory_child(
            args.memory_child, args.max_batch_size, args.compression,
            args.memory_bridge, args.memory_journal,
        )  # fmt: skip
        return 0
    if args.journal_child is not None:
        journal_child(args.journal_child[0], int(args.journal_child[1]))
        return 0

    sizes = QUICK if args.quick else Sizes()
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds, app_rounds=max(args.rounds, sizes.app_rounds))
    if args.memory_events is not None:
        sizes = replace(sizes, memory_events=args.memory_events)

    # The memory run goes first, while this process is small (see bench_memory).
    memory_started = time.perf_counter()
    memory, bridge_memory, journal_memory = (
        (None, None, None)
        if args.no_memory
        else (
            bench_memory(sizes.memory_events, args),
            bench_memory(sizes.memory_events, args, bridge=True),
            bench_memory(sizes.memory_events, args, journal=True),
        )
    )
    memory_seconds = time.perf_counter() - memory_started

    started = time.perf_counter()
    load_before = _load()
    tagged = build_spans(BATCH * 4, tagged=True)
    untagged = build_spans(BATCH * 4, tagged=False)
    identity = build_spans(BATCH * 4, tagged=False, identity=True)
    tagged_pool = batches(tagged, BATCH)
    untagged_pool = batches(untagged, BATCH)
    identity_pool = batches(identity, BATCH)
    payloads = [track_payload(s, ENVIRONMENT) for s in tagged[:BATCH]]

    scenarios, apps = measure_timed(
        sizes, args, (tagged_pool, untagged_pool, identity_pool), payloads
    )
    journal = bench_journal_record(sizes, args)
    ack = bench_bridge_ack_latency(sizes)
    scenarios.update(bench_receiver(tagged_pool, sizes, args))
    on_end = bench_on_end(untagged_pool, identity_pool, sizes, args)

    # The default install (no extras) is what most users get: the ratios are of it.
    default = scenarios["ours_stdlib"]
    ratios = {
        "ours/OTLP": _ratio(default, scenarios["otlp"]),
        "ours/SDK": _ratio(default, scenarios["sdk"]),
        "ours/floor": _ratio(default, scenarios["floor"]),
        "skip/tagged": _ratio(scenarios["skip"], default),
        "skip_ids/tagged": _ratio(scenarios["skip_ids"], default),
        "bridge/ours": _ratio(scenarios.get("bridge"), default),
        "bridge_grpc/ours": _ratio(scenarios.get("bridge_grpc"), default),
        "grpc/http bridge": _ratio(scenarios.get("bridge_grpc"), scenarios.get("bridge")),
        "replay/ours": _ratio(scenarios.get("replay"), default),
        "fast/stdlib": _ratio(scenarios["ours"], default),
        "on_end/BSP": on_end["ratio"],
    }
    results = {k: v for k, v in scenarios.items() if isinstance(v, Result)}
    report: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_before": load_before,
            "versions": _versions(),
            "quick": args.quick,
            "rounds": sizes.rounds,
            "statistic": "best window of interleaved rounds (median and spread also shown)",
            "max_batch_size": args.max_batch_size,
            "compression": args.compression,
            "sizes": asdict(sizes),
            "tag_every": 20,
        },
        "scenarios": {
            k: (
                v
                if isinstance(v, str)
                else {**asdict(v), "best": v.best, "median": v.median, "spread": v.spread}
            )
            for k, v in scenarios.items()
        },
        "ratios": ratios,
        "apps": bool(apps),
        "app_overheads": app_overheads(results),
        "on_end": on_end,
        "journal_record": journal,
        "bridge_ack": ack,
    }
    if not args.no_burst:
        report["burst"] = bench_burst(sizes, args)
    if memory is not None:
        report["memory"] = memory
    if bridge_memory is not None:
        report["memory_bridge"] = bridge_memory
    if journal_memory is not None:
        report["memory_journal"] = journal_memory
    report["meta"]["load_after"] = _load()
    report["meta"]["seconds"] = time.perf_counter() - started + memory_seconds
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
