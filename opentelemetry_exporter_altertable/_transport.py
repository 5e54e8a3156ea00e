"""HTTP delivery: chunking, the deadline, retries, splitting on 413, bisecting on 400/422.

The transport knows payload dicts and endpoints, never OpenTelemetry objects. It sends what it
is given, inside one deadline, and reports what was accepted, what the API refused for good
(dropped) and what is still owed (for the spool): nothing is lost silently.
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

import requests
from requests.adapters import HTTPAdapter

from . import _api
from . import environment_variables as ev
from ._answers import CONFIG_ERRORS, config_error, read_answer
from ._config import ExporterConfig
from ._retry import AnswerTimeout, is_retryable_status, is_transient_error, parse_retry_after
from ._stats import Stats

_logger = logging.getLogger(__name__)

Payload = dict[str, Any]
USER_AGENT = _api.USER_AGENT

__all__ = ["CONFIG_ERRORS", "DeliveryReport", "Transport"]


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

    def owe(self, endpoint: str, items: Sequence[Payload], reason: str) -> None:
        self.pending.setdefault(endpoint, []).extend(items)
        if self.pending_reason is None or reason in CONFIG_ERRORS:
            self.pending_reason = reason


Encoder = Callable[[Sequence[Payload]], bytes]


def encode_json(items: Sequence[Payload]) -> bytes:
    """Compact UTF-8 JSON; payloads are already JSON-safe (see ``_mapping.json_safe``)."""
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def fast_encoder() -> Encoder | None:
    """``orjson`` when installed (the ``fast`` extra): about 4x quicker than ``json`` here.

    Its output is the same compact JSON; what it refuses (integers past 64 bits) falls back to
    the standard library, so installing it never changes what is sent.
    """
    try:
        import orjson
    except ImportError:
        return None
    dumps = orjson.dumps

    def encode(items: Sequence[Payload]) -> bytes:
        try:
            return dumps(items)
        except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
            return encode_json(items)

    return encode


def request_headers(config: ExporterConfig) -> dict[str, str]:
    """Headers of every API request: the key goes in ``X-API-Key``, never in the URL."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if config.api_key:
        headers["X-API-Key"] = config.api_key
    if config.compression == "gzip":
        headers["Content-Encoding"] = "gzip"
    return headers


def endpoint_url(config: ExporterConfig, name: str, sync: bool | None = None) -> str:
    query = "?sync=true" if (config.sync if sync is None else sync) else ""
    return f"{config.endpoint}/{name}{query}"


