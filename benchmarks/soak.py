"""Soak test: N tagged spans through the SDK into a faulty receiver; count what arrived.

    python benchmarks/soak.py --events 1000000        # make soak
    python benchmarks/soak.py --quick                 # 20,000 events, 2 s outage, ~5 s
    python benchmarks/soak.py --events 200000 --outage-seconds 10 --seed 7 --json soak.json

What runs where:

* **Receiver process** (spawned): a :class:`LocalReceiver` on 127.0.0.1 with an in-memory
  DuckDB (``--db PATH`` for a file) and a seeded :class:`FaultPlan`: 10% of ingestion requests
  answered 503 (2% of those with ``Retry-After: 1``), 2% dropped without an answer, and one
  outage (30 s, starting 10 s into the run) during which every connection is dropped. Faults
  are decided before anything is stored. Between it and the exporter, a forwarding proxy
  (``_body_faults.BodyFaultProxy``) breaks answers themselves: 3% sent slowly in pieces, 1%
  stalled halfway through the body after the receiver stored the calls (the exporter times
  out mid-read), 3% a gzipped 503/429 refusal, 1% a gzipped ``400 environment-not-found``
  (a setting error: owed and spooled, never bisected).
  The receiver runs apart so that its database (hundreds of MiB
  at a million events) does not count in the exporter's memory figure, and so that it has a
  CPU and a GIL of its own, as a real API would.
* **This process**, the exporting process: a ``TracerProvider`` with the SDK's
  ``BatchSpanProcessor`` (default queue 2048, batch 512) in front of
  ``AltertableSpanExporter(spool_dir=..., timeout=..., retry=...)``. A producer thread of the
  application's kind creates and ends one tagged span per event (the benchmark's realistic
  request attributes plus a unique ``seq``). It paces itself on the SDK queue (it waits while
  ``ended - handed to export`` would reach ``queue - batch``), so the run measures delivery
  losses, not the SDK queue's drop-oldest; spans that never reached the exporter anyway are
  reported on their own line (``SDK queue drops``).

After the producer ends: ``force_flush`` and ``shutdown`` of the provider (whatever was still
owed is spooled), then a fresh exporter on the same spool directory replays until the spool is
empty (the random faults still apply; the outage is over). Only then does the receiver count:
``stored distinct`` is ``count(DISTINCT properties->>'seq')`` within ``[0, N)``, ``lost`` is
events ended minus that, ``duplicated`` is stored rows minus distinct (at-least-once delivery
allows some). Exit status 1 if any event was lost.

Retries are scaled down from the exporter's defaults (50 ms backoff base instead of 500 ms):
with 12% of requests failing, the default backoff would make a million-event run spend most
of its time asleep, without exercising anything more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from _body_faults import BodyFaultProxy, BodyFaults
from _spans import RESOURCE_ATTRIBUTES, tagged_attributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy
from opentelemetry_exporter_altertable.receiver import FaultPlan

API_KEY = "pk_test_soak"
EVENTS_TABLE = "altertable.analytics.events"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class SoakConfig:
    """One soak run's settings; :meth:`quick` scales everything down for tests."""

    events: int = 1_000_000
    seed: int = 1
    error_rate: float = 0.10
    drop_rate: float = 0.02
    retry_after: float = 1.0
    retry_after_rate: float = 0.02
    outage_start: float = 10.0
    outage_seconds: float = 30.0
    outage_action: str = "drop"
    timeout: float = 10.0
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(total=5, backoff_factor=0.05, backoff_max=2.0)
    )
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    db_path: str | None = None
    spool_max_bytes: int | None = None
    """The exporter's spool limit (``None``: its default, 64 MiB)."""
    slow_body_rate: float = 0.03
    stall_rate: float = 0.01
    gzip_retry_rate: float = 0.03
    gzip_environment_rate: float = 0.01
    drain_limit: float = 600.0
    progress_every: float = 0.0
    """Seconds between progress lines on stderr (0: none)."""

    @classmethod
    def quick(cls, **overrides: Any) -> SoakConfig:
        """20,000 events, a 2 s outage from 0.5 s, 1 s export timeout, 10 ms backoff base."""
        settings: dict[str, Any] = {
            "events": 20_000,
            "outage_start": 0.5,
            "outage_seconds": 2.0,
            "timeout": 1.0,
            "retry": RetryPolicy(total=5, backoff_factor=0.01, backoff_max=0.2),
            "drain_limit": 60.0,
        }
        settings.update(overrides)
        return cls(**settings)

    def body_faults(self) -> BodyFaults:
        return BodyFaults(
            slow_rate=self.slow_body_rate,
            stall_rate=self.stall_rate,
            gzip_retry_rate=self.gzip_retry_rate,
            gzip_environment_rate=self.gzip_environment_rate,
            seed=self.seed,
            stall_seconds=self.timeout + 1.0,
        )

    def fault_plan(self) -> FaultPlan:
        outages = ((self.outage_start, self.outage_seconds),) if self.outage_seconds > 0 else ()
        return FaultPlan(
            error_rate=self.error_rate,
            error_status=503,
            retry_after=self.retry_after,
            retry_after_rate=self.retry_after_rate,
            drop_rate=self.drop_rate,
            outages=outages,
            outage_action="drop" if self.outage_action == "drop" else "error",
            seed=self.seed,
        )


