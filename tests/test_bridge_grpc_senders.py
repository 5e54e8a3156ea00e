"""Real OTLP/gRPC senders nobody here wrote: the JS SDK's gRPC exporters, a Collector (rotel)
receiving and exporting over gRPC, ``opentelemetry-instrument`` left at the distro's defaults
against ``serve``; an outage ridden out by the sender's own retries; SIGTERM on both ports."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from faultserver import FaultServer, ok, retry_later
from grpc_support import TRACES_METHOD, call, grpc_span_exporter, running_fronts
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from support import (
    CLI,
    KEY,
    ROOT,
    dead_journal,
    export_and_count,
    free_port,
    rotel_binary,
    rotel_environment,
    run_node_sender,
    start_bridge_process,
    tagged_spans,
    wait_for_port,
)

from opentelemetry_exporter_altertable.receiver import LocalReceiver


def test_the_opentelemetry_js_sdk_sends_otlp_grpc_through_the_bridge() -> None:
    with LocalReceiver() as receiver, running_fronts(receiver.endpoint, sync=True) as fronts:
        done = run_node_sender(fronts.grpc.endpoint, 3, "grpc")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "sent"
        answers = fronts.grpc.answers()
        rows = receiver.query(
            "SELECT event, distinct_id, environment, properties FROM altertable.analytics.events "
            "ORDER BY event, distinct_id"
        )
    assert answers == {("/v1/traces", "OK"): 3, ("/v1/logs", "OK"): 3}
    assert [(e, d, env) for e, d, env, _ in rows] == sorted(
        [("Checkout Completed", f"node-user-{i}", "staging") for i in range(3)]
        + [("coupon applied", f"node-user-{i}", "staging") for i in range(3)]
        + [("cart.abandoned", f"node-user-{i}", "staging") for i in range(3)]
    )
    checkout = json.loads(next(p for e, _, _, p in rows if e == "Checkout Completed"))
    assert checkout["$url"] == "https://shop.example.com/checkout"
    assert checkout["items"] == ["book", "pen"]
    assert checkout["quantities"] == [1, 2]
    abandoned = json.loads(next(p for e, _, _, p in rows if e == "cart.abandoned"))
    assert abandoned["meta"] == {"gift": False}


def test_the_js_sdk_over_grpc_with_the_bridge_token() -> None:
    with FaultServer() as api, running_fronts(api.endpoint, token="js-token") as fronts:
        env = {**os.environ, "BRIDGE_TOKEN": "wrong"}
        run_node_sender(fronts.grpc.endpoint, 1, "grpc", env=env)
        refused = fronts.grpc.answers()
        assert api.requests == []
        env["BRIDGE_TOKEN"] = "js-token"
        done = run_node_sender(fronts.grpc.endpoint, 1, "grpc", env=env)
        assert done.returncode == 0, done.stderr
        events = sorted(t["event"] for t in api.accepted_items("/track"))
    assert refused[("/v1/traces", "UNAUTHENTICATED")] >= 1
    assert events == ["Checkout Completed", "cart.abandoned", "coupon applied"]


# --------------------------------------------------------------------------- a real collector


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_sdk_to_a_collector_to_the_bridge_all_over_grpc(compression: str) -> None:
    with LocalReceiver() as receiver, running_fronts(receiver.endpoint, sync=True) as fronts:
        port = free_port()
        collector = subprocess.Popen(
            [
                rotel_binary(),
                "start",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{port}",
                "--otlp-http-endpoint",
                f"127.0.0.1:{free_port()}",
                "--exporter",
                "otlp",
                "--otlp-exporter-endpoint",
                fronts.grpc.endpoint,
                "--otlp-exporter-protocol",
                "grpc",
                "--otlp-exporter-compression",
                compression,
                "--batch-timeout",
                "100ms",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=rotel_environment(),
        )
        try:
            wait_for_port(port, collector)
            exporter = grpc_span_exporter(f"http://127.0.0.1:{port}")
            count, seqs = export_and_count(exporter, receiver, "Collected")
        finally:
            collector.terminate()
            collector.wait(10)
        answers = fronts.grpc.answers()
    assert seqs == list(range(200))
    assert count == 200
    assert answers[("/v1/traces", "OK")] >= 1
    assert set(answers) == {("/v1/traces", "OK")}  # the collector spoke gRPC, and only that


# --------------------------------------------------------------------------- faults


def test_an_outage_is_ridden_out_by_the_senders_own_grpc_retries() -> None:
    # Altertable refuses everything for 1.5 s. The bridge (no spool) answers UNAVAILABLE with
    # RetryInfo (1 s); the SDK's gRPC exporter waits that long and sends again: nothing lost.
    with (
        FaultServer() as api,
        running_fronts(api.endpoint, timeout=0.3, retry_after=1, sync=True) as fronts,
    ):
        api.set_default(retry_later(503))
        recovery = threading.Timer(1.5, lambda: api.set_default(ok()))
        recovery.start()
        provider = TracerProvider(resource=Resource({"service.name": "outage"}))
        provider.add_span_processor(
            BatchSpanProcessor(grpc_span_exporter(fronts.grpc.endpoint, timeout=30))
        )
        tracer = provider.get_tracer("outage")
        for seq in range(50):
            with tracer.start_as_current_span(
                "work", attributes={"analytics.event": "Outage Survived", "seq": seq}
            ):
                pass
        assert provider.force_flush(30_000)
        provider.shutdown()
        recovery.join()
        seqs = [t["properties"]["seq"] for t in api.accepted_items("/track")]
        answers = fronts.grpc.answers()
    assert sorted(set(seqs)) == list(range(50))  # everything arrived (at least once)
    assert answers[("/v1/traces", "UNAVAILABLE")] >= 1
    assert answers[("/v1/traces", "OK")] >= 1


@pytest.mark.parametrize("journal", ["journaled", "--no-journal"])
def test_sigterm_with_calls_in_flight_on_both_ports_delivers_what_was_accepted(
    journal: str,
) -> None:
    """Without a journal the four calls are still in the bridge's hands (their answers wait on
    the delivery) when SIGTERM comes, so the gRPC front is still up, refusing: a new call hears
    UNAVAILABLE with RetryInfo. Journaled, they were answered already and gRPC's own stop may
    race the new call (UNAVAILABLE, CANCELLED or the caller's deadline): never accepted."""
    flags = ("--no-journal",) if journal == "--no-journal" else ()
    with FaultServer() as api:
        release = threading.Event()
        api.add_rule(lambda request: (release.wait(15), None)[1], "/track")
        process, base, target = start_bridge_process(api.endpoint, "--timeout", "10", *flags)
        body = encode_spans(tagged_spans(5, event="In Flight")).SerializeToString()
        results: list[Any] = []

        def over_http() -> None:
            answer = requests.post(
                f"{base}/v1/traces",
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=30,
            )
            results.append(("http", answer.status_code))

        def over_grpc() -> None:
            results.append(("grpc", call(target, TRACES_METHOD, body, timeout=30).code))

        senders = [threading.Thread(target=t) for t in (over_http, over_http, over_grpc, over_grpc)]
        for sender in senders:
            sender.start()
        assert api.wait_for_requests(4, timeout=15)  # four requests are being delivered
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        while not (line := process.stdout.readline()).startswith("Stopping"):
            assert line, "the bridge exited without stopping cleanly"
        assert process.poll() is None  # handled: it finishes what it accepted
        late = call(target, TRACES_METHOD, body, timeout=5)  # not accepted any more
        release.set()
        for sender in senders:
            sender.join(30)
        out, err = process.communicate(timeout=30)
        tracks = api.accepted_items("/track")
    assert process.returncode == 0, err
    assert sorted(results, key=str) == sorted(
        [("http", 200), ("http", 200), ("grpc", grpc.StatusCode.OK), ("grpc", grpc.StatusCode.OK)],
        key=str,
    )
    if flags:
        assert late.code is grpc.StatusCode.UNAVAILABLE
        assert "the bridge is stopping" in late.details
        assert "google.rpc.retryinfo-bin" in late.trailers
    else:
        assert late.code is not grpc.StatusCode.OK
    assert len(tracks) == 20
    assert "Bridge stopped." in out
    assert KEY not in out + err


def test_a_taken_grpc_port_stops_the_bridge_with_one_clear_line() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = subprocess.run(
            [*CLI, "bridge", "--port", str(free_port()), "--grpc-port", str(taken)],
            env={**os.environ, "OTEL_EXPORTER_ALTERTABLE_API_KEY": KEY},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert f"cannot listen for OTLP/gRPC on 127.0.0.1:{taken}" in done.stderr
    assert "--no-grpc" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_bridge_defaults_to_grpc_on_4317_and_no_grpc_turns_it_off() -> None:
    from opentelemetry_exporter_altertable.cli import build_parser

    args = build_parser().parse_args(["bridge"])
    assert (args.grpc_port, args.no_grpc, args.port) == (4317, False, 4318)
    with FaultServer() as api:
        process, _, _ = start_bridge_process(api.endpoint)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
        port = free_port()
        quiet = subprocess.Popen(
            [*CLI, "bridge", "--port", str(port), "--no-grpc"],
            env={**os.environ, "OTEL_EXPORTER_ALTERTABLE_API_KEY": KEY},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert quiet.stdout is not None
            banner = "".join(quiet.stdout.readline() for _ in range(4))
        finally:
            quiet.send_signal(signal.SIGTERM)
            out, _ = quiet.communicate(timeout=20)
    assert "OTLP/gRPC" not in banner + out


# --------------------------------------------------------------------------- serve's OTLP ports


@contextlib.contextmanager
def _serve(*extra: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """``serve`` on a free port with ``extra`` flags; yields its endpoint and its banner."""
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--db", ":memory:", *extra],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**(env or os.environ), "NO_PROXY": "127.0.0.1"},
    )
    try:
        assert process.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            line = process.stdout.readline()
            assert line, banner + (process.stderr.read() if process.stderr else "")
            banner += line
        yield f"http://127.0.0.1:{port}", banner
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def _events(endpoint: str) -> list[str]:
    answer = requests.post(
        f"{endpoint}/query",
        json={"statement": "SELECT event FROM altertable.analytics.events ORDER BY event"},
        auth=("local", "local"),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return [json.loads(line)[0] for line in answer.text.splitlines()[2:]]


def test_serve_hears_otlp_on_its_otlp_ports_and_says_so() -> None:
    grpc_port, http_port = free_port(), free_port()
    with _serve("--otlp-grpc-port", str(grpc_port), "--otlp-http-port", str(http_port)) as (
        endpoint,
        banner,
    ):
        assert f"OTLP/gRPC:    http://127.0.0.1:{grpc_port}\n" in banner
        assert f"OTLP/HTTP:    http://127.0.0.1:{http_port}\n" in banner
        exporter = grpc_span_exporter(f"http://127.0.0.1:{grpc_port}")
        assert exporter.export(tagged_spans(2, event="Over gRPC")) is SpanExportResult.SUCCESS
        exporter.shutdown()
        from support import otlp_span_exporter

        http = otlp_span_exporter(f"http://127.0.0.1:{http_port}")
        assert http.export(tagged_spans(1, event="Over HTTP")) is SpanExportResult.SUCCESS
        http.shutdown()
        page = requests.get(f"{endpoint}/otlp", timeout=10).json()
        events = _events(endpoint)
    assert events == ["Over HTTP", "Over gRPC", "Over gRPC"]
    assert page == {
        "ports": {
            "grpc": f"http://127.0.0.1:{grpc_port}",
            "http": f"http://127.0.0.1:{http_port}",
        },
        "receiver_port": endpoint,
    }


def test_serve_with_its_otlp_ports_taken_starts_and_says_so_in_one_line_each() -> None:
    with socket.socket() as grpc_holder, socket.socket() as http_holder:
        for holder in (grpc_holder, http_holder):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        grpc_port, http_port = grpc_holder.getsockname()[1], http_holder.getsockname()[1]
        flags = ("--otlp-grpc-port", str(grpc_port), "--otlp-http-port", str(http_port))
        with _serve(*flags) as (endpoint, banner):
            page = requests.get(f"{endpoint}/otlp", timeout=10).json()
            served = requests.get(f"{endpoint}/", timeout=10)
    taken = [line for line in banner.splitlines() if "is taken" in line]
    assert len(taken) == 2
    assert f"port {grpc_port} is taken" in taken[0]
    assert f"port {http_port} is taken" in taken[1]
    assert page["ports"] == {"grpc": None, "http": None}
    assert served.status_code == 200
    assert 'id="otlp"' in served.text


def test_serve_without_otlp_ports_opens_none() -> None:
    with _serve("--no-otlp-ports") as (endpoint, banner):
        page = requests.get(f"{endpoint}/otlp", timeout=10).json()
    assert "OTLP/gRPC" not in banner
    assert page["ports"] == {}


#: Held while a test uses the standard OTLP ports themselves: suites on one machine take turns.
_STANDARD_PORTS_LOCK = Path(tempfile.gettempdir()) / "altertable-otel-standard-otlp-ports.lock"


@contextlib.contextmanager
def _standard_ports() -> Iterator[None]:
    with _STANDARD_PORTS_LOCK.open("a") as lock:
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "another suite held the standard OTLP ports"
                time.sleep(0.5)
        try:
            for port in (4317, 4318):
                with socket.socket() as probe:
                    try:
                        probe.bind(("127.0.0.1", port))
                    except OSError:
                        pytest.skip(f"port {port} is held by another program on this machine")
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


APP = """
from opentelemetry import trace
tracer = trace.get_tracer("zero-config")
for seq in range(3):
    with tracer.start_as_current_span(
        "signup", attributes={"analytics.event": "Signed Up", "user.id": f"u-{seq}"}
    ):
        pass
print("done")
"""


def test_opentelemetry_instrument_left_at_the_distros_defaults_reaches_serve(
    tmp_path: Path,
) -> None:
    # No endpoint, no protocol, no exporter set: the distro picks OTLP over gRPC to
    # localhost:4317, and serve hears it there.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    app = tmp_path / "app.py"
    app.write_text(APP)
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    with _standard_ports(), _serve(env=env) as (endpoint, banner):
        assert "OTLP/gRPC:    http://127.0.0.1:4317 (an SDK left at its defaults" in banner
        assert "OTLP/HTTP:    http://127.0.0.1:4318 (an SDK left at its defaults" in banner
        done = subprocess.run(
            [str(instrument), sys.executable, str(app)],
            env={**env, "OTEL_SERVICE_NAME": "zero-config", "NO_PROXY": "127.0.0.1"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "done"
        deadline = time.monotonic() + 10
        while len(events := _events(endpoint)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert events == ["Signed Up"] * 3


def test_serve_beyond_loopback_keeps_the_standard_ports_closed() -> None:
    # OTLP senders carry no Altertable key: open beyond loopback, these ports would let anyone
    # write past serve's --api-key. Nothing is bound to find that out.
    import argparse
    from types import SimpleNamespace

    from opentelemetry_exporter_altertable.bridge._cli import open_otlp_ports

    receiver: Any = SimpleNamespace(host="0.0.0.0", endpoint="http://127.0.0.1:15001")
    flags = argparse.Namespace(no_otlp_ports=False, otlp_grpc_port=4317, otlp_http_port=4318)
    ports = open_otlp_ports(receiver, "pk_test", flags)
    ports.stop()
    assert ports.listening == {}
    assert ports.lines == [
        "  OTLP ports:   off beyond loopback (OTLP senders carry no API key); "
        "use http://127.0.0.1:15001/v1/traces"
    ]


def _signal_thread(pid: int, tid: int, signum: int) -> None:
    """``tgkill``: a signal to one thread of ``pid``, as the kernel may deliver SIGTERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = {"x86_64": 234, "aarch64": 131}[platform.machine()]
    if libc.syscall(sys_tgkill, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


def test_sigterm_handed_to_a_grpc_thread_still_stops_the_bridge() -> None:
    with FaultServer() as api:
        process, _, target = start_bridge_process(api.endpoint)
        try:
            body = encode_spans(tagged_spans(1, event="Probe")).SerializeToString()
            assert call(target, TRACES_METHOD, body, timeout=10).code is grpc.StatusCode.OK
            threads = sorted(int(t) for t in os.listdir(f"/proc/{process.pid}/task"))
            other = next(t for t in threads if t != process.pid)
            _signal_thread(process.pid, other, signal.SIGTERM)
            out, err = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, err
    assert "Bridge stopped." in out


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_serve_ignores_the_bridge_s_token_and_the_application_s_spool(tmp_path: Path) -> None:
    # A developer's shell set for the bridge and for a real application: serve must still take
    # OTLP from SDKs left at their defaults (no token), and must not pull the application's
    # dead journals (owed to production) into its local store.
    spool = tmp_path / "spool"
    dead_journal(spool, 5)
    before = _snapshot(spool)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this checkout's package, whatever is installed
        "ALTERTABLE_BRIDGE_TOKEN": "bridge-only-token",
        "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR": str(spool),
    }
    grpc_port, http_port = free_port(), free_port()
    flags = ("--otlp-grpc-port", str(grpc_port), "--otlp-http-port", str(http_port))
    with _serve(*flags, env=env) as (endpoint, _):
        from support import otlp_span_exporter

        for base, event in ((endpoint, "Own Port"), (f"http://127.0.0.1:{http_port}", "HTTP")):
            exporter = otlp_span_exporter(base)
            assert exporter.export(tagged_spans(1, event=event)) is SpanExportResult.SUCCESS
            exporter.shutdown()
        grpc_exporter = grpc_span_exporter(f"http://127.0.0.1:{grpc_port}")
        assert grpc_exporter.export(tagged_spans(1, event="gRPC")) is SpanExportResult.SUCCESS
        grpc_exporter.shutdown()
        time.sleep(0.5)  # what a recovery would have delivered by now
        events = _events(endpoint)
    assert events == ["HTTP", "Own Port", "gRPC"]  # and no "Left" from the dead journal
    assert _snapshot(spool) == before
