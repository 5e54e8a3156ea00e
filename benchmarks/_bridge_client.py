"""The bridge benchmark's sender, run as its own process: OTLP/HTTP protobuf, as fast as it can.

    python benchmarks/_bridge_client.py URL BODIES_FILE BATCHES_PER_ROUND ROUNDS SPANS_PER_BODY

Posts the pre-encoded ``ExportTraceServiceRequest`` bodies (a pickled list of bytes) to
``URL/v1/traces`` over one keep-alive connection, one warm-up round then ``ROUNDS`` timed
rounds, and prints the spans per second of each round as JSON. A sender in its own process
is what a service or a Collector is: the bridge is billed for its own work only.
"""

from __future__ import annotations

import json
import pickle
import sys
import time

import requests


def main() -> int:
    url, path, per_round, rounds, spans = sys.argv[1:6]
    with open(path, "rb") as f:
        bodies: list[bytes] = pickle.load(f)
    session = requests.Session()
    session.trust_env = False
    headers = {"Content-Type": "application/x-protobuf"}
    rates = []
    for round_number in range(int(rounds) + 1):
        start = time.perf_counter()
        for k in range(int(per_round)):
            answer = session.post(f"{url}/v1/traces", data=bodies[k % len(bodies)],
                                  headers=headers, timeout=60)  # fmt: skip
            if answer.status_code != 200:
                print(f"bridge answered {answer.status_code}: {answer.text[:200]}", file=sys.stderr)
                return 1
        if round_number:  # the first round warms up
            rates.append(int(per_round) * int(spans) / (time.perf_counter() - start))
    print(json.dumps(rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
