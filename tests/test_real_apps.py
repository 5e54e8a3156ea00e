"""Real frameworks under ``opentelemetry-instrument``, hit with real HTTP requests.

Each test starts one of the web examples (Flask with flask-login, FastAPI on uvicorn, Django)
in a fresh interpreter under ``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=altertable``
pointed at a local receiver, sends it the requests a browser would (user agent, referer, a UTM
query with a token beside it, ``X-Forwarded-For`` from a reverse proxy), stops it the way a
process manager does (SIGTERM; the SDK's exit hook delivers what is queued) and asserts what the
receiver stored. Every framework runs under both HTTP semantic-convention modes: the old names
(the instrumentations' default) and ``OTEL_SEMCONV_STABILITY_OPT_IN=http``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from support import EXAMPLES, INSTRUMENT

from opentelemetry_exporter_altertable.receiver import LocalReceiver

TIMEOUT = 60.0

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) RealAppsTest/1.0"
REFERER = "https://news.example/article?id=7"
CLIENT_IP = "203.0.113.77"
QUERY = "utm_source=newsletter&utm_medium=email&utm_campaign=spring&token=SECRET-TOKEN"

MODES = {"old": "", "stable": "http"}


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as r:
        yield r


class App:
    """An example app running under ``opentelemetry-instrument`` in its own process."""

    def __init__(self, script: str, receiver: LocalReceiver, mode: str, **extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ALTERTABLE_"))}
        env.update(
            {
                "OTEL_SERVICE_NAME": f"shop-{script.partition('_')[0]}",
                "OTEL_TRACES_EXPORTER": "altertable",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "none",
                "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_ALTERTABLE_API_KEY": "pk_test_real_apps",
                "OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS": "true",
                "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "referer",
                "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "content-type",
                "OTEL_SEMCONV_STABILITY_OPT_IN": MODES[mode],
                "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                **extra,
            }
        )
        self.process = subprocess.Popen(
            [str(INSTRUMENT), sys.executable, str(EXAMPLES / script), "--port", "0"],
            cwd=EXAMPLES,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until the app is listening
        if not line.startswith("listening on "):
            self.process.kill()
            _, err = self.process.communicate(timeout=TIMEOUT)
            raise AssertionError(f"{script} did not start: {line!r}\n{err}")
        self.url = line.removeprefix("listening on ").strip()
        self.http = requests.Session()
        self.http.headers.update(
            {"User-Agent": BROWSER_UA, "Referer": REFERER, "X-Forwarded-For": CLIENT_IP}
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        response = self.http.get(self.url + path, timeout=TIMEOUT, **kwargs)
        response.raise_for_status()
        return response

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        response = self.http.post(self.url + path, timeout=TIMEOUT, **kwargs)
        response.raise_for_status()
        return response

    def stop(self) -> str:
        """SIGTERM, as a process manager stops a service; the exit hook flushes the queue."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=TIMEOUT)
        assert self.process.returncode == 0, err
        return err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=TIMEOUT)


def events(receiver: LocalReceiver) -> dict[str, tuple[str | None, str | None, dict[str, Any]]]:
    rows = receiver.query(
        "SELECT event, distinct_id, session_id, properties FROM altertable.analytics.events"
    )
    out: dict[str, tuple[str | None, str | None, dict[str, Any]]] = {}
    for event, distinct_id, session_id, properties in rows:
        assert event not in out, f"{event} stored twice: {rows}"
        out[event] = (distinct_id, session_id, json.loads(properties))
    return out


def traits(receiver: LocalReceiver, distinct_id: str) -> dict[str, Any]:
    [(raw,)] = receiver.query(
        f"SELECT traits FROM altertable.analytics.identities WHERE distinct_id = '{distinct_id}'"
    )
    return dict(json.loads(raw))


def assert_web_context(props: dict[str, Any], app: App, path: str) -> None:
    """The browser's context, whichever convention the instrumentation used."""
    assert props["$url"] == app.url + path  # built from the parts, no query string
    assert props["$user_agent"] == BROWSER_UA
    assert props["$referer"] == REFERER
    assert props["$ip"] == CLIENT_IP  # the proxy's X-Forwarded-For, made the client address
    # Nothing the rows consumed, nothing excluded by default, no query parameter leaks.
    leaked = [k for k in props if k.startswith(("net.", "network.", "url.", "client.",
                                                "user_agent.", "server."))]  # fmt: skip
    leaked += [k for k in ("http.target", "http.url", "http.host", "http.scheme",
                           "http.user_agent", "http.client_ip") if k in props]  # fmt: skip
    assert leaked == [], props
    assert "SECRET-TOKEN" not in json.dumps(props)


