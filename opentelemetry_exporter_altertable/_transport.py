"""HTTP delivery: chunking, the deadline, retries, splitting on 413, bisecting on 400/422.

The transport knows payload dicts and endpoints, never OpenTelemetry objects. It sends what it
is given, inside one deadline, and reports what was accepted, what the API refused for good
(dropped) and what is still owed (for the spool): nothing is lost silently. ``deliver`` does
not raise: whatever goes wrong, every call it was given is in its report exactly once.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from . import _api
from . import environment_variables as ev
from ._answers import ACCEPT_ENCODING, CONFIG_ERRORS, Answer, read_answer, read_stream
from ._config import ExporterConfig
from ._pool import Sender, resolve_sender
from ._retry import (
    is_retryable_status,
    is_tls_error,
    is_transient_error,
    parse_retry_after,
    tls_problem,
)
from ._stats import Stats
from ._text import clip, clip_repr
from ._warn_once import WarnOnce

_logger = logging.getLogger(__name__)

Payload = dict[str, Any]
USER_AGENT = _api.USER_AGENT

__all__ = ["CONFIG_ERRORS", "DeliveryReport", "Transport"]

#: Statuses whose refusal may be about some items only: find them (bisect), keep the rest.
_BISECT_STATUSES = frozenset({400, 422})


@dataclass
class DeliveryReport:
    """What happened to the calls of one :meth:`Transport.deliver`."""

    accepted: dict[str, int] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    """Items the API refused for good (bad payloads), by reason: dropped, counted, logged."""
    detail: str = ""
    """The last refusal, in words, for the log line."""
    pending: dict[str, list[Payload]] = field(default_factory=dict)
    """Items not delivered in time (outage, deadline, shutdown): owed, for the spool."""
    pending_reason: str | None = None
    """``"retryable"``, or one of :data:`CONFIG_ERRORS` when a setting must be fixed first."""
    interrupted: BaseException | None = None
    """A ``KeyboardInterrupt`` (or ``SystemExit``) that stopped the delivery: the caller keeps
    what is owed, then raises it again."""

    def owe(self, endpoint: str, items: Sequence[Payload], reason: str) -> None:
        self.pending.setdefault(endpoint, []).extend(items)
        if self.pending_reason is None or reason in CONFIG_ERRORS:
            self.pending_reason = reason


Encoder = Callable[[Sequence[Payload]], bytes]


#: One encoder for every request (``json.dumps`` with options builds one per call). No
#: circular-reference check: payloads are trees built by ``_values.json_safe`` (depth-cut).
_JSON = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)


def encode_json(items: Sequence[Payload]) -> bytes:
    """Compact UTF-8 JSON; payloads are already JSON-safe (see ``_mapping.json_safe``)."""
    return _JSON.encode(items).encode()


def fast_encoder() -> Encoder | None:
    """``orjson`` when installed (the ``fast`` extra): about 4x quicker than ``json`` here.

    Its output is the same compact JSON; what it refuses (integers past 64 bits) falls back to
    the standard library, so installing it never changes what is sent.
    """
    try:
        import orjson
    except ImportError:
        return None
    dumps = orjson.dumps  # pragma: no mutate

    def encode(items: Sequence[Payload]) -> bytes:
        try:
            return dumps(items)
        except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
            return encode_json(items)

    return encode


def request_headers(config: ExporterConfig) -> dict[str, str]:
    """Headers of every API request: the key goes in ``X-API-Key``, never in the URL."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept-Encoding": ACCEPT_ENCODING,  # only what read_body undoes
    }
    if config.api_key:
        headers["X-API-Key"] = config.api_key
    if config.compression == "gzip":
        headers["Content-Encoding"] = "gzip"
    return headers


def endpoint_url(config: ExporterConfig, name: str, sync: bool | None = None) -> str:
    query = "?sync=true" if (config.sync if sync is None else sync) else ""
    return f"{config.endpoint}/{name}{query}"


def _request_target(url: str) -> str:
    """The path and query of ``url``: what the request line names on a direct connection."""
    parts = urlsplit(url)
    return f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"


