"""What the package writes to its log: one warning per key, and no line of unbounded length.

Real exporters against a :class:`faultserver.FaultServer` on loopback; the package's records
are captured and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faultserver import Answer, FaultServer, env_not_found_400, reject_items
from opentelemetry.sdk.trace.export import SpanExportResult
from support import PACKAGE, MakeExporter, Spans, package_records

# ---------------------------------------------------------------------------- one warning per key


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[str], list[str]]]:
    with caplog.at_level(logging.WARNING):
        yield lambda text: [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith(PACKAGE) and r.levelno == logging.WARNING
            and text in r.getMessage()
        ]  # fmt: skip


def test_one_warning_per_key_for_the_life_of_an_exporter(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    warnings_logged: Callable[[str], list[str]],
) -> None:
    exporter = make_exporter()
    for n in range(3):
        batch = spans(2, start=2 * n, **{"$plan": "pro"})
        assert exporter.export(batch) is SpanExportResult.SUCCESS
    assert len(warnings_logged("plan")) == 1
    assert exporter.export(spans(2, start=6, **{"$seats": 3})) is SpanExportResult.SUCCESS
    assert len(warnings_logged("plan")) == 1
    assert len(warnings_logged("seats")) == 1
    # Another exporter has its own memory: it says it once more.
    other = make_exporter()
    assert other.export(spans(1, start=8, **{"$plan": "pro"})) is SpanExportResult.SUCCESS
    assert len(warnings_logged("plan")) == 2
    assert len(server.accepted_items("/track")) == 9


# ---------------------------------------------------------------------------- bounded lines


def test_no_log_line_carries_an_unbounded_value(
    server: FaultServer,
    make_exporter: MakeExporter,
    spans: Spans,
    logs: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    huge = "x" * 1_000_000
    monkeypatch.setenv("OTEL_EXPORTER_ALTERTABLE_TIMEOUT", huge)  # a bad setting, echoed
    server.add_rule(reject_items(lambda item: item["event"] == huge))
    server.script("/identify", [Answer(400, body={"ok": False, "error_code": huge})])
    exporter = make_exporter(max_batch_size=4)

    exporter.export(spans(3, event=huge) + spans(1, start=3, **{"user.email": "a@b.c"}))
    exporter.export(spans(1, start=10, event=" " * 100_000))
    server.set_default(env_not_found_400())
    other = make_exporter(environment=huge)
    other.export(spans(1, start=20))
    other.shutdown()
    exporter.shutdown()

    records = package_records(logs, logging.DEBUG)
    assert records
    longest = max(len(r.getMessage()) for r in records)
    assert longest < 1500, longest
