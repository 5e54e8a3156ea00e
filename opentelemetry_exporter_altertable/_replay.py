"""``altertable-otel replay``: deliver what dead processes left in a spool directory.

For cron jobs and sidecars: recovers the journals of processes that are gone (into the spool),
then re-sends the spool, oldest first, with the exporters' settings from the
``OTEL_EXPORTER_ALTERTABLE_*`` variables. Prints what it delivered and what remains, and
exits non-zero when anything remains undelivered (including journals it had to leave alone:
those of running processes, of another format version, or written by an exporter with a
``before_send`` hook, which only such an exporter may send).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TextIO

from . import environment_variables as ev

__all__ = ["run_replay"]

#: Rounds without progress before ``replay`` gives up (each round is one export's replay).
_STALLED_ROUNDS = 2


def run_replay(spool_dir: str | None, out: TextIO, err: TextIO) -> int:
    """Recover and deliver; returns the exit status (0: nothing remains)."""
    from .exporters import AltertableSpanExporter

    directory = spool_dir or os.environ.get(ev.OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR, "")
    if not directory:
        print(
            f"no spool directory: pass --spool-dir or set {ev.OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR}",
            file=err,
        )
        return 2
    if not os.path.isdir(directory):
        print(f"nothing to replay: {directory} does not exist", file=out)
        return 0
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package = logging.getLogger(__name__.rpartition(".")[0])
    package.addHandler(handler)
    try:
        exporter = AltertableSpanExporter(spool_dir=directory)  # recovers dead journals
        try:
            return _deliver(exporter, directory, out)
        finally:
            exporter.shutdown()
    finally:
        package.removeHandler(handler)


def _deliver(exporter: object, directory: str, out: TextIO) -> int:
    from .exporters import AltertableSpanExporter

    assert isinstance(exporter, AltertableSpanExporter)
    backlog = exporter._core.backlog
    if backlog.spool is None:
        print(f"cannot use {directory} (see the error above)", file=out)
        return 1
    stalled = 0
    last: tuple[object, object] | None = None
    while stalled < _STALLED_ROUNDS and exporter.config.api_key:
        stats = exporter.stats()
        if not stats["spool_files"]:
            break
        exporter.export([])
        now = exporter.stats()
        progress = (now["calls_replayed"], now["spool_files"])
        stalled = stalled + 1 if progress == last or progress[1] == stats["spool_files"] else 0
        last = progress
        if stalled:
            time.sleep(0.1)
    scan = backlog.recover(exporter._core.calls_from_records, before_send=False)
    stats = exporter.stats()
    print(
        f"recovered {stats['calls_recovered']} call(s) from journals of ended processes; "
        f"delivered {stats['calls_replayed']} call(s)",
        file=out,
    )
    remaining = bool(stats["spool_files"])
    if stats["spool_files"]:
        key = ev.OTEL_EXPORTER_ALTERTABLE_API_KEY
        hint = "" if exporter.config.api_key else f" (no API key: set {key})"
        print(
            f"remaining: {stats['spool_files']} spool file(s), {stats['spool_bytes']} bytes{hint}",
            file=out,
        )
    if scan is not None and scan.remaining:
        remaining = True
        reasons = [
            (scan.alive, "of running processes"),
            (scan.other_version, "of another version of the package"),
            (scan.needs_before_send, "written with a before_send hook (left for your exporter)"),
            (scan.not_kept, "that could not be spooled"),
        ]
        for count, why in reasons:
            if count:
                print(f"remaining: {count} journal(s) {why}", file=out)
    if not remaining:
        print("nothing remains", file=out)
    return 1 if remaining else 0
