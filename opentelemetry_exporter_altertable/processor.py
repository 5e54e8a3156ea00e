"""Batch processors that only queue records carrying analytics data, and journal them.

Use ``AltertableSpanProcessor(AltertableSpanExporter())`` instead of
``BatchSpanProcessor(AltertableSpanExporter())`` when the exporter has a pipeline of its own
(a tracer provider that also feeds OTLP, or most spans are ordinary request spans). The
SDK's ``BatchSpanProcessor`` queues every ended span; under a burst its bounded queue drops
the *oldest* spans, and the few that carry an analytics event (a signup, a purchase) are lost
among thousands of spans the exporter would skip anyway. This processor decides on the
calling thread, before queueing, so the queue only ever holds spans that become Altertable
calls, and the rest cost one cheap check. ``AltertableLogRecordProcessor`` does the same for
log records (the ``BatchLogRecordProcessor`` arguments and ``OTEL_BLRP_*`` variables).

Keep ``BatchSpanProcessor`` when the exporter is the only consumer and spans are few, or when
an exporter other than Altertable's sits behind the processor: this one would starve it of
the spans it filters out.

It takes the same arguments and ``OTEL_BSP_*`` environment variables as
``BatchSpanProcessor``, which it extends.

When the queue is full anyway (a burst of tagged spans faster than the API takes them), the
SDK drops spans with one log line each and nothing else to show for it. This processor counts
them into its exporter's ``stats()["queue_dropped"]`` and warns at most once a minute with the
count, so a lost burst is a number an operator can see and size for (``OTEL_BSP_MAX_QUEUE_SIZE``);
the log processor does the same for log records (``OTEL_BLRP_MAX_QUEUE_SIZE``).

Nothing lost when a process dies: with a ``spool_dir`` on the exporter, each accepted record is
written to this process's journal (see ``_journal``) before ``span.end()`` / the log call
returns, and retired once the exporter has finished with it; a shutdown spools what is left.
``force_flush(timeout_millis)`` returns by its deadline whatever the API does (what it could not
deliver stays journaled). When Celery runs the process, the processors flush on its
``worker_process_shutdown`` signal: Celery's children leave through ``os._exit``, past every
exit hook, so without it their queue would be lost.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind

from ._core import ExporterCore
from ._journal import Journal
from ._mapping import has_interest
from ._sdk import (
    _SPAN_KINDS,
    _plain,
    log_attributes,
    resource_attributes,
    span_attributes,
    span_events,
    span_has_analytics_data,
    span_is_page_view,
    span_is_record,
)

logger = logging.getLogger(__name__)

__all__ = ["AltertableLogRecordProcessor", "AltertableSpanProcessor"]

_PACKAGE = __name__.rpartition(".")[0]


#: Seconds between two queue-drop warnings.
WARN_INTERVAL = 60.0


class _QueueDrops:
    """Counts records the queue dropped; warns at most once per ``interval`` with the count.

    ``processor``, ``records`` and ``settings`` name them in the warning (``OTEL_BSP`` for the
    span processor, ``OTEL_BLRP`` for the log processor's variables).
    """

    def __init__(
        self,
        exporter: Any,
        interval: float = WARN_INTERVAL,
        *,
        processor: str = "AltertableSpanProcessor",
        records: str = "tagged span(s)",
        settings: str = "OTEL_BSP",
    ) -> None:
        self._record = getattr(exporter, "_record_queue_drops", None)
        self._names = (processor, records, settings)
        self._interval = interval
        self._lock = threading.Lock()
        self._unreported = 0
        self.total = 0
        self._last = time.monotonic() - interval
        self._pid = os.getpid()

    def add(self, count: int = 1) -> None:
        if self._pid != os.getpid():  # a lock held at fork time would stay held in the child
            self._pid = os.getpid()
            self._lock = threading.Lock()
        now = time.monotonic()
        with self._lock:
            self.total += count
            self._unreported += count
            if now - self._last < self._interval:
                pending = 0
            else:
                self._last = now
                pending, self._unreported = self._unreported, 0
        if self._record is not None:
            self._record(count)
        if pending:
            self._warn(pending)

    def flush(self) -> None:
        with self._lock:
            pending, self._unreported = self._unreported, 0
        if pending:
            self._warn(pending)

    def _warn(self, count: int) -> None:
        processor, records, settings = self._names
        logger.warning(
            "%s's queue was full: %d %s dropped (%d in all); "
            "raise %s_MAX_QUEUE_SIZE (and %s_MAX_EXPORT_BATCH_SIZE) for bursts",
            processor,
            count,
            records,
            self.total,
            settings,
            settings,
        )



class _Retiring:
    """The exporter as the SDK's batch processor sees it: each finished export retires its
    records from the journal (accepted, dropped and counted, or spooled: the exporter's
    promise). An export the exporter refused (no API key, shut down) kept none of them: they
    stay journaled, and the processor's shutdown spools them for the next exporter."""

    def __init__(self, exporter: Any, keeper: _Keeper) -> None:
        self._exporter = exporter
        self._keeper = keeper

    def export(self, batch: Sequence[Any]) -> Any:
        keeper = self._keeper
        seqs = keeper.take(len(batch))
        core = keeper.core
        if core is not None:
            core.last_outcome()  # forget an earlier run's: only this export's counts
        result = self._exporter.export(batch)
        outcome = core.last_outcome() if core is not None else None
        if outcome is None or not outcome.refused:
            keeper.retire(seqs)
        return result

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._exporter.force_flush(timeout_millis))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._exporter, name)


