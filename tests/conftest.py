"""The fixtures pytest injects: a fault-injecting server, exporters aimed at it, tagged spans, logs.

What tests import by name is in ``support.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer
from opentelemetry.sdk.trace import ReadableSpan
from support import FAKE_API_KEY, Records, fast_retry, spool_log, tagged_spans

from opentelemetry_exporter_altertable import AltertableSpanExporter


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


@pytest.fixture
def spans() -> Callable[..., list[ReadableSpan]]:
    """:func:`tagged_spans` as a fixture: ``spans(50, start=100, event="bad")``."""
    return tagged_spans


@pytest.fixture
def api_key() -> str:
    """The key every ``make_exporter`` exporter uses (distinctive, to search logs for it)."""
    return FAKE_API_KEY


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every logger, DEBUG and up."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


@pytest.fixture
def log() -> Iterator[Records]:
    """The spool's own records, DEBUG and up, whatever propagation the package configures."""
    with spool_log() as handler:
        yield handler


@pytest.fixture
def no_altertable_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``OTEL_EXPORTER_ALTERTABLE_*`` / ``ALTERTABLE_*`` setting leaks in from the shell."""
    for name in list(os.environ):
        if name.startswith(("OTEL_EXPORTER_ALTERTABLE_", "ALTERTABLE_")):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _private_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bridge started with no spool directory journals under ``$XDG_STATE_HOME``: each test
    gets its own, so no test recovers (and sends) what another left."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(autouse=True)
def _loopback_bypasses_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test talks to 127.0.0.1: a proxy set in the CI environment must not intercept it."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