class _Stop(Exception):
    """Internal: the rest of this delivery cannot be sent now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)  # pragma: no mutate
        self.reason = reason


class Transport:
    """Sends JSON arrays to ``{endpoint}/{track,identify,alias}`` within a deadline."""

    def __init__(
        self,
        config: ExporterConfig,
        session: requests.Session | None = None,
        stats: Stats | None = None,
    ) -> None:
        self._config = config
        self._sender: Sender = resolve_sender(config.endpoint, session)
        self._stats = stats if stats is not None else Stats()
        # orjson sends the very bytes json would (tested).
        self._encode: Encoder = fast_encoder() or encode_json  # pragma: no mutate
        self._headers = request_headers(config)
        self._urls = {name: endpoint_url(config, name) for name in _api.ENDPOINTS}
        self._paths = {name: _request_target(url) for name, url in self._urls.items()}
        self._closing = threading.Event()
        self._wake = threading.Event()
        """Set by :meth:`close` and :meth:`begin_exit`: ends any backoff wait at once."""
        self._exit_deadline: float | None = None
        self._pid = os.getpid()
        # Errors a user must act on, said once (keys carry exception types: bounded).
        self._tell_once = WarnOnce(_logger, logging.ERROR, repeat=logging.DEBUG, max_keys=257)

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    @property
    def exiting(self) -> bool:
        """The interpreter is exiting: no backoff waits, nothing past the exit deadline."""
        return self._exit_deadline is not None

    def close(self) -> None:
        """Interrupt any backoff wait at once; later deliveries return everything as pending."""
        self._closing.set()
        self._wake.set()

    def begin_exit(self, deadline: float) -> None:
        """From now on no delivery waits to retry, nor runs past ``deadline``."""
        self._exit_deadline = deadline
        self._wake.set()

    def abort_requests(self) -> None:
        """End requests under way at once (the pool's sockets are shut); exit only."""
        self._sender.abort()

    def release(self) -> None:
        """Close the pooled connections (only those of a pool this transport created)."""
        self._sender.close()

    def _after_fork(self) -> None:
        """The child must not share the parent's sockets or locks."""
        self._pid = os.getpid()
        closing = self._closing.is_set()
        self._closing = threading.Event()
        self._wake = threading.Event()
        if closing:
            self._closing.set()
            self._wake.set()
        self._tell_once.reset_after_fork()
        self._sender = self._sender.forked()

    # ------------------------------------------------------------------ delivery

    def deliver(self, calls: Mapping[str, Sequence[Payload]], deadline: float) -> DeliveryReport:
        """Send every call before ``deadline`` (a ``time.monotonic()`` value); never raises.

        Whatever goes wrong (an exception nobody anticipated, a ``KeyboardInterrupt``), the
        calls not yet accepted or refused are owed in the report.
        """
        if os.getpid() != self._pid:
            self._after_fork()
        if self._exit_deadline is not None:
            deadline = min(deadline, self._exit_deadline)
        report = DeliveryReport()
        stopped: str | None = "retryable" if self._closing.is_set() else None
        size = self._config.max_batch_size
        for endpoint, items in calls.items():
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                if stopped is not None:
                    report.owe(endpoint, chunk, stopped)
                    continue
                try:
                    stopped = self._send(endpoint, chunk, deadline, report)
                except Exception:  # a defect here must not lose the chunk: owe it whole
                    self._tell_once(
                        "unexpected",
                        "Altertable delivery failed unexpectedly; the calls are kept as owed",
                        exc_info=True,
                    )
                    report.owe(endpoint, chunk, "retryable")
                    stopped = "retryable"
        return report

    def _send(  # noqa: PLR0911  # one return per class of answer, in the contract's order
        self, endpoint: str, items: Sequence[Payload], deadline: float, report: DeliveryReport
    ) -> str | None:
        """Deliver one chunk, splitting it when the API refuses part of it.

        Every item ends up accepted, rejected or owed in ``report``. Returns why delivery must
        stop for now (the rest of the export is owed too), or ``None`` to go on.
        """
        try:
            body = self._encode(items)
        except (TypeError, ValueError):
            return self._send_each_encodable(endpoint, items, deadline, report)
        try:
            answer = self._post_with_retries(endpoint, body, deadline)
        except _Stop as stop:
            report.owe(endpoint, items, stop.reason)
            return stop.reason
        except BaseException as exc:  # KeyboardInterrupt mid-request: owe, the caller re-raises
            report.owe(endpoint, items, "retryable")
            report.interrupted = exc
            return "retryable"
        status, error_code = answer.status, answer.error_code
        if error_code is None:
            report.accepted[endpoint] = report.accepted.get(endpoint, 0) + len(items)
            self._stats.add("calls_exported", len(items))
            return None
        stop_reason = answer.setting_error
        if stop_reason is not None:
            self._tell_config_error(stop_reason, status, error_code, items)
            report.owe(endpoint, items, stop_reason)
            return stop_reason
        if status in _BISECT_STATUSES or status == 413 or 200 <= status < 300:
            # 400, 422, "ok": false: some items may be bad; 413: too big together. Split.
            if len(items) > 1:
                middle = len(items) // 2
                stopped = self._send(endpoint, items[:middle], deadline, report)
                if stopped is not None:
                    report.owe(endpoint, items[middle:], stopped)
                    return stopped
                return self._send(endpoint, items[middle:], deadline, report)
            reason = clip(error_code, 64)  # a key of stats(): bounded, whatever the server says
        else:
            # 411, 414, 415, 431...: about the request, not its items. Refused once, whole.
            reason = f"http-{status}"
        report.rejected[reason] += len(items)
        self._stats.drop(reason, len(items))
        item = items[0]
        what = item.get("event") or item.get("distinct_id") or endpoint
        count = f"{len(items)} items, first " if len(items) > 1 else ""
        report.detail = (
            f"last: {endpoint} {count}{clip_repr(what)} refused with HTTP {status} "
            f"{clip(error_code)}"
        )
        return None

    def _send_each_encodable(
        self, endpoint: str, items: Sequence[Payload], deadline: float, report: DeliveryReport
    ) -> str | None:
        good: list[Payload] = []
        for item in items:
            try:
                encode_json([item])
            except (TypeError, ValueError):
                report.rejected["unencodable"] += 1
                self._stats.drop("unencodable", 1)
                report.detail = f"last: {endpoint} item is not JSON-encodable"
            else:
                good.append(item)
        return self._send(endpoint, good, deadline, report) if good else None

    def _post_with_retries(self, endpoint: str, body: bytes, deadline: float) -> Answer:  # noqa: PLR0912  # the retry loop: each exit is a rule of the contract
        """POST until an answer that is not worth retrying, and read it.

        Raises :class:`_Stop` when the chunk cannot be delivered now: retries exhausted, the
        deadline, shutdown, interpreter exit, a TLS failure, or an error nobody anticipated.
        """
        if self._config.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
        url = self._urls[endpoint]
        path = self._paths[endpoint]
        policy = self._config.retry
        retry_number = 0
        while True:
            if self._closing.is_set():
                raise _Stop("retryable")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Stop("retryable")
            retry_after: float | None = None
            failure: str
            try:
                # Redirects are not followed: requests would turn the POST into a bodiless GET
                # (301-303) or re-send X-API-Key to whatever host the Location names (307/308).
                raw, status = self._sender.request(url, path, body, self._headers, remaining)
                content = read_stream(raw, deadline)
            except Exception as exc:
                if is_tls_error(exc):
                    self._tell_tls_error(exc)
                    raise _Stop("tls") from None
                if not is_transient_error(exc):  # invalid URL, a defect: owed, said once
                    self._tell_once(
                        f"request-error:{type(exc).__name__}",
                        "Altertable request failed (%s: %s); the calls are kept as owed",
                        type(exc).__name__,
                        clip(exc),
                    )
                    raise _Stop("retryable") from None
                failure = type(exc).__name__
            else:
                self._stats.add("requests")
                if not is_retryable_status(status):
                    return read_answer(status, content)
                failure = f"HTTP {status}"
                retry_after = parse_retry_after(raw.headers.get("Retry-After"))
            if retry_number >= policy.total:
                _logger.warning(
                    "Altertable %s failed after %d attempt(s) (%s); the calls are kept for "
                    "a later export if a spool is configured",
                    endpoint,
                    retry_number + 1,
                    failure,
                )
                raise _Stop("retryable")
            if self._exit_deadline is not None:
                _logger.debug("interpreter exiting: no retry of %s (%s)", endpoint, failure)
                raise _Stop("retryable")
            delay = retry_after if retry_after is not None else policy.backoff(retry_number)
            if time.monotonic() + delay >= deadline:
                _logger.debug("no time left for a retry of %s (%s)", endpoint, failure)
                raise _Stop("retryable")
            _logger.debug("retrying %s in %.2fs after %s", endpoint, delay, failure)
            self._stats.add("retries")
            if self._wake.wait(delay):
                raise _Stop("retryable")
            retry_number += 1

    # ------------------------------------------------------------------ messages

    def _tell_tls_error(self, exc: BaseException) -> None:
        endpoint = self._config.endpoint
        self._tell_once(
            "tls",
            "Altertable TLS error talking to %s: %s (%s). The calls are kept as owed and not "
            "retried until this is fixed: behind a TLS-intercepting proxy, or with a private "
            "CA, set REQUESTS_CA_BUNDLE to its CA certificate; if the endpoint serves plain "
            "HTTP, use http:// in %s.",
            clip(endpoint),
            tls_problem(exc),
            clip(exc),
            ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT,
        )

    def _tell_config_error(
        self, kind: str, status: int, error_code: str | None, items: Sequence[Payload]
    ) -> None:
        endpoint = clip(self._config.endpoint)
        if kind == "auth":
            self._tell_once(
                kind,
                "Altertable refused the API key (HTTP %s from %s). Set %s (or pass api_key=) to "
                "a valid ingestion key (pk_live_... or pk_test_...) from your Altertable project.",
                status,
                endpoint,
                ev.OTEL_EXPORTER_ALTERTABLE_API_KEY,
            )
        elif kind == _api.ENVIRONMENT_NOT_FOUND:
            environment = items[0].get("environment") if items else None
            self._tell_once(
                f"{kind}:{clip(environment)}",
                "Altertable has no environment %s for this API key (HTTP %s, %s). Create it in "
                "Altertable, or set %s (or the resource attribute deployment.environment.name) "
                "to an existing environment such as 'production'.",
                clip_repr(environment),
                status,
                clip(error_code),
                ev.OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT,
            )
        else:
            self._tell_once(
                kind,
                "%s answered HTTP %s to an Altertable call: is %s the API's base URL "
                "(default https://api.altertable.ai)? Redirects are not followed: use the "
                "final URL.",
                endpoint,
                status,
                ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT,
            )
