"""Parse and validate ingestion request bodies the way the Altertable API does.

Pure functions, no I/O: bytes in, typed items or an :class:`ApiError` out. The rules follow
the API reference and the official mock server:

* The body is a single JSON object or a JSON array of them, optionally gzip-encoded
  (``Content-Encoding: gzip``). Any ``Content-Type`` is accepted, because the browser SDK
  posts beacons as ``text/plain``.
* Malformed JSON (including ``NaN``/``Infinity``, numbers out of range, lone surrogates and
  invalid UTF-8, all of which a strict JSON parser refuses) is ``400``, and so is JSON nested
  deeper than :data:`MAX_DEPTH` (the parser's own recursion limit is never reached).
* What a body may cost is bounded before it is parsed: at most ``max_bytes`` once inflated
  (checked while inflating, so a gzip bomb stops at the limit), at most :data:`MAX_VALUES`
  JSON values and :data:`MAX_ITEMS` items; beyond them ``413``, which makes a client split.
* A body that does not match the schema is ``422``, for the *whole* request: like the
  mock's JSON layer, the schema is checked for every item before anything is stored. That
  covers a missing or non-string ``event``/``environment``/``distinct_id``/``new_user_id``,
  a non-string optional id, a ``properties``/``traits`` that is not an object, and a
  ``timestamp`` that is neither an ISO 8601 string nor a number.
* ``properties`` is required on ``/track``, as the REST reference says (send ``{}`` when
  empty); ``null`` or a missing ``properties`` is ``422``. The SDKs turn ``null`` into ``{}``
  before sending, and so must any client.
* A property key starting with ``$`` that is not one of the API's built-ins makes the whole
  request fail with ``400 unknown-built-in-property``.
* Unknown top-level fields are ignored.

What is checked item by item, after this, is the environment (see the HTTP front).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .._api import BUILT_IN_PROPERTIES as _MAPPING_BUILT_INS

__all__ = [
    "BUILT_IN_PROPERTIES",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_VALUES",
    "AliasItem",
    "ApiError",
    "IdentifyItem",
    "TrackItem",
    "decode_body",
    "parse_alias",
    "parse_identify",
    "parse_timestamp",
    "parse_track",
]

# The API's built-in property names: one list, shared with the exporter's mapping.
BUILT_IN_PROPERTIES = _MAPPING_BUILT_INS
"""Property names starting with ``$`` that the API knows; any other ``$`` key is refused."""

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a body (an item's properties sit at 2)."""
MAX_VALUES = 1_000_000
"""Most JSON values in one body, counted from above as separators (``,`` ``:``) plus opened
containers outside strings: an array of objects counts each twice. ~100 MB parsed, at most."""
MAX_ITEMS = 10_000
"""Most items in one array body (the exporters send 100 by default)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CONTAINERS = (dict, list)
# A JSON string literal, unrolled so that long strings scan in C without backtracking.
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_ISO_8601 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


class ApiError(Exception):
    """A refusal, with the HTTP status and the API's ``error_code``."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON answer: the API's ``ok``/``error_code`` shape plus the client spec's
        ``error``/``message``, so a client reading either convention understands it."""
        return {
            "ok": False,
            "task_id": None,
            "error_code": self.error_code,
            "error": self.error_code,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class TrackItem:
    environment: str
    event: str
    properties: dict[str, Any]
    distinct_id: str | None
    anonymous_id: str | None
    device_id: str | None
    session_id: str | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class IdentifyItem:
    environment: str
    distinct_id: str
    anonymous_id: str | None
    device_id: str | None
    traits: dict[str, Any] | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class AliasItem:
    environment: str
    distinct_id: str
    new_user_id: str
    timestamp: datetime


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is out of range")
    return value


def decode_body(raw: bytes, content_encoding: str | None, max_bytes: int) -> Any:
    """Decompress (gzip) and parse a request body; ``400`` when it is not strict JSON.

    Bounded in memory: inflating stops one byte past ``max_bytes``, and a body with more than
    :data:`MAX_VALUES` values is refused (``413``) before the parser builds any of them.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        data: bytes | bytearray = _gunzip(raw, max_bytes)
    elif encoding in ("", "identity"):
        data = raw
    else:
        raise ApiError(400, "invalid-headers", f"unsupported Content-Encoding {encoding!r}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid-json", f"malformed JSON body: {exc}") from None
    del data
    _check_value_count(text)
    try:
        doc = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise ApiError(400, "invalid-json", f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    if isinstance(doc, list) and len(doc) > MAX_ITEMS:
        raise ApiError(413, "payload-too-large", f"more than {MAX_ITEMS} items in one request")
    _check_shape(doc, "\\u" in text)
    return doc


def _check_value_count(text: str) -> None:
    """Refuse a body with more than :data:`MAX_VALUES` values, counted without parsing.

    Every value but the first follows a ``,`` or ``:`` or opens a container, so counting those
    characters bounds the number of values from above in C speed. Only when that bound is over
    the limit are the string literals taken out (their commas and brackets are not structure)
    and the count made exact.
    """
    if len(text) <= 2 * MAX_VALUES - 2 or _structural_count(text) <= MAX_VALUES:
        return  # every value but the last takes two characters at least: ``0,``
    if _structural_count(_STRING_LITERAL.sub('""', text)) > MAX_VALUES:
        raise ApiError(413, "payload-too-large", f"body has more than {MAX_VALUES} JSON values")


def _structural_count(text: str) -> int:
    return text.count(",") + text.count(":") + text.count("[") + text.count("{") + 1


def _too_deep() -> ApiError:
    return ApiError(400, "invalid-json", f"malformed JSON body: nested deeper than {MAX_DEPTH}")


def _check_shape(doc: Any, check_surrogates: bool) -> None:
    """Nesting within :data:`MAX_DEPTH`; with ``check_surrogates``, no lone surrogate.

    Iterative, so no depth of input can exhaust the stack here; only containers are stacked.
    Each level is one comprehension (run in C), which keeps this to ~1 us per ingested event.
    """
    level = [doc] if type(doc) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise _too_deep()
        level = [
            value
            for container in level
            for value in (container.values() if type(container) is dict else container)
            if type(value) in _CONTAINERS
        ]
    if check_surrogates:
        _check_surrogates(doc)


def _check_surrogates(doc: Any) -> None:
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            _check_string(value)
        elif isinstance(value, dict):
            for key in value:
                _check_string(key)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _check_string(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "invalid-json", "malformed JSON body: lone surrogate in a string"
        ) from None


def _gunzip(raw: bytes, max_bytes: int) -> bytearray:
    """Inflate gzip (members concatenated), never holding more than ``max_bytes + 1`` out."""
    out = bytearray()
    data = raw
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(data, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise ApiError(400, "invalid-json", f"body is not valid gzip: {exc}") from None
        if len(out) > max_bytes:
            raise ApiError(413, "payload-too-large", f"decompressed body exceeds {max_bytes} bytes")
        if not inflater.eof:
            raise ApiError(400, "invalid-json", "body is truncated gzip")
        data = inflater.unused_data
    return out


def parse_timestamp(value: Any, where: str, now: datetime) -> datetime:
    """ISO 8601 string (no offset = UTC) or a number of Unix milliseconds; ``None`` = now."""
    if value is None:
        return now
    if isinstance(value, bool):
        raise _schema(where, "'timestamp' must be an ISO 8601 string or Unix milliseconds")
    if isinstance(value, (int, float)):
        try:
            return _EPOCH + timedelta(milliseconds=value)
        except (OverflowError, ValueError):
            raise _schema(where, f"'timestamp' {value!r} is out of range") from None
    if isinstance(value, str):
        try:  # C-fast for what SDKs send; Python 3.10's version needs the fallback for "Z"
            parsed: datetime | None = datetime.fromisoformat(value)
        except ValueError:
            parsed = _parse_iso(value)
        if parsed is None:
            raise _schema(where, f"'timestamp' {value!r} is not an ISO 8601 date-time")
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
    raise _schema(where, "'timestamp' must be an ISO 8601 string or Unix milliseconds")


def _parse_iso(text: str) -> datetime | None:
    match = _ISO_8601.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if offset and offset not in ("Z", "z"):
        digits = offset[1:].replace(":", "")
        delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        tz = timezone(-delta if offset[0] == "-" else delta)
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micros,
            tzinfo=tz,
        )
    except (ValueError, OverflowError):
        return None


def _schema(where: str, message: str) -> ApiError:
    return ApiError(422, "invalid-payload", f"{where}: {message}")


def _items(doc: Any, endpoint: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(doc, dict):
        return [(endpoint, doc)]
    if isinstance(doc, list):
        out = []
        for index, item in enumerate(doc):
            where = f"{endpoint} item {index}"
            if not isinstance(item, dict):
                raise _schema(where, "expected a JSON object")
            out.append((where, item))
        return out
    raise _schema(endpoint, "expected a JSON object or an array of objects")


def _required_str(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        problem = "is required" if value is None else "must be a string"
        raise _schema(where, f"'{key}' {problem}")
    return value


def _optional_str(item: dict[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _schema(where, f"'{key}' must be a string or null")


def parse_track(doc: Any, now: datetime) -> list[TrackItem]:
    """Validate a ``/track`` body; ``now`` stands in for a missing ``timestamp``."""
    out: list[TrackItem] = []
    for where, item in _items(doc, "track"):
        environment = _required_str(item, "environment", where)
        event = _required_str(item, "event", where)
        properties = item.get("properties")
        if not isinstance(properties, dict):
            if properties is None:
                raise _schema(where, "'properties' is required (send {} when empty)")
            raise _schema(where, "'properties' must be an object")
        for key in properties:
            if key[:1] == "$" and key not in BUILT_IN_PROPERTIES:
                raise ApiError(
                    400,
                    "unknown-built-in-property",
                    f"{where}: property {key!r} starts with '$' but is not a built-in property",
                )
        out.append(
            TrackItem(
                environment,
                event,
                properties,
                _optional_str(item, "distinct_id", where),
                _optional_str(item, "anonymous_id", where),
                _optional_str(item, "device_id", where),
                _optional_str(item, "session_id", where),
                parse_timestamp(item.get("timestamp"), where, now),
            )
        )
    return out


def parse_identify(doc: Any, now: datetime) -> list[IdentifyItem]:
    """Validate an ``/identify`` body; ``traits`` may be absent or ``null``."""
    out: list[IdentifyItem] = []
    for where, item in _items(doc, "identify"):
        environment = _required_str(item, "environment", where)
        distinct_id = _required_str(item, "distinct_id", where)
        traits = item.get("traits")
        if traits is not None and not isinstance(traits, dict):
            raise _schema(where, "'traits' must be an object")
        out.append(
            IdentifyItem(
                environment,
                distinct_id,
                _optional_str(item, "anonymous_id", where),
                _optional_str(item, "device_id", where),
                traits,
                parse_timestamp(item.get("timestamp"), where, now),
            )
        )
    return out


def parse_alias(doc: Any, now: datetime) -> list[AliasItem]:
    """Validate an ``/alias`` body: ``distinct_id`` is merged into ``new_user_id``."""
    out: list[AliasItem] = []
    for where, item in _items(doc, "alias"):
        out.append(
            AliasItem(
                _required_str(item, "environment", where),
                _required_str(item, "distinct_id", where),
                _required_str(item, "new_user_id", where),
                parse_timestamp(item.get("timestamp"), where, now),
            )
        )
    return out
