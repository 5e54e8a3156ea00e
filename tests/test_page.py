"""The receiver's page in a real headless Chromium: events arrive, the SQL box, safe rendering.

Chromium comes from Debian (``make browser``, a prerequisite of ``make pytest``); the page is
driven over the DevTools protocol (``tests/browser.py``). The screenshot is kept as a test
artefact in ``artifacts/receiver-page.png``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from browser import Browser
from otel_builders import finished_spans

from opentelemetry_exporter_altertable import AltertableSpanExporter
from opentelemetry_exporter_altertable.receiver import LocalReceiver

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver(environments=None) as r:
        yield r


@pytest.fixture
def browser() -> Iterator[Browser]:
    chromium = Browser()
    try:
        yield chromium
    finally:
        chromium.close()


def export_events(
    receiver: LocalReceiver, events: list[tuple[str, str, dict[str, object]]]
) -> None:
    now = time.time_ns()
    specs = [
        (
            f"span-{i}",
            {"analytics.event": event, "user.id": user, **properties},
            (),
            now - 1_000_000,
            now + i * 1_000_000,
        )
        for i, (event, user, properties) in enumerate(events)
    ]
    exporter = AltertableSpanExporter(api_key="pk_test_page", endpoint=receiver.endpoint)
    try:
        assert exporter.export(finished_spans(specs, resource={"service.name": "shop"})).name == (
            "SUCCESS"
        )
    finally:
        exporter.shutdown()


def rows_text(browser: Browser, table: str) -> list[list[str]]:
    script = (
        f"[...document.querySelectorAll('#{table} tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )
    result: list[list[str]] = browser.evaluate(script)
    return result


def test_page_shows_events_live_runs_sql_and_renders_values_as_text(  # noqa: PLR0915  # one browser session walks the whole page
    receiver: LocalReceiver, browser: Browser
) -> None:
    page = requests.get(receiver.page_url, timeout=10)
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"

    browser.navigate(receiver.page_url)
    browser.wait_until("document.getElementById('status').textContent.includes('0 recent')")

    # Events sent by the exporter are on screen within 2 s, newest first.
    identify = {
        "environment": "production",
        "distinct_id": "user-ada",
        "traits": {"email": "ada@example.com", "plan": "pro"},
    }
    headers = {"X-API-Key": "pk_test_page"}
    response = requests.post(receiver.endpoint + "/identify", json=identify, headers=headers)
    assert response.status_code == 200
    alias = {"environment": "production", "distinct_id": "anon-42", "new_user_id": "user-ada"}
    response = requests.post(receiver.endpoint + "/alias", json=alias, headers=headers)
    assert response.status_code == 200
    export_events(
        receiver,
        [
            ("Step Viewed", "user-ada", {"step": 1}),
            ("Purchase Completed", "user-ada", {"currency": "USD", "note": XSS}),
        ],
    )
    exported = time.monotonic()
    browser.wait_until("document.querySelectorAll('#events tbody tr').length === 2", timeout=2.0)
    assert time.monotonic() - exported < 2.0
    events = rows_text(browser, "events")
    assert [row[1:] for row in events] == [
        ["Purchase Completed", "user-ada", "production"],
        ["Step Viewed", "user-ada", "production"],
    ]

    # A click shows the properties and the identity's traits; the hostile value is text.
    browser.evaluate("document.querySelector('#events tbody tr').click()")
    shown = browser.evaluate("document.getElementById('details-properties').textContent")
    assert json.loads(shown)["note"] == XSS
    traits = browser.evaluate("document.getElementById('details-traits').textContent")
    assert json.loads(traits) == {"email": "ada@example.com", "plan": "pro"}
    assert browser.evaluate("document.querySelectorAll('img').length") == 0

    # Identities with traits and linked ids.
    browser.wait_until("document.querySelectorAll('#identities tbody tr').length === 1")
    identity = rows_text(browser, "identities")[0]
    assert identity[0] == "user-ada" and "anon-42" in identity[3]
    assert json.loads(identity[2]) == {"email": "ada@example.com", "plan": "pro"}

    # The filter narrows by event name.
    browser.evaluate(
        "{ const f = document.getElementById('filter-event'); f.value = 'Step';"
        "f.dispatchEvent(new Event('input')) }"
    )
    browser.wait_until("document.querySelectorAll('#events tbody tr').length === 1")
    assert rows_text(browser, "events")[0][1] == "Step Viewed"

    # The SQL box: a query answers as a table; a write is refused and said plainly.
    browser.evaluate(
        "document.getElementById('sql').value = "
        "\"SELECT event, properties->>'note' AS note FROM altertable.analytics.events "
        "WHERE properties->>'note' IS NOT NULL\";"
        "document.getElementById('run').click()"
    )
    browser.wait_until("document.querySelectorAll('#sql-result tbody tr').length === 1")
    assert rows_text(browser, "sql-result") == [["Purchase Completed", XSS]]
    browser.evaluate(
        "document.getElementById('sql').value = 'DROP VIEW altertable.analytics.events';"
        "document.getElementById('run').click()"
    )
    browser.wait_until("!document.getElementById('sql-error').hidden")
    error = browser.evaluate("document.getElementById('sql-error').textContent")
    assert "refused" in error
    assert receiver.query("SELECT count(*) FROM altertable.analytics.events") == [(2,)]

    # The guide's queries are one click away.
    browser.evaluate(
        "[...document.querySelectorAll('#guide-queries button')]"
        ".find(b => b.textContent === 'Events by currency').click()"
    )
    browser.wait_until(
        "document.querySelector('#sql-result thead') &&"
        " document.querySelector('#sql-result thead').textContent === 'eventcurrencytotal'"
    )

    # The chart: both event names in its legend, drawn on the page's own canvas.
    browser.wait_until("document.getElementById('legend').children.length === 2", timeout=8)
    legend = browser.evaluate("document.getElementById('legend').textContent")
    assert legend == "Purchase CompletedStep Viewed"

    browser.evaluate(
        "{ const f = document.getElementById('filter-event'); f.value = '';"
        "f.dispatchEvent(new Event('input')) }"
    )
    browser.wait_until("document.querySelectorAll('#events tbody tr').length === 2")
    browser.screenshot(ARTIFACTS / "receiver-page.png")
    assert (ARTIFACTS / "receiver-page.png").stat().st_size > 10_000
    assert browser.dialogs() == []  # no alert from the hostile property
    assert browser.console_errors() == []


def test_page_refuses_to_be_read_from_another_origin(receiver: LocalReceiver) -> None:
    response = requests.post(
        receiver.endpoint + "/query",
        json={"statement": "SELECT 1"},
        auth=("local", "local"),
        headers={"Origin": "http://attacker.example"},
        timeout=10,
    )
    assert response.status_code == 403


def test_page_says_which_ports_hear_otlp(receiver: LocalReceiver, browser: Browser) -> None:
    import argparse

    from support import free_port

    from opentelemetry_exporter_altertable.bridge._cli import (
        add_otlp_page_route,
        open_otlp_ports,
    )

    with socket_held() as taken:
        flags = argparse.Namespace(
            no_otlp_ports=False, otlp_grpc_port=free_port(), otlp_http_port=taken
        )
        ports = open_otlp_ports(receiver, "pk_test_page", flags)
    try:
        add_otlp_page_route(receiver, ports, own=True)
        browser.navigate(receiver.page_url)
        browser.wait_until("!document.getElementById('otlp').hidden")
        line = browser.evaluate("document.getElementById('otlp').textContent")
    finally:
        ports.stop()
    grpc_address = ports.listening["grpc"]
    assert grpc_address is not None
    assert line == (
        f"Hears OTLP on: OTLP/HTTP {receiver.endpoint} (/v1/traces, /v1/logs) · "
        f"OTLP/gRPC {grpc_address} · OTLP/HTTP standard port taken: not heard"
    )
    assert browser.console_errors() == []


def test_a_receiver_started_from_code_shows_no_otlp_line(
    receiver: LocalReceiver, browser: Browser
) -> None:
    browser.navigate(receiver.page_url)
    browser.wait_until("document.querySelector('#status').textContent.includes('event')")
    assert browser.evaluate("document.getElementById('otlp').hidden") is True
    assert browser.console_errors() == []


@contextlib.contextmanager
def socket_held() -> Iterator[int]:
    """A port some other program listens on, for as long as the block runs."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]