class _MirroredQueue(collections.deque):  # type: ignore[type-arg]
    """The SDK's bounded queue, with each record's journal sequence number kept beside it.

    The SDK adds with ``appendleft`` (a full deque then discards its oldest record, at the
    right), takes with ``pop`` and empties with ``clear`` (after a fork). Doing the same to the
    sequence numbers under one lock tells exactly which records an export carries and which
    the queue dropped, whatever the worker thread does meanwhile.
    """

    def __init__(self, items: Any, maxlen: int | None, keeper: _Keeper) -> None:
        super().__init__(items, maxlen)
        self._keeper = keeper
        # (sequence number, record) pairs: the record itself checks that both stay in step.
        self._seqs: collections.deque[tuple[int, Any]] = collections.deque(
            (0, item) for item in self
        )
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.next_seq = 0
        """The sequence number of the record the next ``appendleft`` adds."""

    def _locked(self) -> threading.Lock:
        if self._pid != os.getpid():  # a forked child: the parent's threads held this lock
            self._pid = os.getpid()
            self._lock = threading.Lock()
        return self._lock

    def appendleft(self, item: Any) -> None:
        with self._locked():
            if self.maxlen is not None and len(self) >= self.maxlen:
                # The deque discards its oldest record to make room: the SDK's queue drop.
                self._keeper.dropped(self._seqs.pop()[0] if self._seqs else 0)
            super().appendleft(item)
            self._seqs.appendleft((self.next_seq, item))
            self.next_seq = 0

    def pop(self) -> Any:  # type: ignore[override]  # the SDK pops without an index
        with self._locked():
            item = super().pop()
            seq, expected = self._seqs.pop() if self._seqs else (0, None)
            if expected is not item:
                # Not the order this mirror assumes (an SDK that queues differently): keep
                # such records journaled (sent again at worst), never retire the wrong one.
                seq = 0
                self._keeper.out_of_step()
            if self._keeper.journal is not None:
                self._keeper.in_flight.append(seq)
            return item

    def clear(self) -> None:
        with self._locked():
            super().clear()
            self._seqs.clear()


def _queue_slot(processor: object) -> tuple[Any, str, collections.deque[Any] | None]:
    """Where the SDK keeps its bounded queue: (owner, attribute name, queue)."""
    for owner in (getattr(processor, "_batch_processor", None), processor):
        if owner is None:
            continue
        for name in ("_queue", "queue"):
            queue = getattr(owner, name, None)
            if isinstance(queue, collections.deque) and queue.maxlen:
                return owner, name, queue
    return None, "", None