@dataclass
class SoakResult:
    """What one run measured (``--json`` writes it as is)."""

    config: dict[str, Any]
    events_ended: int = 0
    handed_to_exporter: int = 0
    sdk_queue_dropped: int = 0
    exports: int = 0
    failed_exports: int = 0
    stored_rows: int = 0
    stored_distinct: int = 0
    stored_out_of_range: int = 0
    lost: int = 0
    duplicated: int = 0
    lost_sample: list[int] = field(default_factory=list)
    duplicated_sample: list[int] = field(default_factory=list)
    spool_files_left: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    body_faults: dict[str, int] = field(default_factory=dict)
    """Answers the proxy broke, by kind (see ``_body_faults``)."""
    receiver_answers: dict[str, int] = field(default_factory=dict)
    exporter_stats: dict[str, Any] = field(default_factory=dict)
    drain_stats: dict[str, Any] = field(default_factory=dict)
    drain_exports: int = 0
    exporter_rss_start_mib: float = 0.0
    exporter_peak_mib: float = 0.0
    receiver_peak_mib: float = 0.0
    produce_s: float = 0.0
    shutdown_s: float = 0.0
    drain_s: float = 0.0
    wall_s: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.events_ended > 0


# ------------------------------------------------------------------------ memory


def _status_mib(name: str) -> float | None:
    """A ``/proc/self/status`` figure (``VmHWM``, ``VmRSS``) in MiB, where Linux has one."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM``, else ``ru_maxrss``."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / _MIB if sys.platform == "darwin" else maxrss / 1024


def rss_mib() -> float:
    current = _status_mib("VmRSS")
    return current if current is not None else peak_rss_mib()


# ------------------------------------------------------------------------ receiver process


def serve_receiver(spec: str) -> int:
    """Child process: run the faulty receiver, answer JSON-line commands from stdin."""
    from opentelemetry_exporter_altertable.receiver import LocalReceiver

    settings = json.loads(spec)
    plan_fields = dict(settings["plan"])
    plan_fields["outages"] = tuple(tuple(window) for window in plan_fields["outages"])
    receiver = LocalReceiver(
        db_path=settings.get("db_path"), api_keys=[API_KEY], faults=FaultPlan(**plan_fields)
    )
    out = sys.stdout

    def reply(status: str, value: Any) -> None:
        out.write(json.dumps([status, value]) + "\n")
        out.flush()

    receiver.start()
    try:
        reply("ok", receiver.port)
        for line in sys.stdin:
            command, argument = json.loads(line)
            if command == "stop":
                break
            try:
                value: Any = None
                if command == "begin" and receiver.faults is not None:
                    receiver.faults.begin()
                elif command == "query":
                    value = [list(row) for row in receiver.query(argument)]
                elif command == "faults":
                    value = receiver.faults.counts() if receiver.faults is not None else {}
                elif command == "answers":
                    value = {f"{p} {s}": n for (p, s), n in sorted(receiver.requests.items())}
                elif command == "memory":
                    value = peak_rss_mib()
                elif command != "begin":
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:
                reply("error", repr(exc))
            else:
                reply("ok", value)
    finally:
        receiver.stop()
    reply("ok", "stopped")
    return 0


class ReceiverProcess:
    """The faulty receiver in a child process (``soak.py --serve-receiver``), over a pipe.

    A plain subprocess rather than ``multiprocessing``: spawning would re-import the caller's
    main module, which a script calling :func:`run_soak` without a main guard cannot survive.
    """

    def __init__(self, plan: FaultPlan, db_path: str | None = None) -> None:
        spec = json.dumps({"plan": asdict(plan), "db_path": db_path})
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-receiver", spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        try:
            self.port: int = self._reply(timeout=120)
        except BaseException:
            self._kill()
            raise
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _reply(self, timeout: float = 600) -> Any:
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the receiver process did not answer within {timeout:g}s")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the receiver process ended (exit {self._process.poll()})")
        status, value = json.loads(line)
        if status != "ok":
            raise RuntimeError(f"receiver process: {value}")
        return value

    def call(self, command: str, argument: Any = None) -> Any:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(json.dumps([command, argument]) + "\n")
        stdin.flush()
        return self._reply()

    def stop(self) -> None:
        """Stop the receiver and wait for its process; kill it if it does not end in time."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError, ValueError, TimeoutError, RuntimeError):
                self.call("stop")
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._kill()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def _kill(self) -> None:
        self._process.kill()
        self._process.wait(10)


