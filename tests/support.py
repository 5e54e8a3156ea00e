"""What the tests share besides fixtures: keys, quick retries, spans, log filters, a bridge.

Fixtures pytest injects live in ``conftest.py`` (which builds on this module); everything a test
imports by name lives here, so no test imports from ``conftest``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry._logs import LogRecord
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanKind
from otel_builders import MS_NS, SECOND_NS, T0_NS, finished_spans, span_context

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy
from opentelemetry_exporter_altertable._spool import Spool
from opentelemetry_exporter_altertable.bridge import BridgeServer, create_bridge
from opentelemetry_exporter_altertable.receiver import LocalReceiver

#: The package's logger name, the parent of every module's logger.
PACKAGE = "opentelemetry_exporter_altertable"

#: A key no log line or exception may ever show.
FAKE_API_KEY = "pk_test_SECRET-4f1c9d2e7a-NEVER-LOG-ME"

#: The repository's root, and its examples.
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: The zero-code launcher of the running interpreter's environment.
INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
#: The longest a test waits for a child process.
SUBPROCESS_TIMEOUT = 60.0

#: A timestamp as the API takes it: ISO 8601, milliseconds, UTC.
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

#: The ``make_exporter`` fixture: builds a span exporter aimed at the test's server.
MakeExporter = Callable[..., AltertableSpanExporter]
#: The ``spans`` fixture: :func:`tagged_spans`.
Spans = Callable[..., list[ReadableSpan]]


def fast_retry() -> RetryPolicy:
    """Quick, jitter-free retries: exact attempt counts, tests that take milliseconds.

    Built when asked for, not at import: under ``make mutation`` a mutated ``RetryPolicy``
    must fail a test, not the loading of this file.
    """
    return RetryPolicy(total=3, backoff_factor=0.01, backoff_max=0.05, jitter=0)


def tagged_spans(
    count: int, *, start: int = 0, event: str = "Order Placed", **attributes: Any
) -> list[ReadableSpan]:
    """``count`` finished spans tagged ``analytics.event``; property ``seq`` numbers them."""
    specs = [
        (
            f"span-{seq}",
            {"analytics.event": event, "user.id": f"user-{seq % 7}", "seq": seq, **attributes},
            (),
            T0_NS - SECOND_NS,
            T0_NS + seq,
        )
        for seq in range(start, start + count)
    ]
    return finished_spans(specs, resource={"service.name": "shop"})


def seqs(items: list[Any]) -> list[int]:
    """The ``seq`` property of each item (as :func:`tagged_spans` numbers them), in order."""
    return [item["properties"]["seq"] for item in items]


def package_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The package's own records at ``level`` and above."""
    return [r for r in caplog.records if r.name.startswith(PACKAGE) and r.levelno >= level]


def spooled_items(directory: Path) -> int:
    """Items waiting in the spool at ``directory`` (read without taking them)."""
    return sum(len(items) for items in spooled_calls(directory).values())


