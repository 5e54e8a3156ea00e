"""Reading one API answer: its body off the wire, then status and body as one verdict.

The transport (to decide what to do with a chunk) and ``altertable-otel check`` (to explain the
answer in words) both read answers here, so they can never disagree about what the API said.
A body is read with its ``Content-Encoding`` undone (a gzipped ``{"ok": false}`` is still a
refusal), within the export's deadline, and never past :data:`MAX_ANSWER_BYTES` once decoded.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import requests

from . import _api
from ._retry import AnswerTimeout

_logger = logging.getLogger(__name__)

#: The API answers with a few hundred bytes; an answer larger than this (on the wire or once
#: decoded) is not one of its answers, and is not read further (a decompression bomb cannot
#: cost more than this).
MAX_ANSWER_BYTES = 1024 * 1024

#: The encodings :func:`read_body` undoes; sent as ``Accept-Encoding``, so no other arrives.
ACCEPT_ENCODING = "gzip, deflate"

#: Why the rest of an export was not sent: the key is wrong, the environment is unknown, the
#: endpoint does not exist, or TLS fails (certificate, plain-HTTP port). An operator can fix
#: these; until then the calls are owed.
CONFIG_ERRORS = frozenset({"auth", _api.ENVIRONMENT_NOT_FOUND, "endpoint-not-found", "tls"})


@dataclass(frozen=True)
class Answer:
    """What one answer says, independent of how it was fetched."""

    status: int
    data: dict[str, Any] | None
    """The body when it is a JSON object, else ``None``."""

    @property
    def code(self) -> str | None:
        """The body's ``error_code``, falling back to ``error`` (the API family uses both)."""
        if self.data is None:
            return None
        raw = self.data.get("error_code") or self.data.get("error")
        return str(raw) if raw else None

    @property
    def accepted(self) -> bool:
        """A 2xx whose body does not say ``"ok": false``."""
        return 200 <= self.status < 300 and not (
            self.data is not None and self.data.get("ok") is False
        )

    @property
    def error_code(self) -> str | None:
        """The refusal's code, or ``None`` for an acceptance (``ok-false``, ``http-<status>``
        when the body names none)."""
        if self.accepted:
            return None
        if 200 <= self.status < 300:
            return self.code or "ok-false"
        return self.code or f"http-{self.status}"

    @property
    def setting_error(self) -> str | None:
        """Which setting is wrong (one of :data:`CONFIG_ERRORS`), if the answer says one is."""
        return config_error(self.status, self.error_code)


def config_error(status: int, error_code: str | None) -> str | None:
    """Which setting is wrong, if an answer with this status and code says one is."""
    if status in (401, 403):
        return "auth"
    if error_code == _api.ENVIRONMENT_NOT_FOUND:
        return _api.ENVIRONMENT_NOT_FOUND
    if status in (404, 405) or 300 <= status < 400:
        return "endpoint-not-found"
    return None


def read_answer(status: int, body: bytes) -> Answer:
    """The verdict on ``status`` with ``body`` (already decoded from its Content-Encoding)."""
    data: Any = None  # pragma: no mutate
    if body:
        try:
            data = json.loads(body)
        except ValueError:  # not JSON, or not UTF-8
            data = None  # pragma: no mutate
    return Answer(status, data if isinstance(data, dict) else None)


class _TooLarge(Exception):
    """The answer exceeded :data:`MAX_ANSWER_BYTES`."""


class _Decoder:
    """Undoes one ``Content-Encoding`` incrementally, never producing more than ``limit``."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._limit = limit
        self._out: list[bytes] = []
        self._size = 0
        self._encoding = encoding
        self._raw_deflate_tried = False
        self._zlib: Any = None
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":  # zlib-wrapped as the RFC says, raw deflate as some send
            self._zlib = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise ValueError(f"unsupported Content-Encoding {encoding[:40]!r}")

    def feed(self, data: bytes) -> None:
        if self._zlib is None:
            self._keep(data)
            return
        try:
            out = self._zlib.decompress(data, self._limit - self._size + 1)
        except zlib.error:
            if self._encoding != "deflate" or self._raw_deflate_tried or self._size:
                raise
            self._raw_deflate_tried = True
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data, self._limit - self._size + 1)
        self._keep(out)
        if self._zlib.unconsumed_tail:
            raise _TooLarge

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise _TooLarge
        self._out.append(data)

    def result(self) -> bytes:
        if self._zlib is not None:
            self._keep(self._zlib.flush())
        return b"".join(self._out)


def read_body(
    response: requests.Response, deadline: float, limit: int = MAX_ANSWER_BYTES
) -> bytes:
    """:func:`read_stream` of a ``requests`` answer (streamed), kept as its ``content``."""
    body = read_stream(response.raw, deadline, limit)
    response._content = body  # what response.json() and .text read
    return body


def _discard(raw: Any) -> None:
    """Close an answer not read to its end: its connection cannot be reused."""
    raw.close()
    release = getattr(raw, "release_conn", None)
    if release is not None:
        release()


def read_stream(raw: Any, deadline: float, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """Read a streamed urllib3 answer whole, decoded, but never past ``deadline`` nor ``limit``.

    A socket timeout applies to each read, so a server that trickles its answer a byte at a
    time could hold an export forever: the clock is checked (and the socket's timeout
    shortened) between reads. Raises :class:`AnswerTimeout` past the deadline and lets network
    errors through (the caller classifies them); a body that is too large, or that cannot be
    decoded, reads as empty (the status alone then decides). The connection goes back to its
    pool once the answer is read to its end, and is closed otherwise.
    """
    encoding = raw.headers.get("Content-Encoding", "").strip().lower()
    read1 = getattr(raw, "read1", None)
    try:
        decoder = _Decoder(encoding, limit)
    except ValueError as exc:
        _logger.debug("answer not decoded: %s", exc)
        _discard(raw)
        return b""
    received = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AnswerTimeout("the answer did not arrive before the deadline")
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(left)
            if read1 is not None:
                chunk = read1(65536, decode_content=False)
            else:  # urllib3 < 2: no partial reads, the per-read timeout is all there is
                chunk = raw.read(65536, decode_content=False)
            if not chunk:
                break
            received += len(chunk)
            if received > limit:
                raise _TooLarge
            decoder.feed(chunk)
        body = decoder.result()
    except (_TooLarge, zlib.error) as exc:
        _logger.debug("answer body ignored (%s)", type(exc).__name__)
        _discard(raw)  # the rest is not read: this connection cannot be reused
        return b""
    except BaseException:
        _discard(raw)
        raise
    # urllib3 gives the connection back itself once the answer is read to its end; this is for
    # answers that do not.
    release = getattr(raw, "release_conn", None)  # pragma: no mutate
    if release is not None:  # pragma: no mutate
        release()  # pragma: no mutate
    return body
