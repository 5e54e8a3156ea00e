"""Every process model, run for real: each event carries a unique id, counted at the receiver.

Each row starts the real server, worker or pool the way users deploy it, sends events, ends it
the way that process model ends, then lets the next exporter (a restarted process, here
``altertable-otel replay``) recover what the ended processes journaled. A row asserts what
arrived before recovery where the process model must deliver on its own, and that after
recovery every event arrived: 0 lost, duplicates counted (at least once allows them only when
a process died between a delivery and its retirement from the journal).

Every row runs in the main suite (``make test``); the other suites leave this file out
(marker ``once``), as they do every real-server test that does not depend on the Python or
SDK version.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from support import free_port

from opentelemetry_exporter_altertable.receiver import LocalReceiver

pytestmark = [
    pytest.mark.slow,
    pytest.mark.once,
    pytest.mark.usefixtures("no_altertable_settings"),
]

BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0

APP = '''
import os
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

provider = TracerProvider()
provider.add_span_processor(AltertableSpanProcessor(AltertableSpanExporter()))
tracer = provider.get_tracer("process-models")


def _track(uid):
    with tracer.start_as_current_span("request", attributes={"analytics.event": uid}):
        pass
    # Handed to the exporter: noted, so a request whose answer a recycled worker lost counts.
    with open(os.environ["HANDLED_LOG"], "a") as handled:
        handled.write(uid + "\\n")


def wsgi(environ, start_response):
    _track(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    _track(scope["query_string"].decode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
'''


@dataclass
class Row:
    """One process model's figures (what the docs' table shows)."""

    sent: int
    before_recovery: int
    delivered: int
    duplicated: int

    def __str__(self) -> str:
        return (
            f"sent={self.sent} delivered-before-recovery={self.before_recovery} "
            f"delivered={self.delivered} duplicated={self.duplicated}"
        )


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as r:
        yield r


@pytest.fixture
def env(tmp_path: Path, receiver: LocalReceiver) -> dict[str, str]:
    """The exporter's settings for the processes under test: the receiver, a spool."""
    spool = tmp_path / "spool"
    return {
        **os.environ,
        "OTEL_EXPORTER_ALTERTABLE_API_KEY": "pk_process_models",
        "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR": str(spool),
        "OTEL_EXPORTER_ALTERTABLE_TIMEOUT": "5",
        "PYTHONPATH": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "HANDLED_LOG": str(tmp_path / "handled.log"),
    }


def _counts(receiver: LocalReceiver, prefix: str) -> Counter[str]:
    rows = receiver.query("SELECT event FROM altertable.analytics.events")
    return Counter(row[0] for row in rows if str(row[0]).startswith(prefix))