def spooled_calls(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """The calls waiting in the spool at ``directory``, by endpoint (read without taking them)."""
    spool = Spool(directory)
    claims = []
    calls: dict[str, list[dict[str, Any]]] = {}
    try:
        while (claim := spool.claim()) is not None:
            claims.append(claim)
            for endpoint, items in claim.calls.items():
                calls.setdefault(endpoint, []).extend(items)
        return calls
    finally:
        for claim in claims:
            claim.release()


# ---------------------------------------------------------------------------- loopback


def answered(receiver: LocalReceiver, path: str, expected: int, timeout: float = 2.0) -> int:
    """Requests the receiver answered on ``path`` with 200, once it has counted ``expected``.

    The receiver counts a request just after writing its response, so right after an export
    the count may still lag by one: wait (briefly) for it to settle.
    """
    deadline = time.monotonic() + timeout
    while receiver.requests[(path, 200)] < expected and time.monotonic() < deadline:
        time.sleep(0.005)
    return receiver.requests[(path, 200)]


def free_port() -> int:
    """A loopback port that was free a moment ago: one to listen on, or one where nothing
    listens (a refused connection)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wire_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, by hand (for messages protobuf would not build)."""
    size, varint = len(payload), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            return bytes((number << 3 | 2,)) + bytes(varint) + payload


@contextmanager
def refusing_endpoint() -> Iterator[str]:
    """A loopback URL that refuses connections: bound (so no one else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------------------- the spool's log

SPOOL_LOGGER = f"{PACKAGE}._spool"


class Records(logging.Handler):
    """Every record the spool's logger emits, whatever propagation the package configures."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@contextlib.contextmanager
def spool_log() -> Iterator[Records]:
    """Capture the spool's records at DEBUG and up for the block, then restore the logger."""
    handler = Records()
    logger = logging.getLogger(SPOOL_LOGGER)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: no process has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def dead_journal(directory: Path, count: int) -> None:
    """A process journals ``count`` track calls (``seq`` 0..count-1) and dies unretired."""
    code = (
        "import os, sys\n"
        "from opentelemetry_exporter_altertable._journal import Journal\n"
        "j = Journal(sys.argv[1], max_bytes=1 << 24, meta={'before_send': False})\n"
        "with j.lock:\n"
        "    assert j.append_calls({'track': [{'event': 'Left', 'distinct_id': 'u', "
        "'environment': 'production', 'properties': {'seq': n, 'pad': 'x' * 200}} "
        "for n in range(int(sys.argv[2]))]})\n"
        "os._exit(0)\n"
    )
    directory.mkdir(mode=0o700, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(directory), str(count)], check=True, timeout=60)


# ---------------------------------------------------------------------------- the bridge

#: The key the bridge tests' bridges use.
KEY = "pk_test_bridge-key-NEVER-IN-AN-ANSWER"


RESOURCE = {
    "service.name": "checkout",
    "service.version": "2.4.1",
    "deployment.environment.name": "staging",
    "host.name": "web-1",
}


@contextmanager
def running_bridge(endpoint: str, **settings: Any) -> Iterator[BridgeServer]:
    """A bridge on a free port delivering to ``endpoint`` (short timeout, quick retries)."""
    max_in_flight = settings.pop("max_in_flight", 8)
    server = BridgeServer(
        create_bridge(**bridge_options(endpoint, **settings)), port=0, max_in_flight=max_in_flight
    )
    with server:
        yield server


