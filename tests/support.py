"""What the tests share besides fixtures: the fake key, quick retries, tagged spans, log filters.

Fixtures pytest injects live in ``conftest.py`` (which builds on this module); everything a test
imports by name lives here, so no test imports from ``conftest``.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from otel_builders import SECOND_NS, T0_NS, finished_spans

from opentelemetry_exporter_altertable import AltertableSpanExporter, RetryPolicy
from opentelemetry_exporter_altertable._spool import Spool

#: The package's logger name, the parent of every module's logger.
PACKAGE = "opentelemetry_exporter_altertable"

#: A key no log line or exception may ever show.
FAKE_API_KEY = "pk_test_SECRET-4f1c9d2e7a-NEVER-LOG-ME"

#: The ``make_exporter`` fixture: builds a span exporter aimed at the test's server.
MakeExporter = Callable[..., AltertableSpanExporter]
#: The ``spans`` fixture: :func:`tagged_spans`.
Spans = Callable[..., list[ReadableSpan]]


def fast_retry() -> RetryPolicy:
    """Quick, jitter-free retries: exact attempt counts, tests that take milliseconds.

    Built when asked for, not at import: under ``make mutation`` a mutated ``RetryPolicy``
    must fail a test, not the loading of this file.
    """
    return RetryPolicy(total=3, backoff_factor=0.01, backoff_max=0.05, jitter=0)


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


def seqs(items: list[Any]) -> list[int]:
    """The ``seq`` property of each item (as :func:`tagged_spans` numbers them), in order."""
    return [item["properties"]["seq"] for item in items]


def package_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The package's own records at ``level`` and above."""
    return [r for r in caplog.records if r.name.startswith(PACKAGE) and r.levelno >= level]


def spooled_items(directory: Path) -> int:
    """Items waiting in the spool at ``directory`` (read without taking them)."""
    spool = Spool(directory)
    claims = []
    try:
        while (claim := spool.claim()) is not None:
            claims.append(claim)
        return sum(claim.items for claim in claims)
    finally:
        for claim in claims:
            claim.release()


# ---------------------------------------------------------------------------- the spool's log

SPOOL_LOGGER = f"{PACKAGE}._spool"


class Records(logging.Handler):
    """Every record the spool's logger emits, whatever propagation the package configures."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@contextlib.contextmanager
def spool_log() -> Iterator[Records]:
    """Capture the spool's records at DEBUG and up for the block, then restore the logger."""
    handler = Records()
    logger = logging.getLogger(SPOOL_LOGGER)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: no process has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