class _Keeper:
    """What a processor adds around the SDK's queue: exact drop counts and, with a spool
    directory, the journal (each record journaled when queued, retired when exported)."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        self.on_drop: Callable[[int], None] | None = None
        self._warned_out_of_step = False
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.in_flight: collections.deque[int] = collections.deque()
        # The exporter's core (ours only: another exporter gets no journal).
        core = getattr(exporter, "_core", None)
        self.core: ExporterCore | None = core if isinstance(core, ExporterCore) else None
        self.journal: Journal | None = None
        if self.core is not None:
            before_send = self.core.config.before_send is not None
            self.journal = self.core.backlog.journal(before_send=before_send)

    def _after_fork(self) -> None:
        # The SDK empties its queue in a forked child; the child's journal is its own.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.in_flight = collections.deque()
        if self.journal is not None:
            self.journal.check_fork()

    def queue(
        self, processor: object, append: Callable[[Journal], int], enqueue: Callable[[], None]
    ) -> None:
        """Journal a record (with a journal) and queue it, as one step for other threads."""
        if self._pid != os.getpid():
            self._after_fork()
        journal = self.journal
        # Looked up per record: a fork re-initialises the SDK's queue in some releases.
        owner, name, queue = _queue_slot(processor)
        if queue is None or getattr(owner, "_shutdown", False):
            enqueue()  # refused by the SDK after shutdown; or a queue we cannot see
            return
        with self._lock:
            if not isinstance(queue, _MirroredQueue):
                queue = _MirroredQueue(queue, queue.maxlen, self)
                setattr(owner, name, queue)
            if journal is not None:
                journal.check_fork()
                with journal.lock:
                    queue.next_seq = append(journal)
            enqueue()

    def out_of_step(self) -> None:
        if not self._warned_out_of_step:
            self._warned_out_of_step = True
            logger.warning(
                "The SDK's batch queue does not behave as expected; journaled records are kept "
                "until shutdown (some may be sent twice)"
            )

    def dropped(self, seq: int) -> None:
        """The queue dropped a record (called with the queue's lock held): count, retire."""
        if self.on_drop is not None:
            self.on_drop(1)
        if seq:
            self.retire([seq])  # dropped and counted: not owed any more

    def take(self, count: int) -> list[int]:
        """The sequence numbers of the records an export is about to carry (popped in order)."""
        in_flight = self.in_flight
        out = []
        for _ in range(count):
            try:
                seq = in_flight.popleft()
            except IndexError:
                break
            if seq:
                out.append(seq)
        return out

    def retire(self, seqs: list[int]) -> None:
        if self.journal is not None and seqs:
            self.journal.retire(seqs)

    def close(self) -> None:
        """Spool what is still journaled (the queue could not export it), remove the journal."""
        journal = self.journal
        if journal is None or self.core is None or self._pid != os.getpid():
            return
        self.core.backlog.salvage(journal, self.core.calls_from_records)

    def release_if_idle(self) -> None:
        """Remove the journal's files when nothing is outstanding (a process about to end)."""
        journal = self.journal
        if journal is not None and self._pid == os.getpid() and not journal.outstanding:
            journal.close()


def _flush_by(flush: Callable[[int], bool], timeout_millis: int) -> bool:
    """Run ``flush`` and return by ``timeout_millis`` whatever it does (False if unfinished).

    The SDK's batch processors ignore the timeout (they export everything, each export up to
    the exporter's own timeout). A serverless handler that asks for 1 s must get 1 s: the
    flush goes on in a daemon thread, and what it has not delivered stays journaled.
    """
    done = threading.Event()
    outcome = [False]

    def run() -> None:
        try:
            outcome[0] = bool(flush(timeout_millis))
        except Exception:  # never raise into the caller's flush
            logger.warning("Altertable flush failed", exc_info=True)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="altertable-flush", daemon=True)
    thread.start()
    if not done.wait(max(0.0, timeout_millis) / 1000):
        logger.warning(
            "Altertable flush did not finish within %d ms; what it could not deliver stays "
            "queued%s",
            timeout_millis,
            "" if timeout_millis < 0 else " (and journaled, with a spool_dir)",
        )
        return False
    return outcome[0]