def sample_spans(count: int = 3) -> list[ReadableSpan]:
    """Spans exercising every rule the bridge must carry: kinds, events, identity, values."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ALWAYS_ON, resource=Resource(RESOURCE), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.bridge", "1.0")
    try:
        for seq in range(count):
            start = T0_NS + seq * SECOND_NS
            server = tracer.start_span(
                "GET /cart",
                kind=SpanKind.SERVER,
                start_time=start,
                attributes={
                    "analytics.event": "Cart Viewed",
                    "user.id": f"user-{seq}",
                    "user.email": f"u{seq}@example.com",
                    "http.request.method": "GET",
                    "url.scheme": "https",
                    "server.address": "shop.example.com",
                    "url.path": "/cart",
                    "url.query": "utm_source=news&token=secret",
                    "user_agent.original": "Mozilla/5.0",
                    "client.address": "203.0.113.9",
                    "http.response.status_code": 200,
                    "seq": seq,
                    "ratio": 0.25 + seq,
                    "flag": seq % 2 == 0,
                    "tags": ("a", "b"),
                    "counts": (1, 2, 3),
                    "analytics.properties.plan": "pro",
                    "code.function": "cart_view",
                },
            )
            server.add_event(
                "item added",
                {"analytics.event": True, "sku": f"sku-{seq}", "price": 9.5},
                timestamp=start + 10 * MS_NS,
            )
            server.add_event("not tagged", {"x": 1}, timestamp=start + 20 * MS_NS)
            server.end(end_time=start + 50 * MS_NS)
            client = tracer.start_span(
                "charge",
                kind=SpanKind.CLIENT,
                start_time=start + 60 * MS_NS,
                attributes={
                    "analytics.event": "Payment Sent",
                    "analytics.distinct_id": f"user-{seq}",
                    "analytics.alias": f"customer-{seq}",
                    "amount": 1999,
                },
            )
            client.end(end_time=start + 90 * MS_NS)
            plain = tracer.start_span("db.query", start_time=start, attributes={"db": "pg"})
            plain.end(end_time=start + 5 * MS_NS)
        return list(exporter.get_finished_spans())
    finally:
        provider.shutdown()


def sample_logs(count: int = 3) -> list[ReadableLogRecord]:
    """Log records with ``event_name``, a dict body, span context, and some untagged ones."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=Resource(RESOURCE), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("tests.bridge.logs")
    try:
        for seq in range(count):
            ctx = trace.set_span_in_context(
                NonRecordingSpan(span_context(0xABC0 + seq, 0xDE0 + seq)), Context()
            )
            logger.emit(
                LogRecord(
                    timestamp=T0_NS + seq * SECOND_NS,
                    observed_timestamp=T0_NS + seq * SECOND_NS + MS_NS,
                    context=ctx,
                    body={"order_id": f"o-{seq}", "lines": [1, 2], "meta": {"gift": True}},
                    attributes={
                        "analytics.event": True,
                        "user.id": f"user-{seq}",
                        "channel": "web",
                    },
                    event_name="order.placed",
                )
            )
            logger.emit(
                LogRecord(
                    timestamp=None,
                    observed_timestamp=T0_NS + seq * SECOND_NS + 2 * MS_NS,
                    context=Context(),
                    body="plain text line",
                    attributes={"analytics.event": "Signed In", "user.id": f"user-{seq}"},
                )
            )
            logger.emit(
                LogRecord(
                    timestamp=T0_NS,
                    observed_timestamp=T0_NS,
                    context=Context(),
                    body="noise",
                    attributes={"level": "debug"},
                )
            )
        return list(exporter.get_finished_logs())
    finally:
        provider.shutdown()


def otlp_span_exporter(base: str, **kwargs: Any) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=f"{base}/v1/traces", **kwargs)


def otlp_log_exporter(base: str, **kwargs: Any) -> OTLPLogExporter:
    return OTLPLogExporter(endpoint=f"{base}/v1/logs", **kwargs)