def new_session(endpoint: str, pool_size: int = 16) -> requests.Session:
    """A pooled session that does no retrying of its own (the transport decides).

    Proxy and CA settings (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) are read from
    the environment once, here, rather than by ``requests`` on every POST, where reading them
    cost about a quarter of each request's client-side time.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.proxies.update(requests.utils.get_environ_proxies(endpoint))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session


def _read_body(response: requests.Response, deadline: float) -> None:
    """Read a streamed answer whole, but never past ``deadline``.

    ``requests`` applies its timeout to each socket read, so a server that trickles its answer
    a byte at a time could hold an export forever. Reading with ``read1`` lets the clock be
    checked (and the socket's timeout shortened) between reads.
    """
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 < 2: no partial reads, the per-read timeout is all there is
        response.content  # noqa: B018 (reads and caches the body)
        return
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AnswerTimeout("the answer did not arrive before the deadline")
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(left)
            chunk = read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except AnswerTimeout:
        response.close()
        raise
    except OSError as exc:  # socket timeout or reset while reading
        response.close()
        raise AnswerTimeout(str(exc)) from exc
    response._content = b"".join(chunks)  # what response.json() reads


class _Stop(Exception):
    """Internal: the rest of this delivery cannot be sent now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
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
        self._own_session = session is None
        self._session = session if session is not None else new_session(config.endpoint)
        self._stats = stats if stats is not None else Stats()
        self._encode: Encoder = fast_encoder() or encode_json
        self._headers = request_headers(config)
        self._urls = {name: endpoint_url(config, name) for name in ("identify", "alias", "track")}
        self._closing = threading.Event()
        self._pid = os.getpid()
        self._told: set[str] = set()
        self._told_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """Interrupt any backoff wait at once; later deliveries return everything as pending."""
        self._closing.set()

    def release(self) -> None:
        """Close the pooled connections (only those of a session this transport created)."""
        if self._own_session:
            self._session.close()

    def _after_fork(self) -> None:
        """The child must not share the parent's sockets or locks."""
        self._pid = os.getpid()
        closing = self._closing.is_set()
        self._closing = threading.Event()
        if closing:
            self._closing.set()
        self._told_lock = threading.Lock()
        if self._own_session:
            self._session = new_session(self._config.endpoint)
        else:
            for adapter in self._session.adapters.values():
                adapter.close()

    # ------------------------------------------------------------------ delivery

    def deliver(self, calls: Mapping[str, Sequence[Payload]], deadline: float) -> DeliveryReport:
        """Send every call before ``deadline`` (a ``time.monotonic()`` value)."""
        if os.getpid() != self._pid:
            self._after_fork()
        report = DeliveryReport()
        stopped: str | None = "retryable" if self._closing.is_set() else None
        size = self._config.max_batch_size
        for endpoint, items in calls.items():
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                if stopped is not None:
                    report.owe(endpoint, chunk, stopped)
                else:
                    stopped = self._send(endpoint, chunk, deadline, report)
        return report

    def _send(
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
            status, error_code = self._post_with_retries(endpoint, body, deadline)
        except _Stop as stop:
            report.owe(endpoint, items, stop.reason)
            return stop.reason
        if 200 <= status < 300 and error_code is None:
            report.accepted[endpoint] = report.accepted.get(endpoint, 0) + len(items)
            self._stats.add("calls_exported", len(items))
            return None
        stop_reason = config_error(status, error_code)
        if stop_reason is not None:
            self._tell_config_error(stop_reason, status, error_code)
            report.owe(endpoint, items, stop_reason)
            return stop_reason
        # 413, 400, 422, "ok": false and other 4xx: the data, not the service, is at fault.
        if len(items) > 1:
            middle = len(items) // 2
            stopped = self._send(endpoint, items[:middle], deadline, report)
            if stopped is not None:
                report.owe(endpoint, items[middle:], stopped)
                return stopped
            return self._send(endpoint, items[middle:], deadline, report)
        reason = error_code or f"http-{status}"
        report.rejected[reason] += 1
        self._stats.drop(reason, 1)
        item = items[0]
        what = item.get("event") or item.get("distinct_id") or endpoint
        report.detail = f"last: {endpoint} {what!r} refused with HTTP {status} {reason}"
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

    def _post_with_retries(
        self, endpoint: str, body: bytes, deadline: float
    ) -> tuple[int, str | None]:
        """POST until an answer that is not worth retrying; ``(status, error_code)``.

        ``error_code`` is set for any refusal, including a 2xx whose body says ``"ok": false``
        (reported as status 400, as the contract says).
        """
        if self._config.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
        url = self._urls[endpoint]
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
                response = self._session.post(
                    url,
                    data=body,
                    headers=self._headers,
                    timeout=remaining,
                    stream=True,
                    allow_redirects=False,
                )
                _read_body(response, deadline)
            except (requests.RequestException, AnswerTimeout) as exc:
                if not is_transient_error(exc):  # invalid URL, proxy misconfiguration...
                    self._tell_once("request-error", "Altertable request failed: %s", exc)
                    raise _Stop("retryable") from None
                failure = type(exc).__name__
            else:
                self._stats.add("requests")
                status = response.status_code
                if not is_retryable_status(status):
                    return status, read_answer(status, response.content).error_code
                failure = f"HTTP {status}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_number >= policy.total:
                _logger.warning(
                    "Altertable %s failed after %d attempt(s) (%s); the calls are kept for "
                    "a later export if a spool is configured",
                    endpoint,
                    retry_number + 1,
                    failure,
                )
                raise _Stop("retryable")
            delay = retry_after if retry_after is not None else policy.backoff(retry_number)
            if time.monotonic() + delay >= deadline:
                _logger.debug("no time left for a retry of %s (%s)", endpoint, failure)
                raise _Stop("retryable")
            _logger.debug("retrying %s in %.2fs after %s", endpoint, delay, failure)
            self._stats.add("retries")
            if self._closing.wait(delay):
                raise _Stop("retryable")
            retry_number += 1

    # ------------------------------------------------------------------ messages

    def _tell_once(self, key: str, message: str, *args: object) -> None:
        with self._told_lock:
            if key in self._told:
                first = False
            else:
                self._told.add(key)
                first = True
        if first:
            _logger.error(message, *args)
        else:
            _logger.debug(message, *args)

    def _tell_config_error(self, kind: str, status: int | None, error_code: str | None) -> None:
        endpoint = self._config.endpoint
        if kind == "auth":
            self._tell_once(
                kind,
                "Altertable refused the API key (HTTP %s from %s). Set %s (or pass api_key=) to "
                "a valid ingestion key (pk_live_... or pk_test_...) from your Altertable project.",
                status,
                endpoint,
                ev.OTEL_EXPORTER_ALTERTABLE_API_KEY,
            )
        elif kind == "environment-not-found":
            self._tell_once(
                kind,
                "Altertable has no such environment for this API key (HTTP %s, %s). Create it in "
                "Altertable, or set %s (or the resource attribute deployment.environment.name) "
                "to an existing environment such as 'production'.",
                status,
                error_code,
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
