"""Attacks on the two listeners (``serve`` and ``bridge``), on loopback, with their cost.

Each attack starts the command in a fresh process (from the package in ``--code``, default
this checkout, so an older checkout can be measured the same way), runs a bounded attack, and
prints the server's peak RSS (``VmHWM``), its CPU time, how long the attack took and what the
server answered. One line per attack::

    python benchmarks/listener_attacks.py                  # every attack, small sizes
    python benchmarks/listener_attacks.py chunked spans    # some of them
    python benchmarks/listener_attacks.py --code /path/to/other/checkout

Attacks: ``chunked`` (a chunk size of -1, then 256 MiB), ``spans`` (16 KiB of gzip holding
8.38 million empty spans), ``json`` (2 MB of OTLP JSON ``{}`` spans), ``slow`` (8 connections
dripping a body, a probe timing how long the bridge refuses work), ``connections`` (1,100 idle
connections against a 1,024 file limit, then 2,000 half-sent ones closed at once), ``paths``
(5,000 GETs to distinct 60 KB paths on ``serve``), ``gzip`` (two gzip members, then one
followed by garbage). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
PROTOBUF = "application/x-protobuf"


# --------------------------------------------------------------------------- the server


class Server:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024  # MiB
        return -1

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def start(code: Path, command: str, *extra: str, nofile: int = 1024) -> Iterator[Server]:
    """``altertable-otel COMMAND`` from ``code`` on a free port, its file limit ``nofile``."""
    args = [sys.executable, "-m", "opentelemetry_exporter_altertable.cli", command, "--port", "0"]
    if command == "bridge":
        args += ["--api-key", "pk_attack", "--endpoint", "http://127.0.0.1:9"]
    else:
        args += ["--db", ":memory:"]

    process = subprocess.Popen(
        [*args, *extra],
        cwd=code,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(code)},
    )
    try:
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.strip().rsplit(":", 1)[1].rstrip("/"))
        yield Server(process, port)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --------------------------------------------------------------------------- clients


def head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except (TimeoutError, OSError):
        return "no answer"
    return data.split(b"\r\n", 1)[0].decode("latin-1")[9:12] or "closed"


def post(port: int, path: str, body: bytes, timeout: float = 120.0, **headers: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head(path, Content_Length=str(len(body)), **headers) + body)
        return answer(sock, timeout)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def empty_spans(count: int) -> bytes:
    scope = b"\x12\x00" * count
    resource_spans = b"\x12" + varint(len(scope)) + scope
    return b"\x0a" + varint(len(resource_spans)) + resource_spans


# --------------------------------------------------------------------------- attacks


def attack_chunked(code: Path) -> dict[str, Any]:
    """A chunk size of -1, then 256 MiB: the server must not read it all."""
    results: dict[str, Any] = {}
    for command, path in (("bridge", "/v1/traces"), ("serve", "/track?apiKey=k")):
        with start(code, command) as server:
            started = time.monotonic()
            sent = 0
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(head(path, Content_Type=PROTOBUF, Transfer_Encoding="chunked"))
                sock.sendall(b"-1\r\n")
                block = b"x" * (1 << 20)
                try:
                    for _ in range(256):
                        sock.sendall(block)
                        sent += len(block)
                except OSError:
                    pass
                status = answer(sock, 5)
            results[command] = (
                f"{status} after {sent >> 20} MiB sent, {time.monotonic() - started:.1f}s, "
                f"peak {server.status('VmHWM')} MiB"
            )
    return results


def attack_spans(code: Path) -> dict[str, Any]:
    """16 KiB of gzip holding 8.38 million empty spans, to the bridge and to serve."""
    body = gzip.compress(empty_spans(8_380_000), 9)
    results: dict[str, Any] = {"gzip bytes": len(body)}
    for command in ("bridge", "serve"):
        with start(code, command) as server:
            started = time.monotonic()
            status = post(server.port, "/v1/traces", body, Content_Type=PROTOBUF,
                          Content_Encoding="gzip")  # fmt: skip
            results[command] = (
                f"{status} in {time.monotonic() - started:.1f}s, peak {server.status('VmHWM')} MiB"
            )
    return results


def attack_json(code: Path) -> dict[str, Any]:
    """2 MB of OTLP JSON whose spans are all ``{}``."""
    spans = ",".join(["{}"] * 660_000)
    body = f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}'.encode()
    with start(code, "bridge") as server:
        started = time.monotonic()
        status = post(server.port, "/v1/traces", body, Content_Type="application/json")
        return {
            "body bytes": len(body),
            "bridge": f"{status} in {time.monotonic() - started:.1f}s, "
            f"peak {server.status('VmHWM')} MiB",
        }


def attack_slow(code: Path) -> dict[str, Any]:
    """8 connections drip a 100-byte body one byte per 2 s for 40 s at most; a probe every
    half second measures for how long the bridge answers 503."""
    stop = threading.Event()
    with start(code, "bridge") as server:
        socks = []
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
            sock.sendall(head("/v1/traces", Content_Type=PROTOBUF, Content_Length="100"))
            socks.append(sock)

        def drip() -> None:
            for _ in range(20):
                if stop.wait(2.0):
                    return
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(b"x")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        started = time.monotonic()
        refused_until = 0.0
        while time.monotonic() - started < 45:
            status = post(server.port, "/v1/traces", b"", timeout=5, Content_Type=PROTOBUF)
            if status != "200":
                refused_until = time.monotonic() - started
            elif refused_until and time.monotonic() - started > refused_until + 2:
                break
            time.sleep(0.5)
        stop.set()
        answers = [answer(sock, 0.5) for sock in socks]
        for sock in socks:
            sock.close()
        return {
            "bridge refused work for": f"{refused_until:.1f}s",
            "dripping senders were answered": sorted(set(answers)),
        }


def attack_connections(code: Path) -> dict[str, Any]:
    """1,100 idle connections against a 1,024 file limit (CPU over 5 s, a probe), then 2,000
    half-sent connections closed at once (time until a probe is served)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    results: dict[str, Any] = {}
    with start(code, "bridge") as server:
        idle = []
        for _ in range(1100):
            try:
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            except OSError:
                break
        time.sleep(1.0)
        cpu = server.cpu()
        time.sleep(5.0)
        results["cpu in 5 s with 1,100 idle"] = f"{server.cpu() - cpu:.2f}s"
        results["probe while full"] = post(server.port, "/v1/traces", b"", timeout=5,
                                           Content_Type=PROTOBUF)  # fmt: skip
        for sock in idle:
            sock.close()
        time.sleep(1.0)
        half = []
        for _ in range(2000):
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                sock.sendall(b"POST /v1/traces HTTP/1.1\r\nContent-Le")
                half.append(sock)
            except OSError:
                break
        time.sleep(1.0)
        started = time.monotonic()
        for sock in half:
            sock.close()
        status = "none"
        while time.monotonic() - started < 300:
            status = post(server.port, "/v1/traces", b"", timeout=5, Content_Type=PROTOBUF)
            if status == "200":
                break
        results["served again after closing 2,000"] = (
            f"{time.monotonic() - started:.1f}s ({status})"
        )
        results["peak"] = f"{server.status('VmHWM')} MiB"
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return results