def export_and_count(
    exporter: Any, receiver: LocalReceiver, event: str, total: int = 200, batch: int = 50
) -> tuple[int, list[int]]:
    """Export ``total`` tagged spans named ``event`` in batches through ``exporter``, wait (20 s
    at most) until the receiver holds them all; the rows stored, and their distinct ``seq``."""
    spans = tagged_spans(total, event=event)
    for start in range(0, total, batch):
        assert exporter.export(spans[start : start + batch]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    deadline = time.monotonic() + 20
    while True:
        (count,) = receiver.query(
            f"SELECT count(*) FROM altertable.analytics.events WHERE event = '{event}'"
        )[0]
        if count >= total or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    seqs = receiver.query(
        "SELECT DISTINCT CAST(json_extract(properties, '$.seq') AS INTEGER) AS s "
        "FROM altertable.analytics.events ORDER BY s"
    )
    return count, [s for (s,) in seqs]


def stored_rows(receiver: LocalReceiver) -> list[tuple[Any, ...]]:
    """Every stored event, properties parsed, in a stable order (to compare two paths)."""
    rows = receiver.query(
        "SELECT event, timestamp, distinct_id, anonymous_id, device_id, session_id, "
        "environment, properties FROM altertable.analytics.events "
        "ORDER BY timestamp, event, properties"
    )
    return [(*row[:-1], json.loads(row[-1])) for row in rows]


def stored_identities(receiver: LocalReceiver) -> list[tuple[Any, ...]]:
    """Every stored identity, traits parsed, by distinct id."""
    rows = receiver.query(
        "SELECT environment, distinct_id, traits, distinct_ids "
        "FROM altertable.analytics.identities ORDER BY distinct_id"
    )
    return [(env, did, json.loads(traits), ids) for env, did, traits, ids in rows]


def bridge_options(endpoint: str, **settings: Any) -> dict[str, Any]:
    """``create_bridge``'s arguments for a test bridge: the test key, a short timeout and
    quick retries, overridden by ``settings``."""
    options: dict[str, Any] = {
        "api_key": KEY,
        "endpoint": endpoint,
        "timeout": 2.0,
        "retry": fast_retry(),
    }
    options.update(settings)
    return options


NODE_DIR = ROOT / "tests" / "node"


def run_node_sender(
    endpoint: str, count: int, *protocol: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tests/node/send.js``: the OpenTelemetry JS SDK (pinned in ``tests/node``, installed
    by ``make node-otel``) sending ``count`` rounds of telemetry to ``endpoint``; ``protocol``
    is empty for OTLP/HTTP JSON or ``"grpc"``."""
    node = shutil.which("node")
    assert node is not None, "node is needed (v20 or newer)"
    assert (NODE_DIR / "node_modules" / "@opentelemetry").is_dir(), (
        "the JS SDK is not installed: run `make node-otel`"
    )
    return subprocess.run(
        [node, "send.js", endpoint, str(count), *protocol],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------------------- processes


#: ``altertable-otel`` as the running interpreter runs it.
CLI = (sys.executable, "-m", "opentelemetry_exporter_altertable")


def wait_for_port(port: int, process: subprocess.Popen[str], seconds: float = 20) -> None:
    """Return once ``process`` accepts connections on loopback ``port`` (fail if it dies)."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the process did not start listening"
            time.sleep(0.05)


def rotel_binary() -> str:
    """The rotel collector agent (a real OTLP collector, shipped in the ``rotel`` wheel)."""
    import rotel

    path = Path(rotel.__file__).parent / "rotel-agent"
    assert path.is_file(), "the rotel package ships its collector as rotel/rotel-agent"
    return str(path)


def rotel_environment() -> dict[str, str]:
    """The agent links the libpython of the interpreter its wheel is for. A system Python
    has it on the loader's path; pyenv's builds keep it in their own LIBDIR (found by
    Python's RPATH, not by other binaries), so it is put on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def start_bridge_process(endpoint: str, *extra: str) -> tuple[subprocess.Popen[str], str, str]:
    """``altertable-otel bridge`` in its own process, delivering to ``endpoint`` with the test
    key, on free ports (never the default 4317 and 4318), once its banner is out: the process,
    its HTTP base URL and its gRPC target (``""`` with ``--no-grpc``)."""
    port = free_port()
    grpc_port = 0 if "--no-grpc" in extra else free_port()
    ports = ["--port", str(port)] + (["--grpc-port", str(grpc_port)] if grpc_port else [])
    env = {
        **os.environ,
        "OTEL_EXPORTER_ALTERTABLE_API_KEY": KEY,
        "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": endpoint,
        "NO_PROXY": "127.0.0.1",
    }
    process = subprocess.Popen(
        [*CLI, "bridge", *ports, *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    banner, last = "", "gRPC senders:" if grpc_port else "  senders:"
    while last not in banner:
        line = process.stdout.readline()
        assert line, banner + (process.stderr.read() if process.stderr else "")
        banner += line
    assert banner.startswith(f"Altertable OTLP bridge listening on http://127.0.0.1:{port}")
    if grpc_port:
        assert f"OTLP/gRPC:     http://127.0.0.1:{grpc_port}" in banner
    return process, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}" if grpc_port else ""
