"""``make demo``: start a local receiver, run the shop, and ask the tracking guide's questions.

Everything a user would do by hand, in order: ``altertable-otel serve``, run an instrumented
app pointed at it, then ``altertable-otel query`` with the guide's SQL, verbatim, and point
at the receiver's page. Run from a terminal, it keeps the receiver running (so the page stays
up) until Ctrl-C; ``--exit`` (or no terminal, as in CI) stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
API_KEY = "pk_test_local_demo"

GUIDE_QUERIES = {
    "Events by currency": """SELECT
event,
properties->>'currency' AS currency,
COUNT(*) AS total
FROM altertable.analytics.events
GROUP BY ALL
ORDER BY total DESC;""",
    "One user's events with their identity traits": """SELECT
e.event,
e.properties,
e.timestamp,
e.identity_traits->>'email' AS email,
e.identity_traits->>'plan' AS plan
FROM altertable.analytics.events e
WHERE e.distinct_id = 'u_01jza857w4f23s1hf2s61befmw'
ORDER BY e.timestamp DESC;""",
    "Identities": """SELECT
distinct_id,
traits->>'email' AS email,
traits->>'plan' AS plan,
updated_at
FROM altertable.analytics.identities
ORDER BY updated_at DESC;""",
}


def _cli() -> list[str]:
    return [sys.executable, "-m", "opentelemetry_exporter_altertable"]


def _free_port(preferred: int = 15001) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])


def _wait_healthy(endpoint: str, server: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("demo: the receiver exited early; see its output above")
        try:
            if requests.get(f"{endpoint}/health", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: the receiver did not answer on {endpoint} within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make demo")
    parser.add_argument(
        "--exit", action="store_true", help="stop the receiver at the end, even in a terminal"
    )
    args = parser.parse_args(argv)
    keep_running = not args.exit and sys.stdin is not None and sys.stdin.isatty()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="altertable-demo-") as tmp:
        db = os.path.join(tmp, "demo.duckdb")
        print(f"$ altertable-otel serve --port {port} --db {db}", flush=True)
        server = subprocess.Popen(
            [*_cli(), "serve", "--port", str(port), "--db", db, "--api-key", API_KEY,
             "--no-otlp-ports"]
        )
        try:
            _wait_healthy(endpoint, server)
            env = {
                **os.environ,
                "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": endpoint,
                "OTEL_EXPORTER_ALTERTABLE_API_KEY": API_KEY,
            }
            print("$ python examples/quickstart.py", flush=True)
            subprocess.run([sys.executable, str(HERE / "quickstart.py")], env=env, check=True)
            for title, sql in GUIDE_QUERIES.items():
                first_line = sql.splitlines()[0]
                print(f"\n== {title}\n$ altertable-otel query '{first_line} ...'", flush=True)
                subprocess.run(
                    [*_cli(), "query", "--endpoint", endpoint, sql],
                    check=True,
                )
            print(f"\ndemo: open {endpoint}/ in a browser to watch events arrive.", flush=True)
            if keep_running:
                print("demo: the receiver keeps running; Ctrl-C stops it.", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    server.wait()
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    print("\ndemo: done. Point the same exporters at Altertable by setting only the API key.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