def _recover_and_count(
    receiver: LocalReceiver, env: dict[str, str], sent: set[str], prefix: str
) -> Row:
    """Figures before recovery, then run ``replay`` (the next exporter) and count again."""
    before = _counts(receiver, prefix)
    replay = subprocess.run(
        [str(BIN / "altertable-otel"), "replay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    after = _counts(receiver, prefix)
    assert set(after) <= sent, set(after) - sent
    return Row(
        sent=len(sent),
        before_recovery=len(set(before) & sent),
        delivered=len(set(after) & sent),
        duplicated=sum(after.values()) - len(after),
    )



def _wait_http(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        with contextlib.suppress(requests.RequestException):
            requests.get(url + "/?warmup", timeout=1)
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {START_TIMEOUT} s")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 20.0) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"did not stop on signal {sig}: {out[-3000:]}") from None
    return out


def _serve_requests(
    cmd: list[str], env: dict[str, str], port: int, prefix: str, *, n: int, cwd: Path
) -> set[str]:
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    answered: set[str] = set()
    try:
        _wait_http(url, proc)
        for i in range(n):
            uid = f"{prefix}{i}"
            # A connection of its own: a recycled worker closes kept-alive ones.
            try:
                answer = requests.get(f"{url}/?{uid}", headers={"Connection": "close"}, timeout=10)
            except requests.ConnectionError:
                # A worker leaving (--max-requests) may close a connection it took but never
                # answered; whether the app saw the request, its log of handled ids says.
                continue
            assert answer.status_code == 200
            answered.add(uid)
    finally:
        _stop(proc)
    handled = set(Path(env["HANDLED_LOG"]).read_text().split())
    assert answered <= handled, answered - handled
    unanswered = n - len(answered)
    assert unanswered <= n // 20, f"{unanswered} of {n} requests unanswered"
    return {uid for uid in handled if uid.startswith(prefix)}


# ------------------------------------------------------------------------------ web servers

def _gunicorn_own_flags() -> list[str]:
    """Newer gunicorn opens a control socket in the home directory: not for a test run."""
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket" in names else []


GUNICORN_ROWS = {
    "sync": [],
    "sync-preload": ["--preload"],
    "sync-max-requests": ["--max-requests", "20"],
    "uvicorn": ["-k", "uvicorn_worker.UvicornWorker"],
    "uvicorn-preload-max-requests": [
        "-k", "uvicorn_worker.UvicornWorker", "--preload", "--max-requests", "20",
    ],
}


@pytest.mark.parametrize(
    "name",
    list(GUNICORN_ROWS),
)
def test_gunicorn(name: str, tmp_path: Path, env: dict[str, str], receiver: LocalReceiver) -> None:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    app = "app:asgi" if "uvicorn" in name else "app:wsgi"
    cmd = [
        str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10",
        *_gunicorn_own_flags(), *GUNICORN_ROWS[name], app,
    ]
    prefix = f"gunicorn-{name}-"
    sent = _serve_requests(cmd, env, port, prefix, n=200, cwd=tmp_path)
    row = _recover_and_count(receiver, env, sent, prefix)
    print(f"gunicorn {name}: {row}")
    assert row.delivered == row.sent, row


UWSGI_ROWS = {
    "processes": [],
    "enable-threads": ["--enable-threads"],
    "lazy-apps": ["--lazy-apps"],
    "enable-threads-lazy-apps": ["--enable-threads", "--lazy-apps"],
}


@pytest.mark.parametrize(
    "name",
    list(UWSGI_ROWS),
)
def test_uwsgi(name: str, tmp_path: Path, env: dict[str, str], receiver: LocalReceiver) -> None:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    cmd = [
        str(BIN / "uwsgi"), "--http-socket", f"127.0.0.1:{port}", "--master",
        "--processes", "2", "--wsgi-file", str(tmp_path / "app.py"), "--callable", "wsgi",
        "--die-on-term", "--need-app", "--disable-logging",
        "--pythonpath", str(tmp_path), *UWSGI_ROWS[name],
    ]
    prefix = f"uwsgi-{name}-"
    sent = _serve_requests(cmd, env, port, prefix, n=200, cwd=tmp_path)
    row = _recover_and_count(receiver, env, sent, prefix)
    print(f"uwsgi {name}: {row}")
    assert row.delivered == row.sent, row


# ------------------------------------------------------------------------------ Celery

CELERY_APP = '''
import os
from celery import Celery
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

folder = os.environ["BROKER_FOLDER"]
app = Celery("tasks", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": folder, "data_folder_out": folder, "control_folder": folder,
        "store_processed": False,
    },
    worker_hijack_root_logger=False,
    task_acks_late=False,
)

tracer = None


def setup(**_):
    global tracer
    provider = TracerProvider()
    provider.add_span_processor(AltertableSpanProcessor(AltertableSpanExporter()))
    tracer = provider.get_tracer("celery-tasks")


if os.environ.get("SETUP") == "worker_process_init":
    from celery.signals import worker_process_init
    worker_process_init.connect(setup)
else:
    setup()


@app.task
def work(uid):
    with tracer.start_as_current_span("task", attributes={"analytics.event": uid}):
        pass
'''

CELERY_ROWS = {
    "module-recycling": ("module", ["--max-tasks-per-child", "5"]),
    "worker-process-init": ("worker_process_init", []),
}


@pytest.mark.parametrize(
    "name", ["module-recycling", "worker-process-init"]
)
def test_celery_prefork_warm_shutdown_without_a_spool(
    name: str, tmp_path: Path, env: dict[str, str], receiver: LocalReceiver
) -> None:
    """No spool, no user code: children flush on ``worker_process_shutdown``."""
    setup, options = CELERY_ROWS[name]
    (tmp_path / "tasks.py").write_text(CELERY_APP)
    broker = tmp_path / "broker"
    broker.mkdir()
    env = {k: v for k, v in env.items() if k != "OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR"}
    env["BROKER_FOLDER"] = str(broker)
    env["SETUP"] = setup
    env["OTEL_BSP_SCHEDULE_DELAY"] = "60000"  # nothing leaves a child but through the flush
    prefix = f"celery-{name}-"
    n = 60
    produce = subprocess.run(
        [sys.executable, "-c",
         f"from tasks import app\nfor i in range({n}): "
         f"app.send_task('tasks.work', ('{prefix}%d' % i,))"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert produce.returncode == 0, produce.stderr
    worker = subprocess.Popen(
        [str(BIN / "celery"), "-A", "tasks", "worker", "--pool", "prefork", "-c", "2",
         *options, "--without-heartbeat", "--without-mingle",
         "--without-gossip", "--loglevel", "WARNING"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(broker.glob("*.msg")):
            assert worker.poll() is None, worker.communicate()[0][-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # the last tasks run
    finally:
        out = _stop(worker, signal.SIGTERM, timeout=40)  # warm shutdown
    sent = {f"{prefix}{i}" for i in range(n)}
    counts = _counts(receiver, prefix)
    row = Row(n, len(counts), len(set(counts) & sent), sum(counts.values()) - len(counts))
    print(f"celery prefork {name}: {row}")
    assert row.delivered == n, (row, out[-3000:])
    assert row.duplicated == 0


# ------------------------------------------------------------------------------ scripts

POOL_SCRIPT = '''
import multiprocessing, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

provider = TracerProvider()
provider.add_span_processor(AltertableSpanProcessor(AltertableSpanExporter()))
tracer = provider.get_tracer("pool")


def work(uid):
    with tracer.start_as_current_span("job", attributes={"analytics.event": uid}):
        pass
    return uid


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    how, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    uids = [f"{prefix}{i}" for i in range(n)]
    if how == "with":
        with multiprocessing.Pool(2) as pool:
            pool.map(work, uids)  # __exit__ calls terminate()
    elif how == "close-join":
        pool = multiprocessing.Pool(2)
        pool.map(work, uids)
        pool.close()
        pool.join()
    else:
        pool = multiprocessing.Pool(2)
        pool.map(work, uids)
        pool.terminate()
        pool.join()
'''


@pytest.mark.parametrize("how", ["with", "close-join", "terminate"])
def test_multiprocessing_pool(
    how: str, tmp_path: Path, env: dict[str, str], receiver: LocalReceiver
) -> None:
    (tmp_path / "pool_app.py").write_text(POOL_SCRIPT)
    prefix, n = f"pool-{how}-", 100
    run = subprocess.run(
        [sys.executable, str(tmp_path / "pool_app.py"), how, prefix, str(n)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr
    row = _recover_and_count(receiver, env, {f"{prefix}{i}" for i in range(n)}, prefix)
    print(f"multiprocessing.Pool {how}: {row}")
    assert row.delivered == row.sent, row
    assert row.duplicated == 0, row


SERVERLESS = '''
import os, sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

provider = TracerProvider()
provider.add_span_processor(AltertableSpanProcessor(AltertableSpanExporter()))
tracer = provider.get_tracer("handler")
prefix, flush = sys.argv[1], sys.argv[2] == "flush"
for line in sys.stdin:  # one invocation per line; frozen between them
    uid = prefix + line.strip()
    with tracer.start_as_current_span("invoke", attributes={"analytics.event": uid}):
        pass
    if flush:
        started = time.monotonic()
        provider.force_flush(1000)
        print("flushed in %.3f" % (time.monotonic() - started), flush=True)
    else:
        print("done", flush=True)
'''


@pytest.mark.parametrize("flush", ["no-flush", "flush", "flush-unreachable"])
def test_serverless_frozen_then_reaped(
    flush: str, tmp_path: Path, env: dict[str, str], receiver: LocalReceiver
) -> None:
    """Invocations, the sandbox frozen (SIGSTOP) between them, reaped frozen (SIGKILL).

    ``flush-unreachable``: the handler ends with ``force_flush(1000)`` while the API is
    unreachable; the next cold start (here ``replay``) reaches it.
    """
    (tmp_path / "handler.py").write_text(SERVERLESS)
    prefix, n = f"serverless-{flush}-", (5 if flush == "flush-unreachable" else 20)
    handler_env = dict(env, OTEL_BSP_SCHEDULE_DELAY="5000")
    if flush == "flush-unreachable":
        closed = free_port()  # nobody listens there: connections refused
        handler_env["OTEL_EXPORTER_ALTERTABLE_ENDPOINT"] = f"http://127.0.0.1:{closed}"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "handler.py"), prefix, flush.split("-", maxsplit=1)[0]],
        env=handler_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    durations = []
    for i in range(n):
        if i:
            os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write(f"{i}\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        assert answer, "the handler died"
        if answer.startswith("flushed in"):
            durations.append(float(answer.split()[-1]))
        os.kill(proc.pid, signal.SIGSTOP)
    proc.kill()  # reaped while frozen
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    assert all(d < 1.5 for d in durations), durations  # force_flush(1000) keeps its deadline
    row = _recover_and_count(receiver, env, {f"{prefix}{i}" for i in range(n)}, prefix)
    print(f"serverless {flush}: {row} longest-flush={max(durations, default=0):.3f}s")
    assert row.delivered == row.sent, row


ABRUPT = '''
import os, signal, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry_exporter_altertable import AltertableSpanExporter, AltertableSpanProcessor

provider = TracerProvider()
provider.add_span_processor(AltertableSpanProcessor(AltertableSpanExporter()))
tracer = provider.get_tracer("abrupt")
how, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    with tracer.start_as_current_span("s", attributes={"analytics.event": f"{prefix}{i}"}):
        pass
if how == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
os._exit(0)
'''


@pytest.mark.parametrize("how", ["sigkill", "os-exit"])
def test_abrupt_end_right_after_span_end(
    how: str, tmp_path: Path, env: dict[str, str], receiver: LocalReceiver
) -> None:
    (tmp_path / "abrupt.py").write_text(ABRUPT)
    prefix, n = f"abrupt-{how}-", 50
    run = subprocess.run(
        [sys.executable, str(tmp_path / "abrupt.py"), how, prefix, str(n)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == (-9 if how == "sigkill" else 0), run.stderr
    row = _recover_and_count(receiver, env, {f"{prefix}{i}" for i in range(n)}, prefix)
    print(f"{how} after span.end(): {row}")
    assert row.before_recovery == 0  # nothing could leave the process: the journal did
    assert row.delivered == row.sent, row
    assert row.duplicated == 0, row
