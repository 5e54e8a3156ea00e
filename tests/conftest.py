"""Shared fixtures: a fault-injecting server, exporters pointed at it, tagged spans."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faultserver import FaultServer
from opentelemetry.sdk.trace import ReadableSpan
from otel_builders import SECOND_NS, T0_NS, finished_spans

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy

#: A key no log line or exception may ever show.
FAKE_API_KEY = "pk_test_SECRET-4f1c9d2e7a-NEVER-LOG-ME"


def fast_retry() -> RetryPolicy:
    """Quick, jitter-free retries: exact attempt counts, tests that take milliseconds.

    Built when asked for, not at import: under ``make mutation`` a mutated ``RetryPolicy``
    must fail a test, not the loading of this file.
    """
    return RetryPolicy(total=3, backoff_factor=0.01, backoff_max=0.05, jitter=0)


def __getattr__(name: str) -> Any:
    """``from conftest import FAST_RETRY``: :func:`fast_retry`'s policy."""
    if name == "FAST_RETRY":
        return fast_retry()
    raise AttributeError(name)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A started :class:`FaultServer` on 127.0.0.1, stopped after the test."""
    with FaultServer() as fault_server:
        yield fault_server


@pytest.fixture
def make_exporter(
    server: FaultServer,
) -> Iterator[Callable[..., AltertableSpanExporter]]:
    """Build span exporters aimed at ``server`` (short timeout, fast retries); all shut down."""
    built: list[AltertableSpanExporter] = []

    def make(**kwargs: Any) -> AltertableSpanExporter:
        settings: dict[str, Any] = {
            "api_key": FAKE_API_KEY,
            "endpoint": server.endpoint,
            "timeout": 2.0,
            "retry": fast_retry(),
        }
        settings.update(kwargs)
        exporter = AltertableSpanExporter(**settings)
        built.append(exporter)
        return exporter

    yield make
    for exporter in built:
        exporter.shutdown(timeout_millis=1000)


def tagged_spans(
    count: int, *, start: int = 0, event: str = "Order Placed", **attributes: Any
) -> list[ReadableSpan]:
    """``count`` finished spans tagged ``analytics.event``; property ``seq`` numbers them."""
    specs = [
        (
            f"span-{seq}",
            {"analytics.event": event, "user.id": f"user-{seq % 7}", "seq": seq, **attributes},
            (),
            T0_NS - SECOND_NS,
            T0_NS + seq,
        )
        for seq in range(start, start + count)
    ]
    return finished_spans(specs, resource={"service.name": "shop"})


@pytest.fixture
def spans() -> Callable[..., list[ReadableSpan]]:
    """:func:`tagged_spans` as a fixture: ``spans(50, start=100, event="bad")``."""
    return tagged_spans


@pytest.fixture
def api_key() -> str:
    """The key every ``make_exporter`` exporter uses (distinctive, to search logs for it)."""
    return FAKE_API_KEY


@pytest.fixture
def no_altertable_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``OTEL_EXPORTER_ALTERTABLE_*`` / ``ALTERTABLE_*`` setting leaks in from the shell."""
    for name in list(os.environ):
        if name.startswith(("OTEL_EXPORTER_ALTERTABLE_", "ALTERTABLE_")):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _loopback_bypasses_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test talks to 127.0.0.1: a proxy set in the CI environment must not intercept it."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
