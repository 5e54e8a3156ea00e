"""Product analytics from logs: OpenTelemetry log records tagged ``analytics.event``.

Run it against any Altertable-compatible endpoint (``altertable-otel serve`` starts one)::

    OTEL_EXPORTER_ALTERTABLE_ENDPOINT=http://127.0.0.1:15001 \
    OTEL_EXPORTER_ALTERTABLE_API_KEY=pk_test_local python examples/logs_example.py

Two ways in, one pipeline (``LoggerProvider`` + ``BatchLogRecordProcessor`` +
``AltertableLogExporter``):

1. the OpenTelemetry Logs API, ``Logger.emit``: a dict body becomes the event's properties;
2. Python's ``logging``, bridged by a small handler that turns ``extra={...}`` fields into log
   record attributes. The SDK's own ``LoggingHandler`` (deprecated in recent SDKs in favour of
   ``opentelemetry-instrumentation-logging``'s handler), or ``opentelemetry-instrument`` with
   ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true``, do the same job: the exporter
   reads the attributes, whoever set them. The bridge here has no dependency and no
   deprecation warning on any supported SDK.

Records without ``analytics.event`` are ordinary logs: the exporter skips them.
"""

from __future__ import annotations

import logging

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from opentelemetry_exporter_altertable import AltertableLogExporter

USER_ID = "u_logs_7f3a"

#: Attributes every ``logging.LogRecord`` has; anything else on a record came from ``extra``.
_STANDARD_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)
_SEVERITY = {
    logging.DEBUG: SeverityNumber.DEBUG,
    logging.INFO: SeverityNumber.INFO,
    logging.WARNING: SeverityNumber.WARN,
    logging.ERROR: SeverityNumber.ERROR,
    logging.CRITICAL: SeverityNumber.FATAL,
}


class AnalyticsLogHandler(logging.Handler):
    """Forwards ``logging`` records to an OpenTelemetry ``LoggerProvider``.

    The message becomes the body and ``extra`` fields with primitive values become attributes,
    so ``extra={"analytics.event": "Plan Upgraded", "user.id": ...}`` tags the record.
    """

    def __init__(self, logger_provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._provider = logger_provider

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attributes = {
                key: value
                for key, value in vars(record).items()
                if key not in _STANDARD_RECORD_FIELDS and isinstance(value, (str, bool, int, float))
            }
            self._provider.get_logger(record.name).emit(
                timestamp=int(record.created * 1e9),
                severity_number=_SEVERITY.get(record.levelno, SeverityNumber.UNSPECIFIED),
                severity_text=record.levelname,
                body=record.getMessage(),
                attributes=attributes,
            )
        except Exception:
            self.handleError(record)


def setup() -> LoggerProvider:
    """One provider, one exporter (settings from the environment), the SDK's batching."""
    resource = Resource.create({"service.name": "billing", "service.version": "2.0.1"})
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(BatchLogRecordProcessor(AltertableLogExporter()))
    return provider


def with_the_logs_api(provider: LoggerProvider) -> None:
    """``Logger.emit``: the dict body is merged into the event's properties."""
    otel_logger = provider.get_logger("billing.invoices")
    otel_logger.emit(
        severity_number=SeverityNumber.INFO,
        body={"invoice_id": "in_1001", "amount": 42.5, "currency": "EUR"},
        attributes={"analytics.event": "Invoice Paid", "user.id": USER_ID},
    )
    # ``analytics.event = True`` names the event after the record's own event_name.
    otel_logger.emit(
        event_name="Trial Ended",
        severity_number=SeverityNumber.INFO,
        body={"trial_days": 14},
        attributes={"analytics.event": True, "user.id": USER_ID},
    )
    otel_logger.emit(severity_number=SeverityNumber.DEBUG, body="cache warmed")  # skipped


def with_python_logging(provider: LoggerProvider) -> None:
    """``logging`` with ``extra``: the extra fields become the event's properties and traits."""
    log = logging.getLogger("billing.accounts")
    log.setLevel(logging.INFO)
    handler = AnalyticsLogHandler(provider)
    log.addHandler(handler)
    try:
        log.info(
            "user %s upgraded",
            USER_ID,
            extra={
                "analytics.event": "Plan Upgraded",
                "user.id": USER_ID,
                "plan": "pro",
                # Identity traits: the export also sends an identify call for this user.
                "user.email": "grace@example.com",
                "analytics.traits.plan": "pro",
            },
        )
        log.info("nightly invoice run finished")  # an ordinary log line: skipped
    finally:
        log.removeHandler(handler)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    provider = setup()
    with_the_logs_api(provider)
    with_python_logging(provider)
    provider.shutdown()  # flushes the batch processor, then stops the exporter
    print("billing: log events exported")


if __name__ == "__main__":
    main()
