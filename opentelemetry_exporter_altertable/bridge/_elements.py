"""Counting what an OTLP request holds before decoding it, so a small body cannot cost much.

A few bytes of protobuf are a message (an empty span is two bytes), and decoding builds an
object for each: 16 MiB of empty spans decode into gigabytes. So the records (spans, log
records) and the elements (every message inside: resources, scopes, records, events, links,
attributes, values) are counted first, on the wire, and a request past
:attr:`~.._http_server.ListenerBounds.max_records` or ``max_elements`` is refused
(:class:`TooManyElements`, answered 413) before anything is built.

Counting is cheap where it can be: every protobuf element costs at least two bytes, so a body
shorter than twice the bound is not walked at all; OTLP JSON's objects and arrays are counted
by their opening brackets, which ``bytes.count`` does at memory speed, before ``json.loads``.
"""

from __future__ import annotations

from typing import Any

from .._http_server import ListenerBounds

__all__ = ["TooManyElements", "check_json", "check_json_records", "check_protobuf"]


class TooManyElements(ValueError):
    """The request holds more records or elements than the bounds allow (answered 413)."""


# Message -> {field number: the message it holds}; fields not listed are skipped unread.
_SCHEMA: dict[str, dict[int, str]] = {
    "ExportTraceServiceRequest": {1: "ResourceSpans"},
    "ExportLogsServiceRequest": {1: "ResourceLogs"},
    "ResourceSpans": {1: "Resource", 2: "ScopeSpans"},
    "ResourceLogs": {1: "Resource", 2: "ScopeLogs"},
    "Resource": {1: "KeyValue"},
    "ScopeSpans": {1: "Scope", 2: "Span"},
    "ScopeLogs": {1: "Scope", 2: "LogRecord"},
    "Scope": {3: "KeyValue"},
    "Span": {9: "KeyValue", 11: "Event", 13: "Link"},
    "Event": {3: "KeyValue"},
    "Link": {4: "KeyValue"},
    "LogRecord": {5: "AnyValue", 6: "KeyValue"},
    "KeyValue": {2: "AnyValue"},
    "AnyValue": {5: "ArrayValue", 6: "KeyValueList"},
    "ArrayValue": {1: "AnyValue"},
    "KeyValueList": {1: "KeyValue"},
}
_RECORDS = frozenset({"Span", "LogRecord"})
_KEY_VALUE = "KeyValue"
#: The first byte of an ``AnyValue`` holding an array (field 5) or a kvlist (field 6).
_NESTED_TAGS = frozenset({0x2A, 0x32})
_ANY_VALUE = _SCHEMA["AnyValue"]


def _refuse(what: str, limit: int) -> TooManyElements:
    return TooManyElements(f"more than {limit} {what} in one request; send smaller batches")


def check_protobuf(body: bytes, traces: bool, bounds: ListenerBounds) -> None:
    """Refuse a protobuf request with too many records or elements, without decoding it.

    Malformed framing is left for the decoder to report; only counts are judged here.
    """
    if len(body) < 2 * min(bounds.max_records, bounds.max_elements):
        return  # each element takes two bytes at least: the bounds cannot be reached
    root = "ExportTraceServiceRequest" if traces else "ExportLogsServiceRequest"
    # Below twice the element bound only the records can be too many: they are counted and
    # stepped over whole, which keeps the walk off the hot path of ordinary large requests.
    records_only = len(body) < 2 * bounds.max_elements
    try:
        _walk(body, root, bounds, records_only)
    except IndexError:
        return  # truncated: the decoder says so