# ------------------------------------------------------------------------ exporting side


class CountingExporter(SpanExporter):
    """Counts the spans the ``BatchSpanProcessor`` hands over, then delegates."""

    def __init__(self, inner: AltertableSpanExporter) -> None:
        self.inner = inner
        self.handed = 0
        self.exports = 0
        self.failed_exports = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.handed += len(spans)
        self.exports += 1
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failed_exports += 1
        return result

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _exporter(config: SoakConfig, endpoint: str, spool_dir: str) -> AltertableSpanExporter:
    return AltertableSpanExporter(
        api_key=API_KEY,
        endpoint=endpoint,
        spool_dir=spool_dir,
        spool_max_bytes=config.spool_max_bytes,
        timeout=config.timeout,
        retry=config.retry,
    )


def _produce(
    config: SoakConfig,
    provider: TracerProvider,
    counter: CountingExporter,
    say: Callable[[str], None],
) -> int:
    """End ``config.events`` tagged spans, pacing on the SDK queue; returns how many ended."""
    tracer = provider.get_tracer("shop.checkout", "2.14.1")
    limit = max(1, config.max_queue_size - config.max_export_batch_size)
    started = last_note = time.monotonic()
    for seq in range(config.events):
        while seq - counter.handed >= limit:
            time.sleep(0.001)
        attributes: dict[str, Any] = tagged_attributes(seq)
        attributes["seq"] = seq
        span = tracer.start_span("GET /products/{sku}", kind=SpanKind.SERVER, attributes=attributes)
        span.end()
        if config.progress_every and seq % 1000 == 0:
            now = time.monotonic()
            if now - last_note >= config.progress_every:
                last_note = now
                stats = counter.inner.stats()
                say(
                    f"  {now - started:6.0f}s  ended {seq:>9,}  handed {counter.handed:>9,}  "
                    f"retries {_stat(stats, 'retries'):>6,}  "
                    f"spooled {_stat(stats, 'calls_spooled'):>7,}  "
                    f"replayed {_stat(stats, 'calls_replayed'):>7,}"
                )
    return config.events


