"""What the spool's tests share: its log records, captured, and a pid no process has."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator

LOGGER = "opentelemetry_exporter_altertable._spool"


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
    logger = logging.getLogger(LOGGER)
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