def attack_paths(code: Path) -> dict[str, Any]:
    """5,000 GETs to distinct 60 KB paths on serve, no key."""
    with start(code, "serve") as server:
        before = server.status("VmRSS")
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            for number in range(5000):
                path = f"/{number}-" + "p" * 60_000
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536)
                length = int(data.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                body = data.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += sock.recv(65536)
        return {
            "serve RSS growth": f"{server.status('VmRSS') - before} MiB",
            "time": f"{time.monotonic() - started:.1f}s",
        }


def attack_gzip(code: Path) -> dict[str, Any]:
    """gzip(A) + gzip(B), then gzip(A) + garbage, to the bridge (empty requests: 200 each)."""
    a, b = empty_spans(1), empty_spans(2)
    with start(code, "bridge") as server:
        members = post(server.port, "/v1/traces", gzip.compress(a) + gzip.compress(b),
                       Content_Type=PROTOBUF, Content_Encoding="gzip")  # fmt: skip
        garbage = post(server.port, "/v1/traces", gzip.compress(a) + b"garbage!",
                       Content_Type=PROTOBUF, Content_Encoding="gzip")  # fmt: skip
    return {"gzip(A)+gzip(B)": members, "gzip(A)+garbage": garbage}


def cost_of_counting(code: Path) -> dict[str, Any]:
    """Not an attack: what counting elements costs a legitimate large request (8,192 spans of
    20 attributes, the Collector's default batch), against decoding it; in this process."""
    sys.path.insert(0, str(code))
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from opentelemetry_exporter_altertable._http_server import ListenerBounds
    from opentelemetry_exporter_altertable.bridge._decode import decode
    from opentelemetry_exporter_altertable.bridge._elements import check_protobuf

    message = ExportTraceServiceRequest()
    scope = message.resource_spans.add().scope_spans.add()
    for number in range(8192):
        span = scope.spans.add()
        span.name, span.trace_id, span.span_id = "GET /cart", b"t" * 16, number.to_bytes(8, "big")
        span.start_time_unix_nano, span.end_time_unix_nano = 1, 2
        for index in range(20):
            attribute = span.attributes.add()
            attribute.key, attribute.value.string_value = f"attribute.{index}", "value" * 2
    body = message.SerializeToString()
    bounds = ListenerBounds()
    best_count = best_decode = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        check_protobuf(body, True, bounds)
        best_count = min(best_count, time.perf_counter() - started)
        started = time.perf_counter()
        decode("/v1/traces", body, False, bounds)
        best_decode = min(best_decode, time.perf_counter() - started)
    return {
        "body": f"{len(body) / 1e6:.1f} MB",
        "counting": f"{best_count * 1000:.0f} ms",
        "decoding and reading, counting included": f"{best_decode * 1000:.0f} ms",
    }


ATTACKS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "chunked": attack_chunked,
    "spans": attack_spans,
    "json": attack_json,
    "slow": attack_slow,
    "connections": attack_connections,
    "paths": attack_paths,
    "gzip": attack_gzip,
    "counting": cost_of_counting,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("attacks", nargs="*", help=f"some of: {', '.join(ATTACKS)} (default: all)")
    parser.add_argument("--code", type=Path, default=HERE, help="checkout to run (default: this)")
    args = parser.parse_args()
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    for name in args.attacks or list(ATTACKS):
        result = ATTACKS[name](args.code.resolve())
        print(f"{name}: " + "; ".join(f"{key}: {value}" for key, value in result.items()),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