def _walk(body: bytes, root: str, bounds: ListenerBounds, records_only: bool = False) -> None:  # noqa: PLR0912, PLR0915  # one wire loop, inlined
    max_records, max_elements = bounds.max_records, bounds.max_elements
    records = elements = 0
    stack: list[tuple[int, int, dict[int, str]]] = [(0, len(body), _SCHEMA[root])]
    while stack:
        pos, end, fields = stack.pop()
        while pos < end:
            key = body[pos]
            pos += 1
            if key & 0x80:  # a tag past one byte: read the rest of its varint
                key &= 0x7F
                shift = 7
                while True:
                    byte = body[pos]
                    pos += 1
                    key |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
            wire = key & 7
            if wire == 2:
                length = body[pos]
                pos += 1
                if length & 0x80:
                    length &= 0x7F
                    shift = 7
                    while True:
                        byte = body[pos]
                        pos += 1
                        length |= (byte & 0x7F) << shift
                        if not byte & 0x80:
                            break
                        shift += 7
                child = fields.get(key >> 3)
                if child == _KEY_VALUE:  # the common element: its value looked at, not walked
                    elements += 1
                    if elements > max_elements:
                        raise _refuse("elements", max_elements)
                    # The usual layout, a short key then a short value, read inline: the
                    # value's first byte says whether it nests; any other goes the long way.
                    stop = min(pos + length, end)
                    at = pos + 2 + body[pos + 1] if length > 1 else stop
                    if (
                        at + 2 < stop
                        and body[pos] == 0x0A
                        and body[pos + 1] < 0x80
                        and body[at] == 0x12
                        and body[at + 1] < 0x80
                    ):
                        if body[at + 2] in _NESTED_TAGS:
                            stack.append((at + 2, stop, _ANY_VALUE))
                    elif length:
                        nested = _nested_value(body, pos, stop)
                        if nested is not None:
                            stack.append((*nested, _ANY_VALUE))
                elif child is not None:
                    elements += 1
                    if elements > max_elements:
                        raise _refuse("elements", max_elements)
                    if child in _RECORDS:
                        records += 1
                        if records > max_records:
                            raise _refuse("spans or log records", max_records)
                        if records_only:
                            pos += length
                            continue
                    inner = _SCHEMA[child]
                    if length and inner:
                        stack.append((pos, min(pos + length, end), inner))
                pos += length
            elif wire == 0:
                while body[pos] & 0x80:
                    pos += 1
                pos += 1
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return  # groups or garbage: the decoder refuses it


def _varint(body: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = body[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _nested_value(body: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Where a ``KeyValue``'s value lies when it is an array or a kvlist (whose elements are
    then counted too); ``None`` for a scalar, which holds no further element."""
    while pos < end:
        key, pos = _varint(body, pos)
        wire = key & 7
        if wire == 2:
            length, pos = _varint(body, pos)
            if key >> 3 == 2 and length and body[pos] in _NESTED_TAGS:
                return pos, min(pos + length, end)
            pos += length
        elif wire == 0:
            pos = _varint(body, pos)[1]
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            return None
    return None


def check_json(body: bytes, bounds: ListenerBounds) -> None:
    """Refuse OTLP JSON with more objects and arrays than ``max_elements``, before parsing.

    Brackets inside strings are counted too, so a body near the bound is counted again
    without its string literals before it is refused.
    """
    if len(body) <= bounds.max_elements:
        return
    if body.count(b"{") + body.count(b"[") <= bounds.max_elements:
        return
    import re

    bare = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', body)
    if bare.count(b"{") + bare.count(b"[") > bounds.max_elements:
        raise _refuse("elements", bounds.max_elements)


def check_json_records(doc: dict[str, Any], traces: bool, bounds: ListenerBounds) -> None:
    """Refuse a parsed OTLP JSON document holding more records than ``max_records``
    (before ``json_format`` builds a message of it). Either field spelling is counted."""
    outer, middle, inner = (
        (("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans"), ("spans",))
        if traces
        else (
            ("resourceLogs", "resource_logs"),
            ("scopeLogs", "scope_logs"),
            ("logRecords", "log_records"),
        )
    )
    records = 0
    for resource in _lists(doc, outer):
        for scope in _lists(resource, middle):
            for items in _lists(scope, inner, leaves=True):
                records += len(items)
    if records > bounds.max_records:
        raise _refuse("spans or log records", bounds.max_records)


def _lists(node: Any, keys: tuple[str, ...], leaves: bool = False) -> Any:
    if not isinstance(node, dict):
        return
    for key in keys:
        value = node.get(key)
        if isinstance(value, list):
            if leaves:
                yield value
            else:
                yield from value
