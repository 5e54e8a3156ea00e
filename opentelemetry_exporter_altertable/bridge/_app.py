"""The bridge's application: one OTLP/HTTP request in, one OTLP/HTTP answer out; no sockets.

The answer rules are OTLP/HTTP's, read for a sender that must not lose data:

- 200 with an ``Export{Trace,Logs}ServiceResponse`` in the request's encoding, sent only once
  every call built from the request is in the bridge's journal on disk (see
  :mod:`._acknowledged`) or, without a journal, was accepted by Altertable or written to the
  spool; ``partial_success`` counts the records refused for good (known only without one).
- 503 with ``Retry-After`` when calls could not be kept: the journal is full, or, without
  one, they could be neither delivered nor spooled (Altertable down and no spool); the bridge
  shutting down, no API key; the same when the bridge already runs as many requests as it
  may hold in memory. The sender retries.
- 400 for a body that does not decode, 415 for another content type, 413 past the body limit,
  401 without the bearer token; 413 as well for a request holding more records or elements
  than :class:`~.._http_server.ListenerBounds` allows (counted before it is decoded). Error
  bodies are a ``google.rpc.Status`` in the request's encoding (JSON when it is unknown).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .._http_server import OTHER_ROUTE, ListenerBounds, is_loopback_host
from .._mapping import MappingOptions, map_records
from ._decode import LOGS, TRACES, Decoded, TooManyElements, UndecodableBody, decode
from ._delivery import Delivery, Outcome

_logger = logging.getLogger(__name__)

PATHS = (TRACES, LOGS)
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
#: Seconds a sender is asked to wait when the bridge could not take its request.
DEFAULT_RETRY_AFTER = 5


@dataclass(frozen=True)
class Answer:
    """Status, headers and body of one answer (the server writes it in one piece)."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    message: str = ""
    """An error answer's text (also in ``body``), for a front end that words it otherwise."""


class BodyTooLarge(Exception):
    """The body (or what it inflates to) is larger than the limit."""


def _status_body(code: int, message: str, protobuf: bool) -> bytes:
    """A ``google.rpc.Status`` (code 1, message 2), hand-encoded to need no other package."""
    if not protobuf:
        return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()
    text = message.encode("utf-8")
    length = len(text)
    varint = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes((0x08, code & 0x7F, 0x12)) + bytes(varint) + text


