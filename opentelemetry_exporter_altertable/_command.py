"""What every ``altertable-otel`` subcommand shares: its name and how a command fails.

A :class:`CommandError` is a failure worth one clear line on stderr and an exit status, not
a traceback; ``cli.main`` prints it.
"""

from __future__ import annotations

__all__ = ["PROG", "CommandError"]

PROG = "altertable-otel"


class CommandError(Exception):
    """A failure worth one clear line on stderr (and exit ``status``, 1 unless given), not a
    traceback. Status 2 is a refused command line, as argparse uses it."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
