"""Client-side CPU instructions per item, counted by callgrind: ratios a loaded machine cannot move.

    python benchmarks/instructions.py            # ``make bench-instructions``
    python benchmarks/instructions.py --rounds 4
    python benchmarks/instructions.py --scenarios ours general   # only these (no ratios)

``bench_export.py`` times whole rounds, and on a shared 2-core machine another process can move
one scenario's figure by half while the next runs undisturbed. Callgrind counts the
instructions the exporting process executes, whatever else the machine does (the same total
twice, with the other core loaded), so the ratios here hold still. Each scenario runs in a
fresh ``python`` under ``valgrind --tool=callgrind``, twice: once with one round after the
warm-up, once with ``1 + rounds``; the difference divided by the items of ``rounds`` rounds
is the cost of one item, start-up and span building excluded. The sink runs in its own,
uncounted process (``valgrind`` does not follow ``exec``), as in ``bench_export.py``.

Instructions are not time (a cache miss or a system call costs more than an add), so these
ratios complement the timed ones; they do not replace them.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _sink import ProcessSink
from _spans import build_spans, track_payload

BATCH = 512
API_KEY = "pk_test_benchmark"
ENVIRONMENT = "production"
SDK_EVENTS = 50

#: scenario -> (what one item is, items per round)
SCENARIOS: dict[str, tuple[str, int]] = {
    "ours": ("event", BATCH),
    "general": ("event", BATCH),
    "fast": ("event", BATCH),
    "skip": ("span", BATCH),
    "skip_ids": ("span", BATCH),
    "otlp": ("span", BATCH),
    "sdk": ("event", SDK_EVENTS),
    "floor": ("event", BATCH),
}
TITLES = {
    "ours": "ours, default install (stdlib json) -> /track",
    "general": "ours by the general mapping rules alone (no plans)",
    "fast": "ours with the fast extra (orjson)",
    "skip": "ours on untagged spans (skip path)",
    "skip_ids": "skip path, spans with user.id/enduser.id/session.id",
    "otlp": "OTLP/HTTP protobuf exporter -> /v1/traces",
    "sdk": "official altertable SDK: track() per event",
    "floor": "floor: json.dumps of pre-built payloads",
}
# (numerator, denominator, minimum, label): cost ratios, so "ours/OTLP" is OTLP's cost / ours.
TARGETS = (
    ("otlp", "ours", 2.5, "ours/OTLP"),
    ("sdk", "ours", 55.0, "ours/SDK"),
    ("floor", "ours", 0.45, "ours/floor"),
    ("ours", "skip", 15.0, "skip/tagged"),
    ("ours", "skip_ids", 15.0, "skip_ids/tagged"),
)
_COLLECTED = re.compile(r"Collected : (\d+)")


def _round_runner(mode: str, sink_url: str) -> Callable[[], object]:
    """One round of ``mode``: what the timed benchmark's round does, against ``sink_url``."""
    tagged = build_spans(BATCH, tagged=True)
    if mode in ("ours", "general", "fast", "skip", "skip_ids"):
        from opentelemetry_exporter_altertable import _mapping, _sdk, _transport
        from opentelemetry_exporter_altertable.exporters import AltertableSpanExporter

        if mode != "fast":
            _transport.fast_encoder = lambda: None  # as if orjson were not installed
        if mode == "general":  # what the per-key-set plans save is ours minus this
            _sdk.map_records = functools.partial(_mapping.map_records, planned=False)
        exporter: Any = AltertableSpanExporter(
            api_key=API_KEY, endpoint=sink_url, environment=ENVIRONMENT, max_batch_size=100
        )
        spans = tagged
        if mode.startswith("skip"):
            spans = build_spans(BATCH, tagged=False, identity=mode == "skip_ids")
        return lambda: exporter.export(spans)
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp: Any = OTLPSpanExporter(endpoint=f"{sink_url}/v1/traces")
        return lambda: otlp.export(tagged)
    payloads = [track_payload(span, ENVIRONMENT) for span in tagged]
    if mode == "sdk":
        from altertable import Altertable

        client = Altertable(API_KEY, server_url=sink_url, environment=ENVIRONMENT)

        def sdk_round() -> None:
            for p in payloads[:SDK_EVENTS]:
                client.track(
                    p["event"],
                    p["distinct_id"],
                    {"properties": p["properties"], "timestamp": p["timestamp"]},
                )

        return sdk_round
    chunks = [payloads[i : i + 100] for i in range(0, BATCH, 100)]
    return lambda: [len(json.dumps(chunk).encode()) for chunk in chunks]


def child(mode: str, rounds: int) -> None:
    """Run under callgrind: warm up twice, then ``rounds`` rounds."""
    with ProcessSink() as sink:
        run_round = _round_runner(mode, sink.url)
        run_round()
        run_round()
        for _ in range(rounds):
            run_round()


def _count(mode: str, rounds: int) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--child", mode, str(rounds),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{mode}: callgrind run failed: {done.stderr[-400:]}")
    return int(found[0])  # the first line is this process's own; none follow exec


def measure(mode: str, rounds: int) -> float:
    """Instructions per item of ``mode``: the difference of 1 and ``1 + rounds`` rounds."""
    base, more = _count(mode, 1), _count(mode, 1 + rounds)
    return (more - base) / (rounds * SCENARIOS[mode][1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ROUNDS"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=tuple(SCENARIOS),
        default=tuple(SCENARIOS),
        help="count only these (ratios are printed when both of their scenarios ran)",
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: `make bench-instructions` installs it", file=sys.stderr)
        return 2
    print(f"client instructions per item (callgrind), {args.rounds} rounds after warm-up")
    modes = list(dict.fromkeys(args.scenarios))
    with ThreadPoolExecutor(max_workers=2) as pool:  # two valgrinds: one per core
        costs = dict(zip(modes, pool.map(lambda m: measure(m, args.rounds), modes), strict=True))
    for mode, cost in costs.items():
        print(f"  {TITLES[mode]:<56} {cost:>12,.0f} instructions per {SCENARIOS[mode][0]}")
    print("ratios (cost of the peer / cost of ours)")
    for num, den, minimum, label in TARGETS:
        if num in costs and den in costs:
            ratio = costs[num] / costs[den]
            verdict = "met" if ratio >= minimum else "NOT met"
            print(f"  {label:<16} {ratio:8.2f}x   target >= {minimum:g}x: {verdict}")
    for num, den, label in (("ours", "fast", "fast/stdlib"), ("general", "ours", "general/plans")):
        if num in costs and den in costs:
            print(f"  {label:<16} {costs[num] / costs[den]:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