def _drain(
    config: SoakConfig, endpoint: str, spool_dir: str
) -> tuple[dict[str, Any], int, int]:
    """Replay the spool with a fresh exporter until it is empty; (stats, exports, files left)."""
    drain = _exporter(config, endpoint, spool_dir)
    exports = 0
    give_up = time.monotonic() + config.drain_limit
    try:
        while True:
            files = _stat(drain.stats(), "spool_files")
            if files == 0 or time.monotonic() >= give_up:
                break
            before = _stat(drain.stats(), "calls_replayed")
            drain.export([])
            exports += 1
            if _stat(drain.stats(), "calls_replayed") == before:
                time.sleep(0.05)  # nothing went through this time: do not spin
        return drain.stats(), exports, files
    finally:
        drain.shutdown()


def _count(receiver: ReceiverProcess, result: SoakResult, events: int) -> None:
    seqs = f"SELECT TRY_CAST(properties->>'seq' AS BIGINT) AS seq FROM {EVENTS_TABLE}"
    rows, distinct, in_range = receiver.call(
        "query",
        f"SELECT count(*), count(DISTINCT seq), "
        f"count(DISTINCT seq) FILTER (WHERE seq >= 0 AND seq < {events}) FROM ({seqs})",
    )[0]
    result.stored_rows = int(rows)
    result.stored_distinct = int(in_range)
    result.stored_out_of_range = int(distinct) - int(in_range)
    result.lost = result.events_ended - result.stored_distinct
    result.duplicated = result.stored_rows - int(distinct)
    if result.lost:
        missing = receiver.call(
            "query",
            f"SELECT range FROM range({events}) WHERE range NOT IN "
            f"(SELECT seq FROM ({seqs}) WHERE seq IS NOT NULL) ORDER BY 1 LIMIT 20",
        )
        result.lost_sample = [int(r[0]) for r in missing]
    if result.duplicated:
        doubled = receiver.call(
            "query",
            f"SELECT seq FROM ({seqs}) GROUP BY seq HAVING count(*) > 1 ORDER BY seq LIMIT 20",
        )
        result.duplicated_sample = [int(r[0]) for r in doubled if r[0] is not None]


def _environment() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "opentelemetry-sdk": version("opentelemetry-sdk"),
        "duckdb": version("duckdb"),
        "exporter": version("opentelemetry-exporter-altertable"),
    }


