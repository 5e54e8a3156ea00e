"""The bridge benchmark's sender, run as its own process: OTLP/HTTP protobuf, as fast as it can.

    python benchmarks/_bridge_client.py URL BODIES_FILE

Loads the pre-encoded ``ExportTraceServiceRequest`` bodies (a pickled list of bytes), then
serves commands on stdin, one per line: ``N`` posts N bodies to ``URL/v1/traces`` over one
keep-alive connection and answers ``ok`` on stdout once every answer was 200 (else an error on
stderr and exit 1); end of input ends it. The benchmark times each command, so the bridge's
windows interleave with the other scenarios' rounds. A sender in its own process is what a
service or a Collector is: the bridge is billed for its own work only.
"""

from __future__ import annotations

import pickle
import sys

import requests


def main() -> int:
    url, path = sys.argv[1:3]
    with open(path, "rb") as f:
        bodies: list[bytes] = pickle.load(f)
    session = requests.Session()
    session.trust_env = False
    headers = {"Content-Type": "application/x-protobuf"}
    sent = 0
    for line in sys.stdin:
        for _ in range(int(line)):
            answer = session.post(f"{url}/v1/traces", data=bodies[sent % len(bodies)],
                                  headers=headers, timeout=60)  # fmt: skip
            sent += 1
            if answer.status_code != 200:
                print(f"bridge answered {answer.status_code}: {answer.text[:200]}", file=sys.stderr)
                return 1
        print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
