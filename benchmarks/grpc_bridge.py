"""The bridge's throughput over OTLP/gRPC, beside the same requests over OTLP/HTTP.

    python benchmarks/grpc_bridge.py            # both rows, full size (as ``make bench``)
    python benchmarks/grpc_bridge.py --quick    # a smoke run

The requests are the HTTP bridge row's of ``bench_export.py``: pre-encoded
``ExportTraceServiceRequest`` messages of 512 tagged spans (the same SDK-built spans), sent
one after another by a sender in its own process to a bridge in this process, which maps and
delivers them to the same loopback sink; each answer (OK / 200) comes only once its calls were
accepted. Spans per second, one warm-up round, best and median of the timed rounds.

:func:`measure_grpc_bridge` is the row for ``bench_export.py``: it takes the sink's URL and the
encoded requests and returns the rates of each round. Run with ``--client`` this file is the
gRPC sender itself (one channel, unary ``TraceService/Export`` calls, no compression).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BATCH = 512
API_KEY = "pk_test_benchmark"
ENVIRONMENT = "production"
TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _bridge(sink_url: str, max_batch_size: int, compression: str | None) -> Any:
    from opentelemetry_exporter_altertable.bridge import create_bridge

    extra: dict[str, Any] = {"compression": compression} if compression else {}
    return create_bridge(
        api_key=API_KEY, endpoint=sink_url, environment=ENVIRONMENT,
        max_batch_size=max_batch_size, **extra,
    )  # fmt: skip


def _run_sender(args: list[str]) -> list[float]:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"sender failed: {done.stderr[-500:]}")
    rates: list[float] = json.loads(done.stdout)
    return rates


def measure_grpc_bridge(
    sink_url: str,
    bodies: Sequence[bytes],
    per_round: int,
    rounds: int,
    spans_per_body: int = BATCH,
    *,
    max_batch_size: int = 100,
    compression: str | None = None,
) -> list[float]:
    """Spans per second of each timed round: ``per_round`` calls of ``bodies`` (cycled) to
    ``TraceService/Export`` on a bridge in this process delivering to ``sink_url``."""
    from opentelemetry_exporter_altertable.bridge import GrpcBridgeServer

    bridge = _bridge(sink_url, max_batch_size, compression)
    with tempfile.NamedTemporaryFile(suffix=".pickle") as f, GrpcBridgeServer(
        bridge, port=0
    ) as server:
        pickle.dump(list(bodies), f)
        f.flush()
        return _run_sender([__file__, "--client", server.target, f.name, str(per_round),
                            str(rounds), str(spans_per_body)])  # fmt: skip


def measure_http_bridge(
    sink_url: str,
    bodies: Sequence[bytes],
    per_round: int,
    rounds: int,
    spans_per_body: int = BATCH,
    *,
    max_batch_size: int = 100,
    compression: str | None = None,
) -> list[float]:
    """The same over OTLP/HTTP, with ``bench_export.py``'s own HTTP sender."""
    from opentelemetry_exporter_altertable.bridge import BridgeServer

    bridge = _bridge(sink_url, max_batch_size, compression)
    client = Path(__file__).with_name("_bridge_client.py")
    with tempfile.NamedTemporaryFile(suffix=".pickle") as f, BridgeServer(bridge, port=0) as server:
        pickle.dump(list(bodies), f)
        f.flush()
        return _run_sender([str(client), server.endpoint, f.name, str(per_round), str(rounds),
                            str(spans_per_body)])  # fmt: skip


def client(target: str, path: str, per_round: int, rounds: int, spans: int) -> int:
    """The sender: unary Export calls over one channel, one warm-up round, rates as JSON."""
    import grpc

    with open(path, "rb") as f:
        bodies: list[bytes] = pickle.load(f)
    rates = []
    with grpc.insecure_channel(target) as channel:
        export = channel.unary_unary(TRACES_METHOD)
        for round_number in range(rounds + 1):
            start = time.perf_counter()
            for k in range(per_round):
                try:
                    export(bodies[k % len(bodies)], timeout=60)
                except grpc.RpcError as error:
                    print(f"bridge answered {error.code()}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
                    return 1
            if round_number:  # the first round warms up
                rates.append(per_round * spans / (time.perf_counter() - start))
    print(json.dumps(rates))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        target, path, per_round, rounds, spans = args.client
        return client(target, path, int(per_round), int(rounds), int(spans))

    sys.path.insert(0, str(Path(__file__).parent))
    from _sink import ProcessSink
    from _spans import batches, build_spans
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    per_round, rounds = (4, 3) if args.quick else (40, 5)
    pool = batches(build_spans(BATCH * 4, tagged=True), BATCH)
    bodies = [encode_spans(batch).SerializeToString() for batch in pool]
    rows: dict[str, list[float]] = {}
    with ProcessSink() as sink:
        rows["bridge over HTTP"] = measure_http_bridge(sink.url, bodies, per_round, rounds)
        rows["bridge over gRPC"] = measure_grpc_bridge(sink.url, bodies, per_round, rounds)
    size = sum(len(b) for b in bodies) // len(bodies)
    print(f"OTLP protobuf requests of {BATCH} tagged spans ({size:,} B), {per_round} per round, "
          f"{rounds} rounds, sender in its own process")  # fmt: skip
    print(f"{'':20} {'best spans/s':>14} {'median spans/s':>16}")
    for name, rates in rows.items():
        print(f"{name:20} {max(rates):>14,.0f} {statistics.median(rates):>16,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