def run_soak(config: SoakConfig, say: Callable[[str], None] | None = None) -> SoakResult:  # noqa: PLR0915  # the soak's steps in order, read top to bottom
    """Run one soak; the receiver process and the spool directory are gone when it returns."""
    note = say or (lambda _line: None)
    config_dict = asdict(config)
    result = SoakResult(config=config_dict, environment=_environment())
    spool_dir = tempfile.mkdtemp(prefix="altertable-soak-spool-")
    receiver = ReceiverProcess(config.fault_plan(), config.db_path)
    proxy = BodyFaultProxy(receiver.endpoint, config.body_faults())
    try:
        proxy.__enter__()
        endpoint = proxy.endpoint
        exporter = _exporter(config, endpoint, spool_dir)
        counter = CountingExporter(exporter)
        processor = BatchSpanProcessor(
            counter,
            max_queue_size=config.max_queue_size,
            max_export_batch_size=config.max_export_batch_size,
        )
        provider = TracerProvider(resource=Resource.create(RESOURCE_ATTRIBUTES))
        provider.add_span_processor(processor)
        result.exporter_rss_start_mib = rss_mib()
        note(f"receiver on {receiver.endpoint}; producing {config.events:,} events")

        receiver.call("begin")  # outages are timed from here
        started = time.monotonic()
        producer_error: list[BaseException] = []

        def produce() -> None:
            try:
                result.events_ended = _produce(config, provider, counter, note)
            except BaseException as exc:
                producer_error.append(exc)

        producer = threading.Thread(target=produce, name="soak-producer")
        producer.start()
        producer.join()
        if producer_error:
            raise producer_error[0]
        result.produce_s = time.monotonic() - started

        note("producer done; flushing and shutting the provider down")
        flushing = time.monotonic()
        provider.force_flush()
        provider.shutdown()
        result.shutdown_s = time.monotonic() - flushing
        result.handed_to_exporter = counter.handed
        result.sdk_queue_dropped = result.events_ended - counter.handed
        result.exports, result.failed_exports = counter.exports, counter.failed_exports
        result.exporter_stats = exporter.stats()

        note("replaying the spool until it is empty")
        draining = time.monotonic()
        result.drain_stats, result.drain_exports, result.spool_files_left = _drain(
            config, endpoint, spool_dir
        )
        result.drain_s = time.monotonic() - draining
        result.wall_s = time.monotonic() - started
        result.exporter_peak_mib = peak_rss_mib()

        _count(receiver, result, config.events)
        result.faults = receiver.call("faults")
        result.body_faults = dict(proxy.counts)
        result.receiver_answers = receiver.call("answers")
        result.receiver_peak_mib = receiver.call("memory")
    finally:
        proxy.__exit__()
        receiver.stop()
        shutil.rmtree(spool_dir, ignore_errors=True)
    return result


# ------------------------------------------------------------------------ report


def _stat(stats: dict[str, Any], name: str) -> int:
    value = stats.get(name, 0)
    return int(value) if isinstance(value, int) else 0


