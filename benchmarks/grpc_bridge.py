"""The bridge's throughput over OTLP/gRPC, beside the same requests over OTLP/HTTP.

    python benchmarks/grpc_bridge.py            # both rows, full size
    python benchmarks/grpc_bridge.py --quick    # a smoke run

The requests are the HTTP bridge row's of ``bench_export.py``: pre-encoded
``ExportTraceServiceRequest`` messages of 512 tagged spans (the same SDK-built spans), sent
one after another by a sender in its own process to a bridge in this process, which maps and
delivers them to the same loopback sink; each answer (OK / 200) comes only once its calls were
accepted. Spans per second, one warm-up round, best and median of the timed rounds.

:class:`GrpcBridgeWindows` is the gRPC row of ``bench_export.py`` (``make bench``): a bridge
and its sender kept for the whole run, one window per call, so the row joins the interleaved
rounds next to the HTTP bridge's. :func:`measure_grpc_bridge` and :func:`measure_http_bridge`
time rounds of both here, alone. Run with ``--client`` this file is the gRPC sender itself
(one channel, unary ``TraceService/Export`` calls, no compression), serving commands on stdin
as ``_bridge_client.py`` does over HTTP: ``N`` sends N requests and answers ``ok``.
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


class _Windows:
    """A bridge front in this process and a sender process fed window sizes on stdin."""

    def __init__(self, server: Any, sender: list[str], bodies: Sequence[bytes]) -> None:
        self._server = server
        self._bodies_file = tempfile.NamedTemporaryFile(suffix=".pickle")  # noqa: SIM115  # closed in close()
        pickle.dump(list(bodies), self._bodies_file)
        self._bodies_file.flush()
        self._sender = subprocess.Popen(
            [sys.executable, *sender, self._bodies_file.name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._sender.stdin is not None and self._sender.stdout is not None
        self._stdin, self._stdout = self._sender.stdin, self._sender.stdout

    def window(self, calls: int) -> None:
        """Send ``calls`` requests (the bodies cycled) and return once each was answered OK."""
        self._stdin.write(f"{calls}\n")
        self._stdin.flush()
        if self._stdout.readline().strip() != "ok":
            raise RuntimeError("the bridge's sender failed (see its stderr above)")

    def close(self) -> None:
        try:
            self._stdin.close()
            self._sender.wait(timeout=60)
        finally:
            self._server.__exit__(None, None, None)
            self._bodies_file.close()


class GrpcBridgeWindows(_Windows):
    """The bridge over OTLP/gRPC delivering to ``sink_url``, timed one window at a time by the
    caller: ``window(n)`` has the sender make ``n`` unary ``TraceService/Export`` calls."""

    def __init__(
        self,
        sink_url: str,
        bodies: Sequence[bytes],
        *,
        max_batch_size: int = 100,
        compression: str | None = None,
    ) -> None:
        from opentelemetry_exporter_altertable.bridge import GrpcBridgeServer

        bridge = _bridge(sink_url, max_batch_size, compression)
        server = GrpcBridgeServer(bridge, port=0).__enter__()
        super().__init__(server, [__file__, "--client", server.target], bodies)


class HttpBridgeWindows(_Windows):
    """The same over OTLP/HTTP, with ``bench_export.py``'s HTTP sender."""

    def __init__(
        self,
        sink_url: str,
        bodies: Sequence[bytes],
        *,
        max_batch_size: int = 100,
        compression: str | None = None,
    ) -> None:
        from opentelemetry_exporter_altertable.bridge import BridgeServer

        bridge = _bridge(sink_url, max_batch_size, compression)
        server = BridgeServer(bridge, port=0).__enter__()
        client = str(Path(__file__).with_name("_bridge_client.py"))
        super().__init__(server, [client, server.endpoint], bodies)


def _rounds(windows: _Windows, per_round: int, rounds: int, spans_per_body: int) -> list[float]:
    try:
        windows.window(per_round)  # warm-up
        rates = []
        for _ in range(rounds):
            start = time.perf_counter()
            windows.window(per_round)
            rates.append(per_round * spans_per_body / (time.perf_counter() - start))
        return rates
    finally:
        windows.close()


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
    windows = GrpcBridgeWindows(
        sink_url, bodies, max_batch_size=max_batch_size, compression=compression
    )
    return _rounds(windows, per_round, rounds, spans_per_body)


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
    windows = HttpBridgeWindows(
        sink_url, bodies, max_batch_size=max_batch_size, compression=compression
    )
    return _rounds(windows, per_round, rounds, spans_per_body)


def client(target: str, path: str) -> int:
    """The sender: unary Export calls over one channel, ``N`` per command line on stdin."""
    import grpc

    with open(path, "rb") as f:
        bodies: list[bytes] = pickle.load(f)
    sent = 0
    with grpc.insecure_channel(target) as channel:
        export = channel.unary_unary(TRACES_METHOD)
        for line in sys.stdin:
            for _ in range(int(line)):
                try:
                    export(bodies[sent % len(bodies)], timeout=60)
                except grpc.RpcError as error:
                    print(f"bridge answered {error.code()}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
                    return 1
                sent += 1
            print("ok", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client(*args.client)

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
