"""Real senders in front of the bridge: the JS SDK (OTLP JSON), a Collector (rotel), outages,
and the bridge as its own process stopped by SIGTERM with requests in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import requests
from faultserver import FaultServer, retry_later
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from support import (
    CLI,
    KEY,
    export_and_count,
    free_port,
    otlp_log_exporter,
    otlp_span_exporter,
    rotel_binary,
    rotel_environment,
    run_node_sender,
    running_bridge,
    start_bridge_process,
    tagged_spans,
    wait_for_port,
)

from opentelemetry_exporter_altertable.receiver import FaultPlan, LocalReceiver


def _events(receiver: LocalReceiver) -> list[tuple[Any, ...]]:
    return receiver.query(
        "SELECT event, distinct_id, environment, properties FROM altertable.analytics.events "
        "ORDER BY event, distinct_id"
    )


def test_the_opentelemetry_js_sdk_sends_otlp_json_through_the_bridge() -> None:
    with LocalReceiver() as receiver, running_bridge(receiver.endpoint, sync=True) as bridge:
        done = run_node_sender(bridge.endpoint, 3)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "sent"
        answers = bridge.bridge.answers()
        rows = _events(receiver)
        identities = receiver.query(
            "SELECT distinct_id, traits FROM altertable.analytics.identities ORDER BY 1"
        )
    # Every request came as OTLP JSON and was accepted.
    assert answers[("/v1/traces", "json", 200)] == 3
    assert answers[("/v1/logs", "json", 200)] == 3
    assert sum(answers.values()) == 6
    events = [(event, did, env) for event, did, env, _ in rows]
    assert events == sorted(
        [("Checkout Completed", f"node-user-{i}", "staging") for i in range(3)]
        + [("coupon applied", f"node-user-{i}", "staging") for i in range(3)]
        + [("cart.abandoned", f"node-user-{i}", "staging") for i in range(3)]
    )
    checkout = json.loads(next(p for e, d, _, p in rows if e == "Checkout Completed"))
    assert checkout["$url"] == "https://shop.example.com/checkout"
    assert checkout["$ip"] == "198.51.100.7"
    assert checkout["$release"] == "7.1.0"
    assert checkout["items"] == ["book", "pen"]
    assert checkout["quantities"] == [1, 2]
    assert checkout["paid"] is True
    assert checkout["total"] == 12.5
    assert len(checkout["otel.trace_id"]) == 32
    abandoned = json.loads(next(p for e, d, _, p in rows if e == "cart.abandoned"))
    assert abandoned["cart_id"].startswith("c-")
    assert abandoned["meta"] == {"gift": False}
    assert [did for did, _ in identities] == [f"node-user-{i}" for i in range(3)]



def test_sdk_to_a_real_collector_to_the_bridge_all_events_arrive(tmp_path: Path) -> None:
    with LocalReceiver() as receiver, running_bridge(receiver.endpoint, sync=True) as bridge:
        port = free_port()
        collector = subprocess.Popen(
            [
                rotel_binary(),
                "start",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{free_port()}",
                "--otlp-http-endpoint",
                f"127.0.0.1:{port}",
                "--exporter",
                "otlp",
                "--otlp-exporter-endpoint",
                bridge.endpoint,
                "--otlp-exporter-protocol",
                "http",
                "--batch-timeout",
                "100ms",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=rotel_environment(),
        )
        try:
            wait_for_port(port, collector)  # ready once its OTLP/HTTP port accepts
            exporter = otlp_span_exporter(f"http://127.0.0.1:{port}")
            count, seqs = export_and_count(exporter, receiver, "Collected")
        finally:
            collector.terminate()
            collector.wait(10)
    assert seqs == list(range(200))
    assert count == 200
    assert sum(n for (path, _, status), n in bridge.bridge.answers().items() if status == 200)


def test_altertable_down_for_a_while_the_senders_retries_deliver_everything() -> None:
    # The first 4 ingestion requests are refused (503): the bridge answers 503 + Retry-After
    # (no spool), the SDK's batch processor exporter retries, nothing is lost.
    plan = FaultPlan(outages=((0.0, 1.5),))
    with (
        LocalReceiver(faults=plan) as receiver,
        running_bridge(receiver.endpoint, timeout=0.3, retry_after=1, sync=True) as bridge,
    ):
        provider = TracerProvider(resource=Resource({"service.name": "outage"}))
        provider.add_span_processor(
            BatchSpanProcessor(otlp_span_exporter(bridge.endpoint, timeout=30))
        )
        tracer = provider.get_tracer("outage")
        for seq in range(50):
            with tracer.start_as_current_span(
                "work", attributes={"analytics.event": "Outage Survived", "seq": seq}
            ):
                pass
        provider.force_flush(30_000)
        provider.shutdown()
        rows = receiver.query(
            "SELECT CAST(json_extract(properties, '$.seq') AS INTEGER) AS s "
            "FROM altertable.analytics.events ORDER BY s"
        )
        answers = bridge.bridge.answers()
    seqs = [s for (s,) in rows]
    assert sorted(set(seqs)) == list(range(50))  # everything arrived (at least once)
    assert answers[("/v1/traces", "protobuf", 503)] >= 1
    assert answers[("/v1/traces", "protobuf", 200)] >= 1


def test_sigterm_with_requests_in_flight_delivers_what_was_accepted() -> None:
    with FaultServer() as api:
        release = threading.Event()
        api.add_rule(lambda request: (release.wait(10), None)[1], "/track")
        process, base, _ = start_bridge_process(api.endpoint, "--timeout", "10")
        body = encode_spans(tagged_spans(5, event="In Flight")).SerializeToString()
        statuses: list[int] = []

        def send() -> None:
            answer = requests.post(
                f"{base}/v1/traces",
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=30,
            )
            statuses.append(answer.status_code)

        senders = [threading.Thread(target=send) for _ in range(3)]
        for sender in senders:
            sender.start()
        assert api.wait_for_requests(3, timeout=10)  # three requests are being delivered
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        while not (line := process.stdout.readline()).startswith("Stopping"):
            assert line, "the bridge exited without stopping cleanly"
        assert process.poll() is None  # the signal is handled; it finishes what it accepted
        release.set()
        for sender in senders:
            sender.join(20)
        out, err = process.communicate(timeout=20)
        out = line + out
        tracks = api.accepted_items("/track")
    assert process.returncode == 0, err
    assert statuses == [200, 200, 200]
    assert len(tracks) == 15
    assert "Bridge stopped." in out
    assert KEY not in out + err


def test_after_sigterm_new_requests_are_refused_and_nothing_is_lost() -> None:
    with FaultServer() as api:
        api.set_default(retry_later(503))
        process, base, _ = start_bridge_process(api.endpoint, "--timeout", "0.5", "--no-journal")
        body = encode_spans(tagged_spans(2)).SerializeToString()
        answer = requests.post(
            f"{base}/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert answer.status_code == 503  # not delivered, no spool: the sender keeps it
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert process.returncode == 0


def test_serve_accepts_otlp_into_its_own_store(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--db", ":memory:", "--no-otlp-ports"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )
    try:
        assert process.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            banner += line
        assert f"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{port}" in banner
        base = f"http://127.0.0.1:{port}"
        spans_exporter = otlp_span_exporter(base)
        logs_exporter = otlp_log_exporter(base)
        from support import sample_logs, sample_spans

        assert spans_exporter.export(sample_spans(1)) is SpanExportResult.SUCCESS
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        assert logs_exporter.export(sample_logs(1)) is LogRecordExportResult.SUCCESS
        answer = requests.post(
            f"{base}/query",
            json={"statement": "SELECT event FROM altertable.analytics.events ORDER BY event"},
            auth=("local", "local"),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        rows = [json.loads(line) for line in answer.text.splitlines()[2:]]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert sorted(r[0] for r in rows) == sorted(
        ["Cart Viewed", "item added", "Payment Sent", "order.placed", "Signed In"]
    )