def format_report(result: SoakResult) -> str:
    """The human-readable report."""
    cfg = result.config
    retry = cfg["retry"]
    faults = result.faults
    ex, dr = result.exporter_stats, result.drain_stats
    rate = result.events_ended / result.wall_s if result.wall_s else 0.0
    outage = faults.get("outage_errors", 0) + faults.get("outage_drops", 0)
    reasons = {**(ex.get("dropped_by_reason") or {}), **(dr.get("dropped_by_reason") or {})}
    lines = [
        f"Altertable soak: {result.events_ended:,} events, seed {cfg['seed']}",
        f"  plan        {cfg['error_rate']:.0%} -> 503 ({cfg['retry_after_rate']:.0%} of them with "
        f"Retry-After: {cfg['retry_after']:g}), {cfg['drop_rate']:.0%} dropped connections, "
        f"outage {cfg['outage_seconds']:g}s from {cfg['outage_start']:g}s ({cfg['outage_action']})",
        f"  exporter    BatchSpanProcessor queue {cfg['max_queue_size']} / batch "
        f"{cfg['max_export_batch_size']}; timeout {cfg['timeout']:g}s; retry total "
        f"{retry['total']}, backoff {retry['backoff_factor']:g}s x2^n "
        f"(max {retry['backoff_max']:g}s)",
        "",
        f"  faults injected       {faults.get('injected', 0):>11,}  "
        f"of {faults.get('requests', 0):,} ingestion requests",
        f"    503                 {faults.get('errors', 0):>11,}  "
        f"({faults.get('retry_after', 0):,} with Retry-After)",
        f"    dropped connection  {faults.get('drops', 0):>11,}",
        f"    outage              {outage:>11,}",
        f"  answers broken        {sum(result.body_faults.values()):>11,}  "
        + ", ".join(f"{n:,} {k}" for k, n in sorted(result.body_faults.items())),
        "",
        f"  events ended          {result.events_ended:>11,}",
        f"  handed to exporter    {result.handed_to_exporter:>11,}  "
        f"(SDK queue drops: {result.sdk_queue_dropped:,})",
        f"  stored, distinct seq  {result.stored_distinct:>11,}",
        f"  stored rows           {result.stored_rows:>11,}",
        f"  LOST                  {result.lost:>11,}"
        + (f"  e.g. seq {result.lost_sample[:10]}" if result.lost_sample else ""),
        f"  duplicated            {result.duplicated:>11,}"
        + (f"  e.g. seq {result.duplicated_sample[:10]}" if result.duplicated_sample else "")
        + "  (at-least-once)",
        "",
        f"  exports               {result.exports:>11,}  "
        f"({result.failed_exports:,} reported FAILURE)",
        f"  requests / retries    {_stat(ex, 'requests'):>11,} / {_stat(ex, 'retries'):,}  "
        f"(+ drain {_stat(dr, 'requests'):,} / {_stat(dr, 'retries'):,})",
        f"  calls spooled         {_stat(ex, 'calls_spooled') + _stat(dr, 'calls_spooled'):>11,}",
        f"  calls replayed        {_stat(ex, 'calls_replayed'):>11,}  while running, "
        f"{_stat(dr, 'calls_replayed'):,} in the final drain ({result.drain_exports} exports)",
        f"  calls dropped         {_stat(ex, 'calls_dropped') + _stat(dr, 'calls_dropped'):>11,}"
        + (f"  {reasons}" if reasons else ""),
        f"  spool files left      {result.spool_files_left:>11,}",
        "",
        f"  wall time             {result.wall_s:>10.1f}s  (produce {result.produce_s:.1f}s, "
        f"flush+shutdown {result.shutdown_s:.1f}s, drain {result.drain_s:.1f}s); "
        f"{rate:,.0f} events/s",
        f"  peak memory           exporting process {result.exporter_peak_mib:,.0f} MiB "
        f"(VmHWM; {result.exporter_rss_start_mib:,.0f} MiB before the first span), "
        f"receiver process {result.receiver_peak_mib:,.0f} MiB",
        f"  environment           {', '.join(f'{k} {v}' for k, v in result.environment.items())}",
        "",
        "RESULT: "
        + (
            "PASS: no event lost"
            if result.passed
            else f"FAIL: {result.lost:,} event(s) lost"
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-receiver"] and len(argv) == 2:
        return serve_receiver(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, help="events to send (1,000,000; 20,000 --quick)")
    parser.add_argument("--outage-seconds", type=float, help="outage length (30; 2 --quick)")
    parser.add_argument("--outage-start", type=float, help="seconds into the run (10; 0.5 --quick)")
    parser.add_argument(
        "--outage-action", choices=("drop", "error"), help="during the outage: drop or 503"
    )
    parser.add_argument("--timeout", type=float, help="exporter timeout, s (10; 1 --quick)")
    parser.add_argument("--seed", type=int, help="fault plan seed (1)")
    parser.add_argument("--db", help="receiver DuckDB file (default: in memory)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--quick", action="store_true", help="small, fast run")
    parser.add_argument("--verbose", action="store_true", help="show the exporter's warnings")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # retries and spooling are the point here, not news
        logging.getLogger("opentelemetry_exporter_altertable").setLevel(logging.ERROR)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

    overrides: dict[str, Any] = {
        name: value
        for name, value in (
            ("events", args.events),
            ("outage_seconds", args.outage_seconds),
            ("outage_start", args.outage_start),
            ("outage_action", args.outage_action),
            ("timeout", args.timeout),
            ("seed", args.seed),
            ("db_path", args.db),
        )
        if value is not None
    }
    config = SoakConfig.quick(**overrides) if args.quick else SoakConfig(**overrides)
    config = replace(config, progress_every=2.0 if args.quick else 10.0)
    if config.events <= 0:
        parser.error("--events must be positive")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_soak(config, say)
    print(format_report(result))
    if args.json:
        payload = {**asdict(result), "passed": result.passed}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
