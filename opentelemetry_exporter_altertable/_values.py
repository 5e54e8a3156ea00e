"""Attribute values -> JSON-safe values, and timestamps -> the API's ISO 8601 form.

One job: whatever an instrumentation put in an attribute or a log body, turn it into something
``json.dumps(allow_nan=False)`` accepts and the API stores as the caller meant it. The common
cases (ASCII ``str``, ``bool``, small ``int``, finite ``float``) go through one fast path,
:func:`_value`, which every rule of the mapping calls; everything else falls to
:func:`json_safe`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

_MAX_DEPTH = 32
#: Python refuses to print integers of more than 4300 digits; longer ones become null.
_INT_LIMIT = 10**4000


def _clean_str(value: str) -> str:
    """Replace lone surrogates (valid in Python, invalid in UTF-8) with U+FFFD.

    The ASCII test is the fast path for strings: it is the only place it is written.
    """
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        wide = value.encode("utf-16", "surrogatepass")
        return wide.decode("utf-16", "replace")
    return value


def _value(value: Any) -> Any:
    """``json_safe`` with the common cases first (this runs for every property).

    Only a shortcut: whatever it does not answer itself goes to :func:`json_safe`, which
    answers the same for those types (the tests compare both on every kind of value).
    """
    kind = type(value)  # pragma: no mutate
    if kind is str:
        return _clean_str(value)
    if kind is bool or (kind is int and -_INT_LIMIT < value < _INT_LIMIT):  # pragma: no mutate
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    return json_safe(value)


def json_safe(value: Any, _depth: int = 0) -> Any:  # noqa: PLR0911  # a flat type dispatch, the commonest types first
    """Turn an attribute or body value into something ``json.dumps(allow_nan=False)`` accepts.

    Sequences become lists, NaN and infinities become ``None`` (JSON cannot carry them),
    bytes are decoded, anything unknown becomes its ``str``; nesting is cut at 32 levels.
    """
    kind = type(value)
    if kind is str:
        return _clean_str(value)
    if kind is bool or value is None:
        return value
    if kind is int:
        return value if -_INT_LIMIT < value < _INT_LIMIT else None
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, str):  # str subclasses (enums, tagged strings) stay strings
        return _clean_str(str.__str__(value))
    if _depth >= _MAX_DEPTH:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {_clean_str(str(k)): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, Sequence, set, frozenset)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, int):  # int subclasses such as IntEnum (bool has no subclasses)
        return json_safe(int(value))
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return _clean_str(str(value))


def _as_id(value: Any) -> str | None:
    """An identifier attribute as the API's string id; ``None`` when it cannot be one."""
    if isinstance(value, str):
        return _clean_str(str.__str__(value)) if value else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value)) if -_INT_LIMIT < value < _INT_LIMIT else None
    return None


@lru_cache(maxsize=256)
def _format_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch -> ISO 8601 UTC with milliseconds, as the official SDKs send."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_format_seconds(seconds)}.{rest // 1_000_000:03d}Z"