def _on_celery_process_shutdown(processor: Any) -> Callable[..., None] | None:
    """Flush ``processor`` on Celery's ``worker_process_shutdown`` when Celery runs the process.

    Only when Celery is already imported: importing it here would cost every other program.
    Celery holds the receiver strongly; the receiver holds the processor weakly.
    """
    if "celery" not in sys.modules:
        return None
    try:
        signals = importlib.import_module("celery.signals")
        signal = signals.worker_process_shutdown
    except Exception:  # an unusable Celery: nothing to hook
        return None
    ref = weakref.ref(processor)

    def flush_before_exit(**_: Any) -> None:
        target = ref()
        if target is not None:
            target._process_ending()

    try:
        signal.connect(flush_before_exit, weak=False)
    except Exception:
        return None
    return flush_before_exit


class _AltertableProcessing:
    """What both processors add to the SDK's batch processors."""

    _keeper: _Keeper
    _celery_receiver: Callable[..., None] | None
    _flush_timeout_millis: int

    def _setup(self, exporter: Any) -> None:
        config = getattr(exporter, "config", None)
        self._flush_timeout_millis = int(1000 * (getattr(config, "timeout", 10.0) + 1))
        self._celery_receiver = _on_celery_process_shutdown(self)

    def _check_celery(self) -> None:
        # A processor built before `import celery` (tasks importing the app after the setup).
        if self._celery_receiver is None and "celery" in sys.modules:
            self._celery_receiver = _on_celery_process_shutdown(self)

    def _base_flush(self, timeout_millis: int) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def force_flush(self, timeout_millis: int | None = 30_000) -> bool:
        """Export what is queued; return by ``timeout_millis`` whatever the API does."""
        if timeout_millis is None:
            timeout_millis = 30_000
        return _flush_by(self._base_flush, timeout_millis)

    def _process_ending(self) -> None:
        """Celery's child is about to leave through ``os._exit``: deliver what is queued."""
        self.force_flush(self._flush_timeout_millis)
        self._keeper.release_if_idle()

    def _close(self) -> None:
        self._keeper.close()
        receiver = self._celery_receiver
        if receiver is not None:
            self._celery_receiver = None
            with contextlib.suppress(Exception):
                signals = importlib.import_module("celery.signals")
                signals.worker_process_shutdown.disconnect(receiver)


class AltertableSpanProcessor(_AltertableProcessing, BatchSpanProcessor):
    """``BatchSpanProcessor`` that queues only spans with analytics data (see the module doc)."""

    _check_failed_logged = False

    # Same signature as the SDK's (which differs between releases): wraps() exposes it.
    @functools.wraps(BatchSpanProcessor.__init__)  # type: ignore[misc]
    def __init__(self, span_exporter: SpanExporter, *args: Any, **kwargs: Any) -> None:
        keeper = self._keeper = _Keeper(span_exporter)
        target: Any = span_exporter if keeper.journal is None else _Retiring(span_exporter, keeper)
        BatchSpanProcessor.__init__(self, target, *args, **kwargs)
        self._queue_drops = _QueueDrops(span_exporter)
        keeper.on_drop = self._queue_drops.add
        config = getattr(span_exporter, "config", None)
        self._pageviews = bool(getattr(config, "pageviews", False))
        self._setup(span_exporter)

    def on_end(self, span: ReadableSpan) -> None:
        if not _sampled(span):
            # BatchSpanProcessor ignores it (its own check, after ours): journaled here it would
            # never be queued, yet salvaged and delivered at shutdown.
            return
        try:
            wanted = span_has_analytics_data(span) or (
                self._pageviews and span_is_page_view(span)
            )
        except Exception:
            # Never raise into ``span.end()``; when in doubt queue it and let the exporter,
            # which handles bad records on its own, decide.
            if not self._check_failed_logged:
                self._check_failed_logged = True
                logger.warning(
                    "Could not inspect a span for analytics data; queueing it", exc_info=True
                )
            wanted = True
        if not wanted:
            return
        self._check_celery()
        pageviews = self._pageviews
        # The queue counts its own drops (exactly, see _MirroredQueue) into the exporter.
        self._keeper.queue(
            self,
            lambda journal: _journal_span(journal, span, pageviews),
            lambda: BatchSpanProcessor.on_end(self, span),
        )

    def _base_flush(self, timeout_millis: int) -> bool:
        return bool(BatchSpanProcessor.force_flush(self, timeout_millis))

    def shutdown(self) -> None:
        # Untyped in some SDK releases, typed in others: call it through a typed view.
        cast("Callable[[], None]", super().shutdown)()
        self._queue_drops.flush()
        self._close()