def error(status: int, message: str, protobuf: bool = False, retry_after: int = 0) -> Answer:
    """An error answer; ``retry_after`` adds the header a sender's retry waits for."""
    # gRPC codes: INVALID_ARGUMENT 3, UNAUTHENTICATED 16, RESOURCE_EXHAUSTED 8, UNAVAILABLE 14.
    code = {400: 3, 401: 16, 413: 3, 415: 3, 429: 8, 503: 14}.get(status, 2)
    headers = (("Retry-After", str(retry_after)),) if retry_after else ()
    if status == 401:
        headers = (*headers, ("WWW-Authenticate", "Bearer"))
    return Answer(
        status,
        _status_body(code, message, protobuf),
        PROTOBUF if protobuf else JSON,
        headers,
        message,
    )


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate or none) without inflating past ``limit``.

    Every gzip member is read (``gzip(A) + gzip(B)`` is ``A + B``, as RFC 1952 says);
    anything after the last member but zero padding, or after a deflate stream, is refused.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UndecodableBody(f"unsupported Content-Encoding {encoding[:50]!r}")
    gzipped = encoding != "deflate"
    wbits = 16 + zlib.MAX_WBITS if gzipped else zlib.MAX_WBITS
    out = bytearray()
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise UndecodableBody(f"invalid {encoding} body: {str(exc)[:100]}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise BodyTooLarge
        if not inflater.eof:
            raise UndecodableBody(f"truncated {encoding} body")
        rest = inflater.unused_data
        if not rest.strip(b"\0"):
            return bytes(out)
        if not gzipped:
            raise UndecodableBody("data after the end of the deflate stream")


class Bridge:
    """Decode, map and deliver OTLP requests; answer by the rules above. Thread-safe."""

    def __init__(
        self,
        delivery: Delivery,
        *,
        token: str | None = None,
        max_body_bytes: int | None = None,
        retry_after: int = DEFAULT_RETRY_AFTER,
        bounds: ListenerBounds | None = None,
    ) -> None:
        self.delivery = delivery
        self._token = token.encode("utf-8") if token else None
        bounds = bounds or ListenerBounds()
        if max_body_bytes is not None:
            bounds = replace(bounds, max_body_bytes=max_body_bytes)
        self.bounds = bounds
        """What a request may hold (bytes, records, elements); the front ends read it too."""
        self.max_body_bytes = bounds.max_body_bytes
        self.retry_after = retry_after
        # The core's own options, never a copy built from some of the settings: a setting
        # left out (pageviews, properties_exclude) would make the bridge map otherwise.
        self._options: MappingOptions = delivery.options
        self._answers: Counter[tuple[str, str, int]] = Counter()
        self._answers_lock = threading.Lock()

    def answers(self) -> Counter[tuple[str, str, int]]:
        """Answers so far by ``(path, encoding, status)``, encoding ``protobuf``/``json``/``-``."""
        with self._answers_lock:
            return Counter(self._answers)

    def count(self, path: str, headers: Mapping[str, str], status: int) -> None:
        """Count one answer, by route: a path that is not one counts as ``(other)``."""
        protobuf = self.encoding(headers)
        encoding = "-" if protobuf is None else "protobuf" if protobuf else "json"
        route = path if path in PATHS else OTHER_ROUTE
        with self._answers_lock:
            self._answers[(route, encoding, status)] += 1

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def check_host(self, host: str) -> None:
        """Refuse (``ValueError``) to be heard on ``host`` when other machines could reach it
        and no token is set: anyone could then write into the Altertable project. Every
        front end calls it before it binds, so none can forget the rule."""
        if self._token is None and not is_loopback_host(host):
            raise ValueError(
                f"host {host[:100]!r} is reachable from other machines: give a token "
                "(--token, or $ALTERTABLE_BRIDGE_TOKEN) or listen on 127.0.0.1"
            )

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """``Authorization: Bearer <token>`` when a token is set (``headers`` in lower case)."""
        if self._token is None:
            return True
        scheme, _, given = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._token)

    @staticmethod
    def encoding(headers: Mapping[str, str]) -> bool | None:
        """True for protobuf, False for JSON, None for any other content type."""
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type == PROTOBUF:
            return True
        if content_type == JSON:
            return False
        return None

    def handle(self, path: str, headers: Mapping[str, str], raw: bytes) -> Answer:
        """Answer one POST to ``path`` (``/v1/traces`` or ``/v1/logs``) whose body is read."""
        answer = self._handle(path, headers, raw)
        self.count(path, headers, answer.status)
        return answer

    def _handle(self, path: str, headers: Mapping[str, str], raw: bytes) -> Answer:  # noqa: PLR0911  # one return per answer of the rules above
        protobuf = self.encoding(headers)
        if not self.authorized(headers):
            return error(401, "missing or wrong bearer token", bool(protobuf))
        if protobuf is None:
            return error(415, f"use {PROTOBUF} or {JSON}")
        try:
            body = inflate(raw, headers.get("content-encoding", ""), self.max_body_bytes)
            decoded = decode(
                path, body, not protobuf, self.bounds, pageviews=self._options.pageviews
            )
        except BodyTooLarge:
            return error(413, f"body exceeds {self.max_body_bytes} bytes", protobuf)
        except TooManyElements as exc:
            return error(413, str(exc), protobuf)
        except UndecodableBody as exc:
            return error(400, f"undecodable OTLP body: {str(exc)[:200]}", protobuf)
        outcome = self._deliver(decoded)
        if outcome.refused or outcome.lost:
            why = outcome.refused or f"{outcome.lost} calls could not be delivered or spooled"
            return error(503, f"not accepted: {why}; retry later", protobuf, self.retry_after)
        return self._success(path, decoded, outcome, protobuf)

    def _deliver(self, decoded: Decoded) -> Outcome:
        if not decoded.records:
            return Outcome()
        return self.delivery.deliver(
            decoded.items,
            lambda: map_records(decoded.records, self._options, decoded.skipped),
        )

    @staticmethod
    def _success(path: str, decoded: Decoded, outcome: Outcome, protobuf: bool) -> Answer:
        # A record may yield several calls: never report more records than could be refused.
        rejected = min(outcome.rejected, decoded.analytics)
        message: ExportTraceServiceResponse | ExportLogsServiceResponse
        if path == TRACES:
            message = ExportTraceServiceResponse()
            if rejected:
                message.partial_success.rejected_spans = rejected
        else:
            message = ExportLogsServiceResponse()
            if rejected:
                message.partial_success.rejected_log_records = rejected
        if rejected:
            message.partial_success.error_message = (
                f"Altertable refused {outcome.rejected} calls built from this request for good"
            )
        if protobuf:
            return Answer(200, message.SerializeToString(), PROTOBUF)
        from google.protobuf import json_format

        doc = json_format.MessageToDict(message)
        return Answer(200, json.dumps(doc, separators=(",", ":")).encode(), JSON)


__all__ = ["DEFAULT_MAX_BODY_BYTES", "JSON", "PATHS", "PROTOBUF", "Answer", "Bridge"]
