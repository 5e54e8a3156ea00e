"""The exporter's own log lines never loop back through an OpenTelemetry log pipeline."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from support import refusing_endpoint

from opentelemetry_exporter_altertable import AltertableLogExporter, RetryPolicy


class _Bridge(logging.Handler):
    """What a logging-to-OpenTelemetry handler does: every Python record becomes an OTel one."""

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__()
        self._provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        self._provider.get_logger(record.name).emit(
            body=record.getMessage(),
            # Worst case: the bridge even tags it, so only the scope can tell it apart.
            attributes={"analytics.event": "Log Line", "user.id": "u1"},
        )


def test_own_warnings_are_not_exported_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="opentelemetry_exporter_altertable")
    with refusing_endpoint() as down:  # nobody listens: every export logs a warning
        exporter = AltertableLogExporter(
            api_key="pk_test_loop", endpoint=down, timeout=1, retry=RetryPolicy(total=0)
        )
        provider = LoggerProvider(resource=Resource({}), shutdown_on_exit=False)
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        bridge = _Bridge(provider)
        package_logger = logging.getLogger("opentelemetry_exporter_altertable")
        package_logger.addHandler(bridge)
        try:
            provider.get_logger("app").emit(
                body="hello", attributes={"analytics.event": "App Event", "user.id": "u1"}
            )
            stats = exporter.stats()
        finally:
            package_logger.removeHandler(bridge)
            provider.shutdown()
    # The app's record was seen once; the exporter's own warning about it was not exported
    # (had it been, it would have been seen, failed again, and warned again, and so on).
    assert any(r.name.startswith("opentelemetry_exporter_altertable") for r in caplog.records)
    assert stats["records_seen"] == 1