def _sampled(span: ReadableSpan) -> bool:
    """``BatchSpanProcessor``'s own test: only sampled spans are exported (a ``RECORD_ONLY``
    sampler's spans end in every processor but are for in-process use only)."""
    try:
        context = span.context
        return bool(context and context.trace_flags.sampled)
    except Exception:  # never raise into ``span.end()``: let the SDK's processor decide
        return True


def _journal_span(journal: Journal, span: ReadableSpan, pageviews: bool) -> int:
    """Journal what the mapping will read of ``span``; its sequence number, 0 if it could not
    (never raises)."""
    try:
        attrs = span_attributes(span)
        kind_member = span.kind
        kind = "server" if kind_member is SpanKind.SERVER else _SPAN_KINDS.get(kind_member, "")
        events = [
            (e.name, plain, e.timestamp)
            for e in span_events(span)
            if has_interest(plain := _plain(e.attributes))
        ]
        # Decided as the live mapping decides (a page view only without tagged events).
        is_record = span_is_record(attrs, kind_member, bool(events), pageviews)
        return journal.append_span(
            span,
            attrs,
            resource_attributes(span.resource),
            kind=kind,
            is_record=is_record,
            events=events,
        )
    except Exception:
        logger.warning("Could not journal a span; it is still queued", exc_info=True)
        return 0


class AltertableLogRecordProcessor(_AltertableProcessing, BatchLogRecordProcessor):
    """``BatchLogRecordProcessor`` that queues only log records with analytics data.

    Same arguments and ``OTEL_BLRP_*`` variables as the SDK's; the exporter's own log lines
    (which a ``LoggingHandler`` may capture) are never queued.
    """

    @functools.wraps(BatchLogRecordProcessor.__init__)  # type: ignore[misc]
    def __init__(self, exporter: LogRecordExporter, *args: Any, **kwargs: Any) -> None:
        keeper = self._keeper = _Keeper(exporter)
        target: Any = exporter if keeper.journal is None else _Retiring(exporter, keeper)
        BatchLogRecordProcessor.__init__(self, target, *args, **kwargs)
        # Counted and warned about as the span processor's drops are (see _MirroredQueue).
        self._queue_drops = _QueueDrops(
            exporter,
            processor="AltertableLogRecordProcessor",
            records="tagged log record(s)",
            settings="OTEL_BLRP",
        )
        keeper.on_drop = self._queue_drops.add
        self._setup(exporter)

    def on_emit(self, log_record: Any) -> None:
        record = getattr(log_record, "log_record", log_record)
        try:
            scope = getattr(log_record, "instrumentation_scope", None)
            if scope is not None and scope.name.startswith(_PACKAGE):
                return
            attrs = log_attributes(record)
            wanted = has_interest(attrs)
        except Exception:
            attrs, wanted = {}, True
        if not wanted:
            return
        self._check_celery()
        keeper = self._keeper
        resource = getattr(log_record, "resource", None)

        def append(journal: Journal) -> int:
            try:
                return journal.append_log(record, resource, resource_attributes(resource), attrs)
            except Exception:
                logger.warning("Could not journal a log record; it is still queued", exc_info=True)
                return 0

        # Through the keeper even without a journal: its queue counts the drops.
        keeper.queue(self, append, lambda: BatchLogRecordProcessor.on_emit(self, log_record))

    def _base_flush(self, timeout_millis: int) -> bool:
        return bool(BatchLogRecordProcessor.force_flush(self, timeout_millis))

    def shutdown(self) -> None:
        cast("Callable[[BatchLogRecordProcessor], None]", BatchLogRecordProcessor.shutdown)(self)
        self._queue_drops.flush()
        self._close()