def assert_utm(props: dict[str, Any]) -> None:
    assert props["$utm_source"] == "newsletter"
    assert props["$utm_medium"] == "email"
    assert props["$utm_campaign"] == "spring"
    assert "$utm_term" not in props


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_flask_with_flask_login(receiver: LocalReceiver, mode: str) -> None:
    app = App("flask_app.py", receiver, mode)
    try:
        app.get(f"/pricing?{QUERY}")  # first visit: sets the sid cookie
        sid = app.http.cookies["sid"]
        app.get("/login/u-42")
        app.post(f"/checkout?{QUERY}")
        err = app.stop()
    finally:
        app.kill()
    stored = events(receiver)
    assert sorted(stored) == ["$pageview", "Checkout Completed", "Logged In"], stored

    distinct_id, session_id, page = stored["$pageview"]
    assert (distinct_id, session_id) == (None, sid)  # not logged in yet
    assert_web_context(page, app, "/pricing")
    assert_utm(page)
    assert page["http.route"] == "/pricing"
    assert page["service.name"] == "shop-flask"

    distinct_id, session_id, checkout = stored["Checkout Completed"]
    assert (distinct_id, session_id) == ("u-42", sid)
    assert checkout["cart_value"] == 59.9
    assert_web_context(checkout, app, "/checkout")
    assert_utm(checkout)
    assert traits(receiver, "u-42") == {"email": "ada@example.com"}
    assert "Traceback" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_fastapi_on_uvicorn(receiver: LocalReceiver, mode: str) -> None:
    app = App("fastapi_app.py", receiver, mode)
    try:
        app.http.cookies.set("sid", "sess-fastapi-1")
        app.get(f"/pricing?{QUERY}")
        app.post(f"/checkout?{QUERY}", headers={"Authorization": "Bearer tok-ada"})
        app.get("/openapi.json")  # JSON, not a page view
        err = app.stop()
    finally:
        app.kill()
    stored = events(receiver)
    assert sorted(stored) == ["$pageview", "Checkout Completed"], stored

    distinct_id, session_id, page = stored["$pageview"]
    assert (distinct_id, session_id) == (None, "sess-fastapi-1")
    assert_web_context(page, app, "/pricing")
    assert_utm(page)
    assert page["service.name"] == "shop-fastapi"

    distinct_id, session_id, checkout = stored["Checkout Completed"]
    assert (distinct_id, session_id) == ("u-42", "sess-fastapi-1")
    assert checkout["cart_value"] == 59.9
    assert_web_context(checkout, app, "/checkout")
    assert_utm(checkout)
    assert traits(receiver, "u-42") == {"email": "ada@example.com"}
    assert "Traceback" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_django_with_a_response_hook(receiver: LocalReceiver, mode: str) -> None:
    app = App(
        "django_app.py", receiver, mode, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="django"
    )
    try:
        app.get(f"/pricing?{QUERY}")
        app.get("/login/ada")
        session = app.http.cookies["sessionid"]
        app.post(f"/checkout?{QUERY}")
        err = app.stop()
    finally:
        app.kill()
    stored = events(receiver)
    assert sorted(stored) == ["$pageview", "Checkout Completed", "Logged In"], stored

    distinct_id, session_id, page = stored["$pageview"]
    assert (distinct_id, session_id) == (None, None)  # no session before logging in
    assert_web_context(page, app, "/pricing")
    assert_utm(page)

    distinct_id, session_id, checkout = stored["Checkout Completed"]
    assert (distinct_id, session_id) == ("1", session)
    assert checkout["cart_value"] == 59.9
    assert_web_context(checkout, app, "/checkout")
    assert_utm(checkout)
    assert traits(receiver, "1") == {"email": "ada@example.com"}
    assert "Traceback" not in err, err


def test_serverless_handler_delivers_with_force_flush_and_no_exit_hook(
    receiver: LocalReceiver,
) -> None:
    """The process ends with ``os._exit`` (no exit hook): only force_flush can deliver."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ALTERTABLE_"))}
    env.update(
        {
            "OTEL_EXPORTER_ALTERTABLE_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_ALTERTABLE_API_KEY": "pk_test_real_apps",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "serverless_handler.py")],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "'statusCode': 200" in result.stdout
    stored = events(receiver)
    assert list(stored) == ["Signed Up"]
    distinct_id, _, props = stored["Signed Up"]
    assert distinct_id == "u-fn-1"
    assert props["plan"] == "pro"
    assert props["service.name"] == "signup-fn"
