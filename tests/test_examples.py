"""The examples run as documented, against a real receiver, and land the rows they promise.

Each example runs in a fresh interpreter configured only through the environment, exactly as
its docstring tells a user to run it; a :class:`LocalReceiver` in this process stands in for
Altertable, and the assertions are on what its SQL returns.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from support import EXAMPLES, INSTRUMENT, ROOT

from opentelemetry_exporter_altertable.receiver import LocalReceiver

API_KEY = "pk_test_examples"
TIMEOUT = 60.0

# The ids quickstart.py uses (the tracking guide's own).
USER_ID = "u_01jza857w4f23s1hf2s61befmw"
ANONYMOUS_ID = "visitor-0197d9df-3c3b-734e-96dd-dfda52b0167c"
BILLING_ID = "stripe:cus_abc123"

@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    """A receiver that accepts only the examples' key, so a missing key would show."""
    with LocalReceiver(api_keys=[API_KEY]) as r:
        yield r


def example_env(endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """The current environment minus any OpenTelemetry/Altertable setting, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "ALTERTABLE_"))
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if endpoint is not None:
        env["OTEL_EXPORTER_ALTERTABLE_ENDPOINT"] = endpoint
        env["OTEL_EXPORTER_ALTERTABLE_API_KEY"] = API_KEY
    env.update(extra)
    return env


def run(
    command: Sequence[str], env: Mapping[str, str], timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command),
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def assert_quiet(stderr: str) -> None:
    """No traceback and no warning or error from the exporter (drops, refusals, bad config)."""
    assert "Traceback" not in stderr, stderr
    assert "opentelemetry_exporter_altertable" not in stderr, stderr


def props(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


# ---------------------------------------------------------------------------- quickstart.py


def test_quickstart_lands_events_identity_and_alias(receiver: LocalReceiver) -> None:
    result = run([sys.executable, str(EXAMPLES / "quickstart.py")], example_env(receiver.endpoint))

    assert "telemetry exported" in result.stdout
    assert_quiet(result.stderr)
    events = Counter(
        dict(receiver.query("SELECT event, count(*) FROM altertable.analytics.events GROUP BY 1"))
    )
    assert events == {
        "Step Viewed": 3,
        "Form Submitted": 1,
        "Purchase Completed": 1,
        "Subscription Started": 1,
    }  # and nothing from the 100 untagged health checks

    steps = receiver.query(
        "SELECT properties, distinct_id, anonymous_id FROM altertable.analytics.events "
        "WHERE event = 'Step Viewed' ORDER BY properties->>'step'"
    )
    assert [props(p)["step_name"] for p, _, _ in steps] == ["account", "profile", "plan"]
    assert {(d, a) for _, d, a in steps} == {(USER_ID, ANONYMOUS_ID)}
    step = props(steps[0][0])
    assert step["$url"] == "https://shop.example.com/signup"
    assert step["$ip"] == "203.0.113.7"
    assert step["$release"] == "1.4.2"
    assert step["service.name"] == "shop"

    ((form, form_user),) = receiver.query(
        "SELECT properties, distinct_id FROM altertable.analytics.events "
        "WHERE event = 'Form Submitted'"
    )
    assert (props(form)["form"], props(form)["fields"], form_user) == ("signup", 7, USER_ID)

    ((purchase, purchase_user),) = receiver.query(
        "SELECT properties, distinct_id FROM altertable.analytics.events "
        "WHERE event = 'Purchase Completed'"
    )
    purchase_props = props(purchase)
    assert purchase_user == USER_ID
    assert purchase_props["amount"] == 99.99
    assert purchase_props["currency"] == "USD"
    assert purchase_props["product_id"] == "p_01jza8fr5efvgbxxdd1bwkd0m5"
    assert purchase_props["$lib"] == "opentelemetry-exporter-altertable"

    ((subscription, subscription_user),) = receiver.query(
        "SELECT properties, distinct_id FROM altertable.analytics.events "
        "WHERE event = 'Subscription Started'"
    )
    assert subscription_user == USER_ID
    assert {k: props(subscription)[k] for k in ("plan", "interval", "currency")} == {
        "plan": "premium",
        "interval": "yearly",
        "currency": "EUR",
    }

    # One identity, with the traits identify() set, reachable from every id it ever had.
    ((traits, distinct_ids),) = receiver.query(
        "SELECT traits, distinct_ids FROM altertable.analytics.identities"
    )
    assert props(traits)["email"] == "ada@example.com"
    assert props(traits)["plan"] == "premium"
    assert {USER_ID, BILLING_ID} <= set(distinct_ids)
    linked = receiver.query(
        "SELECT DISTINCT identity_uuid FROM altertable.analytics.identity_distinct_ids "
        f"WHERE distinct_id IN ('{USER_ID}', '{BILLING_ID}')"
    )
    assert len(linked) == 1  # the alias made both ids one identity

    # The tracking guide's per-user query sees the traits on every event.
    rows = receiver.query(
        "SELECT e.event, e.identity_traits->>'email' AS email, e.identity_traits->>'plan' AS plan "
        f"FROM altertable.analytics.events e WHERE e.distinct_id = '{USER_ID}'"
    )
    assert len(rows) == 6
    assert {(email, plan) for _, email, plan in rows} == {("ada@example.com", "premium")}

    assert receiver.requests[("/identify", 200)] == 1
    assert receiver.requests[("/alias", 200)] == 1


# ---------------------------------------------------------------------------- zero_code_app.py


def zero_code_env(endpoint: str) -> dict[str, str]:
    return example_env(
        endpoint,
        OTEL_SERVICE_NAME="shop-web",
        OTEL_TRACES_EXPORTER="altertable",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )


def checkouts(receiver: LocalReceiver) -> list[tuple[Any, ...]]:
    return receiver.query(
        "SELECT distinct_id, properties FROM altertable.analytics.events "
        "WHERE event = 'Checkout Started' ORDER BY distinct_id"
    )


def test_zero_code_app_self_driven_under_opentelemetry_instrument(
    receiver: LocalReceiver,
) -> None:
    result = run(
        [str(INSTRUMENT), sys.executable, str(EXAMPLES / "zero_code_app.py"), "--self-drive"],
        zero_code_env(receiver.endpoint),
    )

    assert result.stdout.count("-> 200") == 3, result.stdout
    assert_quiet(result.stderr)
    all_events = receiver.query("SELECT event FROM altertable.analytics.events")
    assert all_events == [("Checkout Started",), ("Checkout Started",)]  # not the GET /
    rows = checkouts(receiver)
    assert [user for user, _ in rows] == ["u_zero_1", "u_zero_2"]
    first, second = (props(p) for _, p in rows)
    assert (first["cart_value"], first["items"]) == (59.9, 2)
    assert (second["cart_value"], second["items"]) == (120.0, 5)
    assert first["service.name"] == "shop-web"
    assert first["$url"].endswith("/checkout")
    assert first["$user_agent"] == "self-drive/1.0"
    assert first["http.response.status_code"] == 200
    assert len(first["otel.trace_id"]) == 32
    assert first["otel.trace_id"] != second["otel.trace_id"]


def test_zero_code_app_serves_n_requests_then_exits(receiver: LocalReceiver) -> None:
    app = subprocess.Popen(
        [
            str(INSTRUMENT),
            sys.executable,
            str(EXAMPLES / "zero_code_app.py"),
            "--port",
            "0",
            "--requests",
            "2",
        ],
        cwd=ROOT,
        env=zero_code_env(receiver.endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        first_line = app.stdout.readline()
        assert "listening on http://127.0.0.1:" in first_line, first_line
        base = first_line.rsplit(" ", 1)[1].strip()
        order = json.dumps({"user_id": "u_curl", "cart_value": 12.5}).encode()
        answers = []
        for request in (
            urllib.request.Request(f"{base}/checkout", data=order, method="POST"),
            urllib.request.Request(f"{base}/", method="GET"),
        ):
            with urllib.request.urlopen(request, timeout=10) as response:
                answers.append(response.status)
        assert answers == [200, 200]
        _, stderr = app.communicate(timeout=TIMEOUT)  # exits by itself after 2 requests
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
    assert app.returncode == 0, stderr
    assert_quiet(stderr)
    rows = checkouts(receiver)
    assert [(user, props(p)["cart_value"]) for user, p in rows] == [("u_curl", 12.5)]
    assert receiver.query("SELECT count(*) FROM altertable.analytics.events") == [(1,)]


# ---------------------------------------------------------------------------- logs_example.py


def test_logs_example_lands_log_events_and_identity(receiver: LocalReceiver) -> None:
    # Any DeprecationWarning (e.g. from a deprecated logging handler) would fail the run.
    env = example_env(receiver.endpoint, PYTHONWARNINGS="error::DeprecationWarning")

    result = run([sys.executable, str(EXAMPLES / "logs_example.py")], env)

    assert "log events exported" in result.stdout
    assert_quiet(result.stderr)
    rows = receiver.query(
        "SELECT event, distinct_id, properties FROM altertable.analytics.events ORDER BY event"
    )
    assert [(event, user) for event, user, _ in rows] == [
        ("Invoice Paid", "u_logs_7f3a"),
        ("Plan Upgraded", "u_logs_7f3a"),
        ("Trial Ended", "u_logs_7f3a"),
    ]  # the untagged "cache warmed" and the plain logging line are not events
    invoice, upgraded, trial = (props(p) for _, _, p in rows)
    assert {k: invoice[k] for k in ("invoice_id", "amount", "currency")} == {
        "invoice_id": "in_1001",
        "amount": 42.5,
        "currency": "EUR",
    }
    assert trial["trial_days"] == 14
    assert upgraded["plan"] == "pro"
    assert "user.email" not in upgraded  # identity attributes are not properties
    for event in (invoice, upgraded, trial):
        assert event["service.name"] == "billing"
        assert event["$release"] == "2.0.1"

    ((distinct_id, traits),) = receiver.query(
        "SELECT distinct_id, traits FROM altertable.analytics.identities"
    )
    assert distinct_id == "u_logs_7f3a"
    assert props(traits) == {"email": "grace@example.com", "plan": "pro"}


# ---------------------------------------------------------------------------- demo.py


@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_the_guide_queries() -> None:
    started = time.monotonic()
    result = run([sys.executable, str(EXAMPLES / "demo.py")], example_env(), timeout=90)
    elapsed = time.monotonic() - started

    out = result.stdout
    assert "shop: telemetry exported" in out
    for title in (
        "== Events by currency",
        "== One user's events with their identity traits",
        "== Identities",
    ):
        assert title in out, out
    by_currency, one_user, identities = (
        out.split(title, 1)[1]
        for title in ("== Events by currency", "== One user's", "== Identities")
    )
    by_currency = by_currency.split("==", 1)[0]
    one_user = one_user.split("==", 1)[0]

    # Query 1: event, currency, total per event and currency.
    header = next(line for line in by_currency.splitlines() if line.startswith("event"))
    assert header.split() == ["event", "currency", "total"]
    rows = {
        tuple(line.split()[-2:]): line.rsplit(None, 2)[0]
        for line in by_currency.splitlines()
        if line.startswith(("Step", "Form", "Purchase", "Subscription"))
    }
    assert rows == {
        ("NULL", "3"): "Step Viewed",
        ("NULL", "1"): "Form Submitted",
        ("USD", "1"): "Purchase Completed",
        ("EUR", "1"): "Subscription Started",
    }
    assert "(4 rows)" in by_currency

    # Query 2: the user's six events, each with the identity's email and plan.
    header = next(line for line in one_user.splitlines() if line.startswith("event"))
    assert header.split() == ["event", "properties", "timestamp", "email", "plan"]
    assert "(6 rows)" in one_user
    assert one_user.count("ada@example.com") == 6
    assert one_user.count("premium") >= 6

    # Query 3: one identity (its surviving id after the alias) with its traits.
    header = next(line for line in identities.splitlines() if line.startswith("distinct_id"))
    assert header.split() == ["distinct_id", "email", "plan", "updated_at"]
    identity_rows = [line for line in identities.splitlines() if "ada@example.com" in line]
    assert len(identity_rows) == 1
    assert identity_rows[0].split()[:3] == [BILLING_ID, "ada@example.com", "premium"]
    assert "(1 row)" in identities
    assert "demo: done" in out
    # It points at the page, and without a terminal (as here) it does not wait for Ctrl-C.
    assert re.search(r"demo: open http://127\.0\.0\.1:\d+/ in a browser", out), out
    assert "keeps running" not in out
    assert elapsed < 60, f"the demo took {elapsed:.1f}s"
