"""The retry policy and the one classification of transient errors.

Whether a failure is worth another attempt is decided here and nowhere else: the transport asks
:func:`is_retryable_status` of an answer and :func:`is_transient_error` of an exception. The
export's deadline bounds every wait; :class:`RetryPolicy` only says how many attempts a batch
may make and how the backoff grows. Defaults follow the official Altertable SDKs (exponential
backoff with jitter) and add what they lack: ``Retry-After`` is honoured.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import requests

#: Statuses that say "not now" rather than "not this": the request timed out (408), the
#: client is throttled (429), or the server failed (5xx).
RETRYABLE_STATUSES = frozenset({408, 429, *range(500, 600)})


class AnswerTimeout(TimeoutError):
    """Our own timeout: the answer's body did not arrive before the export's deadline."""


def is_retryable_status(status: int) -> bool:
    """True when an answer with this status may come out differently if sent again.

    408, 429 and every 5xx. Every other status is final for this request: a 2xx is accepted,
    a 4xx is about the request or its items and would only be refused again.
    """
    return status in RETRYABLE_STATUSES


def is_transient_error(exc: BaseException) -> bool:
    """True when an exception raised while sending means "try again later".

    The connection could not be made or broke (``requests.ConnectionError``), the server was
    too slow (``requests.Timeout``), or the answer trickled past the deadline
    (:class:`AnswerTimeout`). Anything else (an invalid URL, a proxy misconfiguration) will
    fail the same way on every attempt.
    """
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, AnswerTimeout))


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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
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
