"""The retry policy and the one classification of transient errors.

Whether a failure is worth another attempt is decided here and nowhere else: the transport asks
:func:`is_retryable_status` of an answer and :func:`is_transient_error` of an exception. The
export's deadline bounds every wait; :class:`RetryPolicy` only says how many attempts a batch
may make and how the backoff grows. Defaults follow the official Altertable SDKs (exponential
backoff with jitter) and add what they lack: ``Retry-After`` is honoured.
"""

from __future__ import annotations

import http.client
import math
import random
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import requests
import urllib3.exceptions

#: Statuses that say "not now" rather than "not this": the request timed out (408), the
#: client is throttled (429), or the server failed (5xx).
RETRYABLE_STATUSES = frozenset({408, 429, *range(500, 600)})


class AnswerTimeout(TimeoutError):
    """Our own timeout: the answer's body did not arrive before the export's deadline."""


#: What the network raises when it is down, slow or cut, at any layer we call: requests
#: (``ConnectionError``, ``Timeout``, ``ChunkedEncodingError``), urllib3 while a body is read
#: (``ReadTimeoutError``, ``ProtocolError``, ``IncompleteRead``...), the standard library
#: underneath (``OSError``, ``http.client.HTTPException``), and our own deadline.
_TRANSIENT_REQUESTS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_TRANSIENT: tuple[type[BaseException], ...] = (
    *_TRANSIENT_REQUESTS,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ProxyError,  # the proxy unreachable: requests' ProxyError, a ConnectionError
    http.client.HTTPException,
    OSError,  # socket timeouts and resets; AnswerTimeout is one too
)

#: TLS failures at any layer: requests', urllib3's and the ssl module's own.
_TLS: tuple[type[BaseException], ...] = (
    requests.exceptions.SSLError,
    urllib3.exceptions.SSLError,
    ssl.SSLError,
    ssl.CertificateError,
)


def is_retryable_status(status: int) -> bool:
    """True when an answer with this status may come out differently if sent again.

    408, 429 and every 5xx. Every other status is final for this request: a 2xx is accepted,
    a 4xx is about the request or its items and would only be refused again.
    """
    return status in RETRYABLE_STATUSES


def is_tls_error(exc: BaseException) -> bool:
    """True when the TLS handshake failed: a setting to fix, not a moment to wait out.

    An untrusted certificate (self-signed, or a TLS-intercepting proxy's), a certificate for
    another host name, or a plain-HTTP port behind an ``https://`` endpoint fail the same way
    on every attempt, so retrying them only multiplies the requests. Checked before
    :func:`is_transient_error`, since requests' ``SSLError`` is also a ``ConnectionError``.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:  # the cause chain (requests wraps urllib3)
        if isinstance(current, _TLS):
            return True
        if isinstance(current, urllib3.exceptions.MaxRetryError) and isinstance(
            current.reason, _TLS
        ):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def is_transient_error(exc: BaseException) -> bool:
    """True when an exception raised while sending means "try again later".

    The connection could not be made or broke, the server was too slow to connect to or to
    answer, or the answer trickled past the deadline (:class:`AnswerTimeout`), whichever layer
    noticed it (see ``_TRANSIENT``). Not TLS failures (:func:`is_tls_error`), and not what will
    fail the same way on every attempt (an invalid URL, a proxy misconfiguration): those are
    settings. Anything this does not name is unexpected; the transport owes those calls too.
    """
    if is_tls_error(exc):
        return False
    if isinstance(exc, requests.RequestException):  # an OSError too: only the network ones
        return isinstance(exc, _TRANSIENT_REQUESTS)
    return isinstance(exc, _TRANSIENT)


def tls_problem(exc: BaseException) -> str:
    """The TLS failure in words, from the first line of its message (bounded)."""
    text = str(exc)
    lowered = text.lower()
    if "wrong_version_number" in lowered or "wrong version number" in lowered or (
        "record layer failure" in lowered
    ) or "packet length too long" in lowered or "unknown protocol" in lowered:
        return "the endpoint does not speak TLS (a plain-HTTP port behind https://?)"
    if "hostname mismatch" in lowered or "doesn't match" in lowered or (
        "not valid for" in lowered
    ) or "ip address mismatch" in lowered:
        return "the certificate is for another host name"
    if "certificate verify failed" in lowered or "self-signed" in lowered or (
        "self signed" in lowered
    ) or "unable to get local issuer" in lowered:
        return "the certificate is not trusted (self-signed, or a TLS-intercepting proxy's)"
    return "the TLS handshake failed"


@dataclass(frozen=True)
class RetryPolicy:
    """How a batch is retried after a connection error, a timeout, 408, 429 or a 5xx.

    ``total`` retries at most (so ``total + 1`` attempts), waiting
    ``backoff_factor * 2**n`` seconds (capped at ``backoff_max``) scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``, or the server's ``Retry-After`` when it sends one. Whatever the
    policy says, no wait outlives the export's deadline.
    """

    total: int = 5
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.total < 0:
            raise ValueError("RetryPolicy.total must be >= 0")
        if self.backoff_factor < 0 or self.backoff_max < 0:
            raise ValueError("RetryPolicy backoff values must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be between 0 and 1")

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry)."""
        base = min(self.backoff_max, self.backoff_factor * 2.0**retry_number)
        if self.jitter:
            draw: float = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
            base *= draw
        return max(0.0, base)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:  # noqa: PLR0911  # each malformed header form returns None where it is found
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    ``None`` when absent or malformed (the policy's own backoff applies); a date in the past
    gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # not an integer as RFC 9110 wants, but unambiguous
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
