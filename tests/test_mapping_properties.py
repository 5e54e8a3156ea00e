"""Properties of the mapping that must hold for any attribute values a program can set.

Whatever the keys and values (text with NUL or lone surrogates, huge integers, NaN and
infinities, sequences, ``$``-prefixed keys), every payload must be strict JSON that encodes to
valid UTF-8, must never carry an unknown ``$`` property or a reserved ``distinct_id``, and must
carry a well-formed timestamp.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otel_builders import (
    T0_NS,
    EventSpec,
    emitted_log_record,
    finished_span,
    span_context,
)
from support import ISO_RE

from opentelemetry_exporter_altertable._api import LIB_NAME, LIB_VERSION, is_reserved_id
from opentelemetry_exporter_altertable._mapping import Calls, MappingOptions
from opentelemetry_exporter_altertable._sdk import map_log_records, map_spans
from opentelemetry_exporter_altertable._values import format_timestamp, json_safe

# From the API facts: the built-in property names and the reserved user ids.
BUILT_INS = frozenset(
    {
        "$lib", "$lib_version", "$release", "$url", "$referer", "$viewport", "$ip",
        "$user_agent", "$utm_source", "$utm_medium", "$utm_campaign", "$utm_term",
        "$utm_content", "$app_name", "$app_version", "$app_build", "$app_namespace",
        "$device", "$device_type", "$device_manufacturer", "$device_model", "$os",
        "$os_version", "$screen_name",
    }
)  # fmt: skip
RESERVED_CASELESS = frozenset(
    {
        "anonymous_id", "anonymous", "distinct_id", "distinctid", "false", "guest", "id",
        "not_authenticated", "true", "undefined", "user_id", "user", "visitor_id", "visitor",
    }
)  # fmt: skip
RESERVED_EXACT = frozenset({"[object Object]", "0", "NaN", "none", "None", "null"})

DISTINCT_KEYS = ("analytics.distinct_id", "user.id", "enduser.id")
TRACK_KEYS = {
    "environment",
    "event",
    "properties",
    "timestamp",
    "distinct_id",
    "anonymous_id",
    "device_id",
    "session_id",
}
IDENTIFY_KEYS = {"environment", "distinct_id", "anonymous_id", "traits", "timestamp"}
ALIAS_KEYS = {"environment", "distinct_id", "new_user_id", "timestamp"}

# Each example builds real SDK providers; these counts keep the file at a few seconds.
PROFILE = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHEAP = settings(max_examples=200, deadline=None)


def reserved(value: str) -> bool:
    """Independent oracle for the reserved-id rule."""
    return value in RESERVED_EXACT or value.lower() in RESERVED_CASELESS


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# --------------------------------------------------------------------------- strategies

# Hypothesis' text strategies never produce surrogates, so code points are drawn directly.
_code_points = st.one_of(
    st.integers(0x20, 0x7E),
    st.sampled_from([0x00, 0x0A, 0x7F, 0xFFFD, 0xFFFF, 0x1F600]),
    st.integers(0xD800, 0xDFFF),
    st.integers(0, 0x10FFFF),
)
raw_text = st.lists(_code_points, max_size=10).map(lambda cps: "".join(map(chr, cps)))
texts = st.one_of(
    raw_text,
    st.sampled_from(
        [
            "",
            "u1",
            "user_123",
            "\x00",
            "\ud800",
            "a\udfffb",
            "\ud83d\ude00",
            *RESERVED_EXACT,
            *RESERVED_CASELESS,
            "GUEST",
            "Anonymous",
        ]
    ),
)
ints = st.one_of(
    st.integers(-1000, 1000),
    st.integers(),
    st.integers(-(2**200), 2**200),
    st.sampled_from([0, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**40]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308]),
)
scalars = st.one_of(texts, st.booleans(), ints, floats)
homogeneous = st.one_of(
    st.lists(texts, max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
    st.lists(ints, max_size=4).map(tuple),
    st.lists(floats, max_size=4).map(tuple),
)
values = st.one_of(scalars, homogeneous)
# Log attributes and bodies are AnyValue: bytes, None and nested maps as well.
any_values = st.recursive(
    st.one_of(values, st.binary(max_size=8), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(raw_text, st.sampled_from(["$x", "k"])), inner, max_size=3),
    ),
    max_leaves=6,
)

CONTRACT_KEYS = [
    "analytics.event",
    "analytics.distinct_id",
    "user.id",
    "enduser.id",
    "analytics.anonymous_id",
    "enduser.pseudo.id",
    "analytics.device_id",
    "device.id",
    "analytics.session_id",
    "session.id",
    "analytics.alias",
    "user.email",
    "user.full_name",
    "user.name",
    "user.roles",
    "analytics.traits.plan",
    "url.full",
    "user_agent.original",
    "client.address",
    "http.request.header.referer",
    "service.name",
    "service.version",
    "deployment.environment.name",
    "deployment.environment",
    "event.name",
    "otel.trace_id",
    "$lib",
    "$lib_version",
    "$ip",
    "$url",
    "$release",
    "$utm_source",
    "$foo",
    "$$foo",
    "$$utm_source",
    "$",
    "$$",
    "analytics.properties.",
    "analytics.properties.$x",
    "analytics.properties.$$x",
    "analytics.properties.$utm_term",
    "analytics.properties.plan",
    "plan",
]
non_empty_text = raw_text.filter(bool)
keys = st.one_of(
    st.sampled_from(CONTRACT_KEYS),
    non_empty_text,
    raw_text.map(lambda t: "$" + t),
    raw_text.map(lambda t: "analytics.properties." + t),
    raw_text.map(lambda t: "analytics.traits." + t),
)
attribute_maps = st.dictionaries(keys, values, max_size=8)
log_attribute_maps = st.dictionaries(keys, any_values, max_size=8)
# Resources: random attributes plus, often, text on the keys the mapping reads from a resource.
resources = st.tuples(
    attribute_maps,
    st.dictionaries(
        st.sampled_from(
            [
                "deployment.environment.name",
                "deployment.environment",
                "service.name",
                "service.version",
                "user.id",
                "user.email",
            ]
        ),
        texts,
        max_size=3,
    ),
).map(lambda pair: {**pair[0], **pair[1]})
tags = st.one_of(st.none(), st.just(True), texts, scalars)


def with_tag(attributes: dict[str, Any], tag: Any) -> dict[str, Any]:
    if tag is not None:
        attributes = {**attributes, "analytics.event": tag}
    return attributes


# --------------------------------------------------------------------------- invariants


def walk_strings(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            found.append(key)
            found.extend(walk_strings(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(walk_strings(item))
    return found


def assert_strict_json(payload: dict[str, Any]) -> None:
    text = json.dumps(payload, allow_nan=False)
    text.encode("utf-8")
    # What goes on the wire: UTF-8 without ASCII escaping, so lone surrogates would fail here.
    wire = json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert json.loads(wire) == payload  # also proves there are no tuples or other non-JSON types
    for string in walk_strings(payload):
        assert not has_surrogate(string), string


def assert_valid_calls(calls: Calls) -> None:
    for track in calls.tracks:
        assert set(track) <= TRACK_KEYS
        assert {"environment", "event", "properties", "timestamp"} <= set(track)
        assert isinstance(track["event"], str)
        assert track["event"]
        properties = track["properties"]
        assert isinstance(properties, dict)
        for key in properties:
            assert isinstance(key, str)
            if key.startswith("$"):
                assert key in BUILT_INS, key
        assert properties["$lib"] == LIB_NAME
        assert properties["$lib_version"] == LIB_VERSION
    for identify in calls.identifies:
        assert set(identify) <= IDENTIFY_KEYS
        assert {"environment", "distinct_id", "traits", "timestamp"} <= set(identify)
        assert isinstance(identify["traits"], dict)
        assert identify["traits"]
    for alias in calls.aliases:
        assert set(alias) == ALIAS_KEYS
        assert isinstance(alias["new_user_id"], str)
        assert alias["new_user_id"]
        assert not reserved(alias["new_user_id"])
        assert alias["new_user_id"] != alias["distinct_id"]
    for payload in [*calls.tracks, *calls.identifies, *calls.aliases]:
        assert_strict_json(payload)
        assert isinstance(payload["environment"], str)
        assert payload["environment"]
        assert ISO_RE.match(payload["timestamp"]), payload["timestamp"]
        for field in ("distinct_id", "anonymous_id", "device_id", "session_id"):
            if field in payload:
                assert isinstance(payload[field], str)
                assert payload[field]
        if "distinct_id" in payload:
            assert not reserved(payload["distinct_id"]), payload["distinct_id"]


def is_tag(value: Any) -> bool:
    return value is True or (type(value) is str and value != "")


def expected_distinct_id(levels: list[Mapping[str, Any]]) -> str | None:
    """The documented lookup: level by level, keys in order, reserved and bad types skipped."""
    for attributes in levels:
        for key in DISTINCT_KEYS:
            value = attributes.get(key)
            if type(value) is str and value:
                candidate = value
            elif type(value) is int:
                candidate = str(value)
            else:
                continue
            if reserved(candidate):
                continue
            return candidate
    return None


class WarningLog:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, key: str, message: str) -> None:
        assert isinstance(key, str)
        assert isinstance(message, str)
        self.calls.append((key, message))


def options(on_warning: Callable[[str, str], None]) -> MappingOptions:
    return MappingOptions(on_warning=on_warning)


# --------------------------------------------------------------------------- spans


@PROFILE
@given(
    name=texts,
    span_attributes=attribute_maps,
    span_tag=tags,
    event_name=texts,
    event_attributes=attribute_maps,
    event_tag=tags,
    resource=resources,
)
def test_any_span_gives_valid_payloads(
    *,
    name: str,
    span_attributes: dict[str, Any],
    span_tag: Any,
    event_name: str,
    event_attributes: dict[str, Any],
    event_tag: Any,
    resource: dict[str, Any],
) -> None:
    span = finished_span(
        name,
        with_tag(span_attributes, span_tag),
        resource=resource,
        events=(EventSpec(event_name, with_tag(event_attributes, event_tag), T0_NS + 1),),
    )
    calls = map_spans([span], options(WarningLog()))
    assert_valid_calls(calls)


@PROFILE
@given(name=texts, attributes=attribute_maps, tag=tags, resource=resources)
def test_span_track_count_event_and_distinct_id(
    name: str, attributes: dict[str, Any], tag: Any, resource: dict[str, Any]
) -> None:
    span = finished_span(name, with_tag(attributes, tag), resource=resource)
    calls = map_spans([span], options(WarningLog()))
    assert_valid_calls(calls)
    assert span.attributes is not None
    tag_value = span.attributes.get("analytics.event")
    expected_name = name if tag_value is True else tag_value
    # An empty name, or one of only whitespace, is skipped (with a warning).
    if not is_tag(tag_value) or not isinstance(expected_name, str) or not expected_name.strip():
        assert calls.tracks == []
        return
    assert len(calls.tracks) == 1
    track = calls.tracks[0]
    if not has_surrogate(expected_name):
        assert track["event"] == expected_name
    expected = expected_distinct_id([span.attributes, span.resource.attributes])
    if expected is None:
        assert "distinct_id" not in track
    elif not has_surrogate(expected):
        assert track["distinct_id"] == expected
    else:
        assert "distinct_id" in track


# --------------------------------------------------------------------------- log records


@PROFILE
@given(
    attributes=log_attribute_maps,
    tag=tags,
    body=any_values,
    event_name=st.one_of(st.none(), texts),
    ids=st.one_of(st.none(), st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1))),
    timestamp=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    observed=st.integers(0, 2**63 - 1),
    resource=resources,
)
def test_any_log_record_gives_valid_payloads(
    *,
    attributes: dict[str, Any],
    tag: Any,
    body: Any,
    event_name: str | None,
    ids: tuple[int, int] | None,
    timestamp: int | None,
    observed: int,
    resource: dict[str, Any],
) -> None:
    record = emitted_log_record(
        attributes=with_tag(attributes, tag),
        body=body,
        event_name=event_name,
        timestamp=timestamp,
        observed_timestamp=observed,
        context_span=span_context(*ids) if ids else None,
        resource=resource,
    )
    calls = map_log_records([record], options(WarningLog()))
    assert_valid_calls(calls)
    body_keys = body if isinstance(body, dict) else {}
    user_set = {"otel.trace_id", "otel.span_id"} & {*attributes, *body_keys}
    for track in calls.tracks:
        properties = track["properties"]
        if user_set:
            continue  # a plain attribute of that name is a property like any other
        if ids is None:
            assert "otel.trace_id" not in properties
        else:
            assert properties["otel.trace_id"] == format(ids[0], "032x")
            assert properties["otel.span_id"] == format(ids[1], "016x")


@PROFILE
@given(
    body=st.dictionaries(keys, any_values, max_size=6),
    attributes=log_attribute_maps,
)
def test_log_dict_body_any_keys(body: dict[str, Any], attributes: dict[str, Any]) -> None:
    record = emitted_log_record(attributes={**attributes, "analytics.event": "E"}, body=body)
    calls = map_log_records([record], options(WarningLog()))
    assert_valid_calls(calls)
    assert len(calls.tracks) == 1


# --------------------------------------------------------------------------- helpers


@CHEAP
@given(value=any_values)
def test_json_safe_any_value_is_strict_json(value: Any) -> None:
    safe = json_safe(value)
    wire = json.dumps({"v": safe}, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert json.loads(wire) == {"v": safe}
    for string in walk_strings(safe):
        assert not has_surrogate(string)


@CHEAP
@given(ns=st.integers(0, 2**63 - 1))
def test_format_timestamp_any_time(ns: int) -> None:
    text = format_timestamp(ns)
    assert ISO_RE.match(text), text
    parsed = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    expected_ms = ns // 1_000_000
    assert (parsed - epoch) // dt.timedelta(milliseconds=1) == expected_ms


@CHEAP
@given(word=st.sampled_from(sorted(RESERVED_CASELESS)), flips=st.lists(st.booleans(), max_size=20))
def test_reserved_ids_any_casing(word: str, flips: list[bool]) -> None:
    cased = "".join(c.upper() if i < len(flips) and flips[i] else c for i, c in enumerate(word))
    assert is_reserved_id(cased)


@CHEAP
@given(value=texts)
def test_reserved_ids_match_the_documented_lists(value: str) -> None:
    assert is_reserved_id(value) == reserved(value)
