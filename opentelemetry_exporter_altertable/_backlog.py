"""What is owed: the spool, replaying it, keeping the calls an export could not deliver.

The exporter hands every :class:`DeliveryReport` here. Calls still owed go to the spool when one
is configured (and safe to use), else they are counted as dropped; spooled calls are re-sent,
oldest first, before an export sends its own. A spool directory that turns unsafe disables the
spool for good, with one error, rather than failing exports.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from . import environment_variables as ev
from ._answers import CONFIG_ERRORS
from ._config import ExporterConfig
from ._journal import Journal, Recovered, Scan, processes_named, recover_directory
from ._mapping import Calls, Record
from ._spool import Spool
from ._stats import DropReporter, Stats
from ._transport import DeliveryReport, Transport

_logger = logging.getLogger(__name__)

#: How many spooled files one export may replay before sending its own calls.
REPLAY_FILES_PER_EXPORT = 8
#: Seconds between two looks for dead processes' journals by a running exporter's exports.
RECOVER_INTERVAL = 10.0
#: Recovered calls are spooled in parcels of at most this many calls.
RECOVERED_PER_PARCEL = 500

#: Maps recovered neutral records into calls as an export would (``before_send`` included).
ToCalls = Callable[[list[Record]], Calls]


def spool_reason(reason: str) -> str:
    """Calls refused for a setting the operator can fix are kept only for a while ("auth")."""
    return "auth" if reason in CONFIG_ERRORS else "retryable"


class Backlog:
    """The calls an exporter still owes, and the spool that keeps them across exports."""

    def __init__(self, config: ExporterConfig, stats: Stats, drops: DropReporter) -> None:
        self._config = config
        self._stats = stats
        self._drops = drops
        self._spool: Spool | None = None
        # _open sets it whenever a spool exists, else it is unread.
        self._may_have_files = False  # pragma: no mutate
        self._recovery: tuple[ToCalls, bool] | None = None
        self._recovered_at = 0.0
        if config.spool_dir:
            self._open()

    def _open(self) -> None:
        try:
            # A claim must outlive any export that could still be sending it.
            self._spool = Spool(
                self._config.spool_dir or "",  # pragma: no mutate  # never empty here (for mypy)
                max_bytes=self._config.spool_max_bytes,
                stale_claim_age=max(600.0, 4 * self._config.timeout),
            )
        except ValueError as exc:  # a directory we must not write to: say so, go on without
            self._disable(exc)
        else:
            self._may_have_files = True

    def _disable(self, exc: Exception) -> None:
        _logger.error("Altertable spool disabled: %s", exc)
        self._spool = None

    @property
    def spool(self) -> Spool | None:
        """The spool in use, or ``None`` (not configured, or disabled)."""
        return self._spool

    def stats(self, stats: Stats) -> dict[str, object]:
        """``stats``' snapshot with the spool's own figures (its losses, what it holds)."""
        if self._spool is None:
            return stats.snapshot()
        snapshot = stats.snapshot(also_dropped=self._spool.lost)
        snapshot["spool_files"], snapshot["spool_bytes"] = self._spool.pending()
        return snapshot

    def replay(self, transport: Transport, deadline: float) -> None:
        """Re-send spooled calls, oldest first, while the API accepts them.

        Now and then it first looks for journals of processes that died meanwhile (pool
        children, recycled workers), so a long-running parent delivers what they left. That
        look keeps ``deadline`` too: journals it has no time for are left to the next export.
        """
        if (
            self._recovery is not None
            and not transport.exiting
            and time.monotonic() - self._recovered_at >= RECOVER_INTERVAL
        ):
            scan = self.recover(*self._recovery, deadline=deadline)
            if scan is not None and scan.deferred:
                self.recover_soon()  # cut short: the next export goes on where this one stopped
        if self._spool is None or not self._may_have_files or transport.exiting:
            return  # at exit, the little time left is for this export's own calls
        try:
            self._replay(self._spool, transport, deadline)
        except ValueError as exc:  # the spool directory became unsafe to use
            self._disable(exc)

    def _replay(self, spool: Spool, transport: Transport, deadline: float) -> None:
        for _ in range(REPLAY_FILES_PER_EXPORT):
            # Saves a claim only: deliver() itself sends nothing past the deadline or once
            # closed (the claim is then released untouched).
            if time.monotonic() >= deadline or transport.closed:  # pragma: no mutate
                return
            claim = spool.claim()
            if claim is None:
                self._may_have_files = False
                return
            report = transport.deliver(claim.calls, deadline)
            self._stats.add("calls_replayed", sum(report.accepted.values()))
            self._drops.report(report.rejected, report.detail)
            if not report.pending:
                claim.done()
                continue
            if sum(report.accepted.values()) or report.rejected:
                # Part went through: keep only what is still owed, in a fresh file, and only
                # then let the original go. A crash between the two re-sends some calls; a
                # put that fails keeps the original whole: neither loses one.
                reason = report.pending_reason
                owed = sum(len(items) for items in report.pending.values())
                kept = spool.put(report.pending, reason=spool_reason(reason or claim.reason))
                if kept == owed:
                    claim.done()
                else:
                    _logger.warning(
                        "could not re-spool the %d call(s) still owed from a spool file; it is "
                        "kept whole, so %d delivered call(s) will be sent again",
                        owed,
                        sum(report.accepted.values()),
                    )
                    claim.release()
            else:
                claim.release()
            if report.interrupted is not None:
                raise report.interrupted
            return

    def keep(self, report: DeliveryReport) -> int:
        """Spool what is still owed, or count it lost; then log this export's drops once.

        Returns how many of the report's owed calls the spool took (the bridge answers by it).
        """
        dropped = Counter(report.rejected)
        owed = sum(len(v) for v in report.pending.values())
        detail = report.detail
        kept = 0
        if owed:
            # Owed calls always carry a reason: the fallback is for the type (unreachable).
            reason = report.pending_reason or "retryable"  # pragma: no mutate
            if self._spool is not None:
                try:
                    kept = self._spool.put(report.pending, reason=spool_reason(reason))
                except ValueError as exc:
                    self._disable(exc)
                else:
                    self._may_have_files = self._may_have_files or kept > 0
                    self._stats.add("calls_spooled", kept)
                    if kept < owed:
                        # Spool.put keeps all or none: kept is 0 here.
                        refused = owed - kept  # pragma: no mutate
                        self._stats.drop("spool-refused", refused)
                        dropped["spool-refused"] += refused
            if self._spool is None:
                self._stats.drop(f"undelivered-{reason}", owed)
                dropped[f"undelivered-{reason}"] += owed
                detail = (
                    f"set {ev.OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR} to keep undelivered calls on disk"
                )
        self._drops.report(dropped, detail)
        return kept

    def after_fork(self) -> None:
        """A forked child opens its own spool handle (fresh locks, its own claims)."""
        if self._spool is not None:
            self._open()

    def recover_soon(self) -> None:
        """Have the next :meth:`replay` look for dead processes' journals (within its export's
        deadline) rather than wait out :data:`RECOVER_INTERVAL`."""
        self._recovered_at = float("-inf")

    # ------------------------------------------------------------------ journals

    def journal(self, *, before_send: bool) -> Journal | None:
        """A journal for a processor of this exporter, in the spool directory; None without one."""
        spool = self._spool
        if spool is None:
            return None
        return Journal(
            spool.directory,
            max_bytes=self._config.spool_max_bytes,
            meta={"before_send": before_send},
            prepare_dir=spool._ensure_dir,
        )

    def recover(
        self, to_calls: ToCalls, before_send: bool, *, deadline: float | None = None
    ) -> Scan | None:
        """Spool what the journals of dead processes hold; one log line per process.

        Only an exporter with a ``before_send`` hook recovers journals written by one: the hook
        may scrub personal data, and a recoverer without it would send them unscrubbed. With a
        ``deadline`` (an export's) no journal is taken past it; the rest stay on disk.
        """
        spool = self._spool
        self._recovery = (to_calls, before_send)
        self._recovered_at = time.monotonic()
        if spool is None:
            return None
        try:
            return recover_directory(
                spool.directory,
                lambda recs: self._keep_recovered(spool, recs, to_calls, salvaged=False),
                may_send_scrubbed=before_send,
                deadline=deadline,
            )
        except ValueError as exc:  # the spool directory became unsafe to use
            self._disable(exc)
            return None

    def salvage(self, journal: Journal, to_calls: ToCalls) -> None:
        """At shutdown: spool what this process's own journal still holds, then remove it."""
        spool = self._spool
        try:
            for rec in journal.unretired():
                if spool is None or not self._keep_recovered(spool, [rec], to_calls, salvaged=True):
                    return  # left on disk: the next exporter or `replay` recovers it
                journal.retire(rec.seqs)
        except ValueError as exc:
            self._disable(exc)
        finally:
            journal.close()

    def _keep_recovered(
        self, spool: Spool, recs: list[Recovered], to_calls: ToCalls, *, salvaged: bool
    ) -> bool:
        calls = recovered_calls(recs, to_calls)
        total = sum(len(items) for items in calls.values())
        for parcel in parcels(calls, RECOVERED_PER_PARCEL):
            if not spool.put(parcel, reason="retryable"):
                return False  # the journal stays: whoever comes next tries again
        self._may_have_files = self._may_have_files or total > 0
        self._stats.add("calls_recovered", total)
        if salvaged:
            _logger.warning(
                "Altertable: %d journaled call(s) were not exported by shutdown; spooled for "
                "delivery by the next exporter using %s",
                total,
                spool.directory,
            )
        else:
            _logger.warning(
                "Altertable: recovered %d call(s) from the journal of %s, which ended before "
                "delivering them; spooled for delivery",
                total,
                processes_named(recs),
            )
        return True


def recovered_calls(recs: Sequence[Recovered], to_calls: ToCalls) -> dict[str, list[Any]]:
    """What recovered journals owe, by endpoint: each one's records mapped by ``to_calls``
    (the recovering exporter's settings and ``before_send``), then the calls it held mapped
    already. The spool and the bridge's journal both keep exactly this."""
    calls: dict[str, list[Any]] = {}
    for rec in recs:
        mapped = to_calls(rec.records).by_endpoint() if rec.records else {}
        for source in (mapped, rec.calls):
            for endpoint, items in source.items():
                calls.setdefault(endpoint, []).extend(items)
    return calls


def parcels(calls: Mapping[str, list[Any]], size: int) -> Iterator[dict[str, list[Any]]]:
    """``calls`` in parcels of at most ``size``, one endpoint each: identifies, then aliases,
    then tracks (the order an export sends them in), then any other endpoint."""
    order = ["identify", "alias", "track"]
    order += [endpoint for endpoint in calls if endpoint not in order]
    for endpoint in order:
        items = calls.get(endpoint, [])
        for start in range(0, len(items), size):
            yield {endpoint: items[start : start + size]}
