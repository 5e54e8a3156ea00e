"""Values on their way to JSON: timestamps, ``json_safe``, and hostile values end to end.

:func:`format_timestamp` and :func:`json_safe` are tested on their own; then every hostile
value (NaN and infinities, NUL, lone surrogates, 1 MB strings, huge integers, deeply nested log
bodies, reserved ids) is exported over real HTTP into the local receiver, whose strict JSON
parser refuses anything invalid (so a bad byte would show as a refused request): each one is
delivered as valid JSON, and none breaks a batch.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import SECOND_NS, T0_NS, emitted_log_record, finished_spans
from support import ISO_RE

from opentelemetry_exporter_altertable import (
    AltertableLogExporter,
    AltertableSpanExporter,
    RetryPolicy,
)
from opentelemetry_exporter_altertable._values import format_timestamp, json_safe
from opentelemetry_exporter_altertable.receiver import LocalReceiver

# ---------------------------------------------------------------------------- format_timestamp


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (T0_NS, "2023-01-01T12:00:00.000Z"),
        (T0_NS + 123_456_789, "2023-01-01T12:00:00.123Z"),
        (T0_NS + 7_000_000, "2023-01-01T12:00:00.007Z"),
        (1_718_461_800_123_000_000, "2024-06-15T14:30:00.123Z"),
        (4_102_444_800 * SECOND_NS, "2100-01-01T00:00:00.000Z"),
    ],
)
def test_format_timestamp(ns: int, expected: str) -> None:
    assert format_timestamp(ns) == expected


def test_format_timestamp_never_rolls_over_the_format() -> None:
    text = format_timestamp(T0_NS + 999_999_999)
    assert ISO_RE.match(text)
    assert text in {"2023-01-01T12:00:00.999Z", "2023-01-01T12:00:01.000Z"}


# ---------------------------------------------------------------------------- json_safe


def test_json_safe_non_finite_floats_become_null() -> None:
    assert json_safe(math.nan) is None
    assert json_safe(math.inf) is None
    assert json_safe(-math.inf) is None
    assert json_safe([1.0, math.nan, math.inf]) == [1.0, None, None]


def test_json_safe_keeps_plain_values() -> None:
    assert json_safe("text") == "text"
    assert json_safe(True) is True
    assert json_safe(0) == 0
    assert json_safe(10**40) == 10**40
    assert json_safe(1.5) == 1.5
    assert json_safe(None) is None
    negative_zero = json_safe(-0.0)
    assert negative_zero == 0.0
    assert math.copysign(1.0, negative_zero) == -1.0


def test_json_safe_sequences_become_lists() -> None:
    assert json_safe(("a", "b")) == ["a", "b"]
    assert json_safe((1, (2, 3))) == [1, [2, 3]]
    assert json_safe({"k": (1, 2)}) == {"k": [1, 2]}


def test_json_safe_bytes_become_text() -> None:
    value = json_safe(b"abc")
    assert isinstance(value, str)
    json.dumps(value)


def test_json_safe_output_is_strict_json() -> None:
    value = {"a": (math.nan, b"\xff\x00", {"b": -math.inf}), "c": [True, None, 2**70]}
    json.dumps(json_safe(value), allow_nan=False)


# ---------------------------------------------------------------- hostile values end to end


KEY = "pk_test_hostile"


ONE_MB = "x" * (1024 * 1024)


def _props(receiver: LocalReceiver, event: str) -> dict[str, Any]:
    rows = receiver.query(
        f"SELECT properties FROM altertable.analytics.events WHERE event = '{event}'"
    )
    assert len(rows) == 1, rows
    value = rows[0][0]
    loaded: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
    return loaded


def test_hostile_span_attributes_are_delivered_as_valid_json() -> None:
    hostile = {
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "nul": "a\x00b",
        "surrogate": "x\ud800y",
        "big": ONE_MB,
        "floats": [1.5, math.nan, math.inf],
        "huge_int": 2**62,
        "$private": "kept without the dollar",
    }
    spans = finished_spans(
        [
            ("hostile", {"analytics.event": "Hostile", "user.id": "u1", **hostile}, (), 0, 1),
            ("fine", {"analytics.event": "Fine", "user.id": "u2"}, (), 0, 1),
            ("reserved", {"analytics.event": "Reserved", "user.id": "anonymous",
                          "enduser.id": "u3"}, (), 0, 1),
        ]
    )  # fmt: skip
    with LocalReceiver(api_keys=[KEY]) as receiver:
        exporter = AltertableSpanExporter(
            api_key=KEY, endpoint=receiver.endpoint, timeout=10, retry=RetryPolicy(total=0)
        )
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        props = _props(receiver, "Hostile")
        assert props["nan"] is None and props["inf"] is None and props["ninf"] is None
        assert props["nul"] == "a\x00b"
        assert props["surrogate"] == "x\ufffdy"
        assert props["big"] == ONE_MB
        assert props["floats"] == [1.5, None, None]
        assert props["huge_int"] == 2**62
        assert props["private"] == "kept without the dollar"
        assert "$private" not in props
        ids = dict(receiver.query("SELECT event, distinct_id FROM altertable.analytics.events"))
        assert ids == {"Hostile": "u1", "Fine": "u2", "Reserved": "u3"}


def test_deeply_nested_log_body_is_cut_not_fatal() -> None:
    deep: Any = "bottom"
    for _ in range(200):
        deep = {"down": [deep]}
    record = emitted_log_record(
        attributes={"analytics.event": "Deep", "user.id": "u1"},
        body={"deep": deep, "huge": 10**5000, "bytes": b"\xff\xfe"},
    )
    with LocalReceiver(api_keys=[KEY]) as receiver:
        exporter = AltertableLogExporter(
            api_key=KEY, endpoint=receiver.endpoint, timeout=10, retry=RetryPolicy(total=0)
        )
        try:
            assert exporter.export([record]) is LogRecordExportResult.SUCCESS
        finally:
            exporter.shutdown()
        props = _props(receiver, "Deep")
    assert props["huge"] is None  # too long for Python to print: null, not a crash
    assert props["bytes"] == "\ufffd\ufffd"
    depth, node = 0, props["deep"]
    while isinstance(node, dict):
        node = node["down"][0]
        depth += 1
    assert node is None  # cut at the nesting limit
    # Cut at 32 levels of containers: 16 "down" dicts with their lists, then null.
    assert depth == 16


# -- exact edges of the value rules (each pinned where a mutant of it survived) ---------------


def test_integer_bounds_are_exact() -> None:
    """Integers inside +-10**4000 (exclusive) pass as they are; from the bound on they become
    null, as id strings too (Python refuses to print past 4,300 digits)."""
    from opentelemetry_exporter_altertable._values import _INT_LIMIT, _as_id, _value, json_safe

    assert _INT_LIMIT == 10**4000
    for convert in (json_safe, _value):
        assert convert(_INT_LIMIT - 1) == _INT_LIMIT - 1
        assert convert(-_INT_LIMIT + 1) == -_INT_LIMIT + 1
        assert convert(_INT_LIMIT) is None
        assert convert(-_INT_LIMIT) is None
    assert _as_id(_INT_LIMIT - 1) == str(_INT_LIMIT - 1)
    assert _as_id(-_INT_LIMIT + 1) == str(-_INT_LIMIT + 1)
    assert _as_id(_INT_LIMIT) is None
    assert _as_id(-_INT_LIMIT) is None


def test_subclasses_and_unknown_objects_become_their_plain_values() -> None:
    from opentelemetry_exporter_altertable._values import _as_id, _value, json_safe

    class Ratio(float):
        pass

    class Level(enum.IntEnum):
        HIGH = 3

    class Token:
        def __str__(self) -> str:
            return "tok-1"

    for convert in (json_safe, _value):
        assert convert(Ratio(0.5)) == 0.5 and type(convert(Ratio(0.5))) is float
        assert convert(Ratio("nan")) is None
        assert convert(Ratio("inf")) is None
        assert convert(Token()) == "tok-1"
        assert convert(Level.HIGH) == 3 and type(convert(Level.HIGH)) is int
    assert _as_id("") is None  # an empty id is no id
    assert _as_id("u-1") == "u-1"
