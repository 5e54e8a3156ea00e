"""The mapping from spans, span events and log records to Altertable calls, row by row.

Each test builds real SDK objects (see ``otel_builders``) and checks the payloads against
the rules of ``docs/mapping.md``: which attribute feeds which field, the fallbacks, what is
excluded from ``properties``, and the identify and alias calls.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from typing import Any

import pytest
from otel_builders import (
    SECOND_NS,
    T0_ISO,
    T0_NS,
    EventSpec,
    emitted_log_record,
    emitted_log_records,
    finished_span,
    finished_spans,
    iso_at,
    logging_bridge_records,
    make_resource,
    open_span,
    span_context,
)
from support import ISO_RE

from opentelemetry_exporter_altertable._api import LIB_NAME, LIB_VERSION, is_reserved_id
from opentelemetry_exporter_altertable._mapping import Calls, MappingOptions, resolve_environment
from opentelemetry_exporter_altertable._sdk import (
    map_log_records,
    map_spans,
    resource_attributes,
    span_has_analytics_data,
)
from opentelemetry_exporter_altertable._values import json_safe
from opentelemetry_exporter_altertable.version import __version__

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

CONTEXT_KEYS = {"$lib", "$lib_version", "$ip", "service.name", "otel.trace_id", "otel.span_id"}
# Built-ins a user may set that the mapping never computes itself.
USER_SETTABLE_BUILTINS = [
    "$viewport",
    "$utm_source",
    "$utm_medium",
    "$utm_campaign",
    "$utm_term",
    "$utm_content",
    "$app_name",
    "$app_version",
    "$app_build",
    "$app_namespace",
    "$device",
    "$device_type",
    "$device_manufacturer",
    "$device_model",
    "$os",
    "$os_version",
    "$screen_name",
]
RESERVED_CASE_INSENSITIVE = [
    "anonymous_id",
    "anonymous",
    "distinct_id",
    "distinctid",
    "false",
    "guest",
    "id",
    "not_authenticated",
    "true",
    "undefined",
    "user_id",
    "user",
    "visitor_id",
    "visitor",
]
RESERVED_EXACT = ["[object Object]", "0", "NaN", "none", "None", "null"]


class Warnings:
    """Collects ``on_warning`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, dedup_key: str, message: str) -> None:
        assert isinstance(dedup_key, str)
        assert isinstance(message, str)
        assert message
        self.calls.append((dedup_key, message))

    def keys_mentioning(self, text: str) -> list[str]:
        return [key for key, _ in self.calls if text in key]


def opts(environment: str | None = None, warnings: Warnings | None = None) -> MappingOptions:
    return MappingOptions(environment=environment, on_warning=warnings)


def spans_calls(
    name: str,
    attributes: dict[str, Any] | None = None,
    *,
    resource: dict[str, Any] | None = None,
    events: tuple[EventSpec, ...] = (),
    warnings: Warnings | None = None,
    environment: str | None = None,
) -> Calls:
    span = finished_span(name, attributes, resource=resource, events=events)
    return map_spans([span], opts(environment, warnings))


def one_track(calls: Calls) -> dict[str, Any]:
    assert len(calls.tracks) == 1, calls.tracks
    track = calls.tracks[0]
    assert isinstance(track, dict)
    return track


def span_track(attributes: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return one_track(
        spans_calls("checkout", {"analytics.event": "Order Placed", **attributes}, **kwargs)
    )


def log_track(attributes: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    warnings = kwargs.pop("warnings", None)
    record = emitted_log_record(
        attributes={"analytics.event": "Order Placed", **attributes}, **kwargs
    )
    return one_track(map_log_records([record], opts(warnings=warnings)))


def event_track(
    event_attributes: dict[str, Any],
    span_attributes: dict[str, Any] | None = None,
    *,
    resource: dict[str, Any] | None = None,
    warnings: Warnings | None = None,
) -> dict[str, Any]:
    calls = spans_calls(
        "request",
        span_attributes,
        resource=resource,
        events=(EventSpec("clicked", {"analytics.event": "Clicked", **event_attributes}),),
        warnings=warnings,
    )
    return one_track(calls)


# --------------------------------------------------------------------------- constants


def test_lib_name_and_version() -> None:
    assert LIB_NAME == "opentelemetry-exporter-altertable"
    assert __version__ == LIB_VERSION


# --------------------------------------------------------------------------- is_reserved_id


@pytest.mark.parametrize("value", RESERVED_CASE_INSENSITIVE)
def test_reserved_ids_case_insensitive(value: str) -> None:
    assert is_reserved_id(value)
    assert is_reserved_id(value.upper())
    assert is_reserved_id(value.title())


@pytest.mark.parametrize("value", RESERVED_EXACT)
def test_reserved_ids_exact(value: str) -> None:
    assert is_reserved_id(value)


@pytest.mark.parametrize(
    "value",
    ["user_123", "NULL", "nan", "NONE", "[object object]", "00", "guests", "anon_abc123", "u"],
)
def test_not_reserved(value: str) -> None:
    assert not is_reserved_id(value)


# --------------------------------------------------------------------------- resolve_environment


def test_environment_explicit_wins() -> None:
    resource = make_resource({"deployment.environment.name": "staging"})
    assert resolve_environment(resource_attributes(resource), "development") == "development"


def test_environment_from_resource_name() -> None:
    resource = make_resource({"deployment.environment.name": "staging"})
    assert resolve_environment(resource_attributes(resource), None) == "staging"


def test_environment_from_deprecated_resource_key() -> None:
    resource = make_resource({"deployment.environment": "qa"})
    assert resolve_environment(resource_attributes(resource), None) == "qa"


def test_environment_new_key_wins_over_deprecated() -> None:
    resource = make_resource(
        {"deployment.environment.name": "staging", "deployment.environment": "qa"}
    )
    assert resolve_environment(resource_attributes(resource), None) == "staging"


@pytest.mark.parametrize(
    "resource", [None, make_resource({}), make_resource({"service.name": "x"})]
)
def test_environment_default_production(resource: Any) -> None:
    assert resolve_environment(resource_attributes(resource), None) == "production"


def test_every_call_carries_the_environment() -> None:
    attributes = {
        "analytics.event": "Upgraded",
        "user.id": "u1",
        "user.email": "u1@example.com",
        "analytics.alias": "u1-new",
    }
    resource = {"deployment.environment.name": "staging"}
    calls = spans_calls("x", attributes, resource=resource)
    assert calls.tracks and calls.identifies and calls.aliases
    for payload in [*calls.tracks, *calls.identifies, *calls.aliases]:
        assert payload["environment"] == "staging"
    calls = spans_calls("x", attributes, resource=resource, environment="development")
    for payload in [*calls.tracks, *calls.identifies, *calls.aliases]:
        assert payload["environment"] == "development"


def test_each_resource_gives_its_own_environment() -> None:
    first = finished_span(
        "a", {"analytics.event": True}, resource={"deployment.environment.name": "staging"}
    )
    second = finished_span(
        "b", {"analytics.event": True}, resource={"deployment.environment.name": "development"}
    )
    third = finished_span("c", {"analytics.event": True}, resource={})
    tracks = map_spans([first, second, third], opts()).tracks
    assert [(t["event"], t["environment"]) for t in tracks] == [
        ("a", "staging"),
        ("b", "development"),
        ("c", "production"),
    ]


def test_mapping_options_are_frozen() -> None:
    options = MappingOptions(environment="staging")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.environment = "production"  # type: ignore[misc]
    assert MappingOptions().environment is None
    assert MappingOptions().on_warning is None


def test_log_records_use_their_resource_environment() -> None:
    record = emitted_log_record(
        attributes={"analytics.event": "E"}, resource={"deployment.environment": "qa"}
    )
    assert one_track(map_log_records([record], opts()))["environment"] == "qa"


# ------------------------------------------------------------------ what is an analytics record


def test_untagged_span_gives_nothing() -> None:
    span = finished_span("GET /", {"http.method": "GET", "user.id": "u1", "plan": "pro"})
    calls = map_spans([span], opts())
    assert (calls.tracks, calls.identifies, calls.aliases) == ([], [], [])
    assert not span_has_analytics_data(span)


def test_empty_input_gives_empty_calls() -> None:
    for calls in (map_spans([], opts()), map_log_records([], opts())):
        assert isinstance(calls, Calls)
        assert (calls.tracks, calls.identifies, calls.aliases) == ([], [], [])


def test_event_name_from_string() -> None:
    track = one_track(spans_calls("POST /cart", {"analytics.event": "Added To Cart"}))
    assert track["event"] == "Added To Cart"


def test_event_true_uses_span_name() -> None:
    assert one_track(spans_calls("Checkout Started", {"analytics.event": True}))["event"] == (
        "Checkout Started"
    )


@pytest.mark.parametrize("value", [False, "", 0, 1, 2.5, ("Clicked",)])
def test_other_event_values_are_not_analytics(value: Any) -> None:
    assert spans_calls("x", {"analytics.event": value}).tracks == []
    record = emitted_log_record(attributes={"analytics.event": value}, event_name="named")
    assert map_log_records([record], opts()).tracks == []
    span = finished_span("x", events=(EventSpec("ev", {"analytics.event": value}),))
    assert map_spans([span], opts()).tracks == []


def test_span_event_true_uses_event_name() -> None:
    calls = spans_calls("request", events=(EventSpec("Video Played", {"analytics.event": True}),))
    assert one_track(calls)["event"] == "Video Played"


def test_log_event_true_uses_event_name() -> None:
    record = emitted_log_record(attributes={"analytics.event": True}, event_name="Signed Up")
    assert one_track(map_log_records([record], opts()))["event"] == "Signed Up"


def test_log_event_true_falls_back_to_event_name_attribute() -> None:
    record = emitted_log_record(attributes={"analytics.event": True, "event.name": "Logged In"})
    assert one_track(map_log_records([record], opts()))["event"] == "Logged In"


def test_log_event_name_field_wins_over_attribute() -> None:
    record = emitted_log_record(
        attributes={"analytics.event": True, "event.name": "from-attribute"},
        event_name="from-field",
    )
    assert one_track(map_log_records([record], opts()))["event"] == "from-field"


def test_log_event_string_wins_over_event_name() -> None:
    record = emitted_log_record(attributes={"analytics.event": "Explicit"}, event_name="field")
    assert one_track(map_log_records([record], opts()))["event"] == "Explicit"


def test_untagged_span_with_tagged_event_gives_only_the_event() -> None:
    calls = spans_calls(
        "GET /video",
        {"http.method": "GET"},
        events=(EventSpec("progress", {"pct": 50}), EventSpec("Played", {"analytics.event": True})),
    )
    assert [t["event"] for t in calls.tracks] == ["Played"]


@pytest.mark.parametrize(
    ("attributes", "events", "expected"),
    [
        ({"analytics.event": "E"}, (), True),
        ({"analytics.event": True}, (), True),
        ({}, (EventSpec("e", {"analytics.event": "E"}),), True),
        ({"analytics.alias": "new", "user.id": "u1"}, (), True),
        ({"user.id": "u1", "user.email": "a@example.com"}, (), True),
        ({"user.id": "u1", "analytics.traits.plan": "pro"}, (), True),
        ({}, (), False),
        ({"http.method": "GET", "plan": "pro"}, (EventSpec("exception", {"x": 1}),), False),
        ({"user.id": "u1"}, (), False),
    ],
)
def test_span_has_analytics_data(
    attributes: dict[str, Any], events: tuple[EventSpec, ...], expected: bool
) -> None:
    assert span_has_analytics_data(finished_span("s", attributes, events=events)) is expected


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"analytics.distinct_id": "a", "user.id": "b", "enduser.id": "c"}, "a"),
        ({"user.id": "b", "enduser.id": "c"}, "b"),
        ({"enduser.id": "c"}, "c"),
    ],
)
def test_distinct_id_key_order(attributes: dict[str, Any], expected: str) -> None:
    assert span_track(attributes)["distinct_id"] == expected
    assert log_track(attributes)["distinct_id"] == expected
    assert event_track(attributes)["distinct_id"] == expected


@pytest.mark.parametrize(
    ("field", "primary", "fallback"),
    [
        ("anonymous_id", "analytics.anonymous_id", "enduser.pseudo.id"),
        ("device_id", "analytics.device_id", "device.id"),
        ("session_id", "analytics.session_id", "session.id"),
    ],
)
def test_other_ids_and_fallbacks(field: str, primary: str, fallback: str) -> None:
    assert span_track({primary: "p", fallback: "f"})[field] == "p"
    assert span_track({fallback: "f"})[field] == "f"
    assert log_track({fallback: "f"})[field] == "f"
    assert event_track({fallback: "f"})[field] == "f"
    assert field not in span_track({})


def test_ids_from_resource() -> None:
    resource = {
        "user.id": "r-user",
        "enduser.pseudo.id": "r-anon",
        "device.id": "r-device",
        "session.id": "r-session",
    }
    for track in (
        span_track({}, resource=resource),
        log_track({}, resource=resource),
        event_track({}, resource=resource),
    ):
        assert track["distinct_id"] == "r-user"
        assert track["anonymous_id"] == "r-anon"
        assert track["device_id"] == "r-device"
        assert track["session_id"] == "r-session"
        assert "device.id" not in track["properties"]
        assert "session.id" not in track["properties"]


def test_record_level_beats_resource_level_regardless_of_key_order() -> None:
    resource = {"analytics.distinct_id": "from-resource", "analytics.session_id": "rs"}
    track = span_track({"enduser.id": "from-span", "session.id": "ss"}, resource=resource)
    assert track["distinct_id"] == "from-span"
    assert track["session_id"] == "ss"


def test_span_event_ids_event_then_span_then_resource() -> None:
    resource = {"analytics.distinct_id": "r", "analytics.device_id": "rd"}
    span_attrs = {"analytics.distinct_id": "s", "device.id": "sd"}
    track = event_track({"enduser.id": "e"}, span_attrs, resource=resource)
    assert track["distinct_id"] == "e"
    assert track["device_id"] == "sd"
    track = event_track({}, span_attrs, resource=resource)
    assert track["distinct_id"] == "s"
    track = event_track({}, {}, resource=resource)
    assert track["distinct_id"] == "r"
    assert track["device_id"] == "rd"


def test_span_event_does_not_take_ids_from_other_spans() -> None:
    spans = finished_spans(
        [
            (
                "a",
                {"user.id": "owner-a"},
                (EventSpec("e", {"analytics.event": True}),),
                T0_NS,
                T0_NS,
            ),
            ("b", {}, (EventSpec("f", {"analytics.event": True}),), T0_NS, T0_NS),
        ]
    )
    tracks = map_spans(spans, opts()).tracks
    assert [t.get("distinct_id") for t in tracks] == ["owner-a", None]


@pytest.mark.parametrize(
    ("field", "key"),
    [
        ("distinct_id", "user.id"),
        ("anonymous_id", "analytics.anonymous_id"),
        ("device_id", "device.id"),
        ("session_id", "session.id"),
    ],
)
def test_int_ids_become_strings(field: str, key: str) -> None:
    track = span_track({key: 12345})
    assert track[field] == "12345"
    assert log_track({key: 12345})[field] == "12345"


@pytest.mark.parametrize("bad", [1.5, ("u1", "u2"), True, (1, 2)])
def test_non_id_types_are_ignored(bad: Any) -> None:
    track = span_track({"analytics.distinct_id": bad, "enduser.id": "u2"})
    assert track["distinct_id"] == "u2"


def test_reserved_distinct_id_skipped_for_next_key() -> None:
    warnings = Warnings()
    track = span_track({"analytics.distinct_id": "Anonymous", "user.id": "u1"}, warnings=warnings)
    assert track["distinct_id"] == "u1"
    assert len(warnings.calls) == 1


def test_reserved_distinct_id_skipped_for_next_level() -> None:
    warnings = Warnings()
    track = span_track({"user.id": "null"}, resource={"user.id": "r1"}, warnings=warnings)
    assert track["distinct_id"] == "r1"
    assert len(warnings.calls) == 1


def test_reserved_int_zero_is_skipped() -> None:
    warnings = Warnings()
    track = span_track({"user.id": 0, "enduser.id": "u7"}, warnings=warnings)
    assert track["distinct_id"] == "u7"
    assert len(warnings.calls) == 1


def test_all_reserved_means_no_distinct_id() -> None:
    warnings = Warnings()
    track = span_track(
        {"analytics.distinct_id": "guest", "user.id": "undefined", "enduser.id": "VISITOR"},
        warnings=warnings,
    )
    assert "distinct_id" not in track
    assert track["event"] == "Order Placed"
    # One warning per source passed over, in the order they are tried.
    assert [key for key, _ in warnings.calls] == [
        "reserved-id:analytics.distinct_id:guest",
        "reserved-id:user.id:undefined",
        "reserved-id:enduser.id:VISITOR",
    ]


def test_reserved_id_warning_without_callback_does_not_fail() -> None:
    track = span_track({"user.id": "guest"})
    assert "distinct_id" not in track


# --------------------------------------------------------------------------- payload shape


def test_track_keys_without_ids() -> None:
    track = span_track({"color": "blue"})
    assert set(track) == {"environment", "event", "properties", "timestamp"}
    assert track["environment"] == "production"
    assert track["timestamp"] == T0_ISO


def test_track_keys_with_all_ids() -> None:
    track = span_track(
        {
            "user.id": "u",
            "analytics.anonymous_id": "a",
            "device.id": "d",
            "session.id": "s",
        }
    )
    assert set(track) == {
        "environment",
        "event",
        "properties",
        "timestamp",
        "distinct_id",
        "anonymous_id",
        "device_id",
        "session_id",
    }
    assert None not in track.values()


def test_lib_properties_always_present_and_ours() -> None:
    for track in (span_track({}), log_track({}), event_track({}), span_track({"$lib": "other"})):
        assert track["properties"]["$lib"] == "opentelemetry-exporter-altertable"
        assert track["properties"]["$lib_version"] == __version__


# --------------------------------------------------------------------------- properties


def test_plain_attributes_become_properties_as_is() -> None:
    props = span_track(
        {"color": "blue", "count": 3, "ratio": 0.5, "gift": True, "tags": ("a", "b")}
    )["properties"]
    assert props["color"] == "blue"
    assert props["count"] == 3
    assert props["ratio"] == 0.5
    assert props["gift"] is True
    assert props["tags"] == ["a", "b"]


def test_non_finite_float_properties_become_null() -> None:
    props = span_track({"a": math.nan, "b": math.inf, "c": (1.0, -math.inf)})["properties"]
    assert props["a"] is None
    assert props["b"] is None
    assert props["c"] == [1.0, None]


def test_analytics_properties_win_over_plain() -> None:
    props = span_track(
        {"plan": "free", "analytics.properties.plan": "pro", "analytics.properties.cart.size": 3}
    )["properties"]
    assert props["plan"] == "pro"
    assert props["cart.size"] == 3


@pytest.mark.parametrize(
    "key",
    [
        "analytics.event",
        "analytics.distinct_id",
        "analytics.custom",
        "analytics.traits.plan",
        "analytics.properties.plan",
        "user.id",
        "user.email",
        "user.plan",
        "enduser.id",
        "enduser.pseudo.id",
        "enduser.scope",
        "device.id",
        "session.id",
        "url.full",
        "user_agent.original",
        "client.address",
        "http.request.header.referer",
    ],
)
def test_excluded_keys_not_in_properties(key: str) -> None:
    value: Any = ("https://ref.example/",) if key == "http.request.header.referer" else "v"
    for track in (span_track({key: value}), log_track({key: value}), event_track({key: value})):
        assert key not in track["properties"]


def test_resource_attributes_are_not_copied() -> None:
    props = span_track({}, resource={"service.name": "shop", "host.name": "h1", "team": "t"})[
        "properties"
    ]
    assert "host.name" not in props
    assert "team" not in props
    assert props["service.name"] == "shop"


def test_context_rows() -> None:
    props = span_track(
        {
            "url.full": "https://shop.example/cart",
            "user_agent.original": "Mozilla/5.0",
            "client.address": "203.0.113.9",
            "http.request.header.referer": ("https://ref.example/", "https://second.example/"),
        }
    )["properties"]
    assert props["$url"] == "https://shop.example/cart"
    assert props["$user_agent"] == "Mozilla/5.0"
    assert props["$ip"] == "203.0.113.9"
    assert props["$referer"] == "https://ref.example/"


def test_referer_as_plain_string() -> None:
    props = span_track({"http.request.header.referer": "https://ref.example/"})["properties"]
    assert props["$referer"] == "https://ref.example/"


def test_ip_is_zero_without_client_address() -> None:
    for track in (span_track({}), log_track({}), event_track({})):
        ip = track["properties"]["$ip"]
        assert type(ip) is int
        assert ip == 0


def test_context_rows_not_from_resource() -> None:
    props = span_track({}, resource={"client.address": "198.51.100.1", "url.full": "https://r/"})[
        "properties"
    ]
    assert props["$ip"] == 0
    assert "$url" not in props


def test_span_event_context_rows_fall_back_to_span() -> None:
    span_attrs = {
        "url.full": "https://shop.example/span",
        "user_agent.original": "UA-span",
        "client.address": "192.0.2.1",
        "http.request.header.referer": ("https://ref.example/",),
    }
    props = event_track({}, span_attrs)["properties"]
    assert props["$url"] == "https://shop.example/span"
    assert props["$user_agent"] == "UA-span"
    assert props["$ip"] == "192.0.2.1"
    assert props["$referer"] == "https://ref.example/"
    props = event_track({"url.full": "https://shop.example/event"}, span_attrs)["properties"]
    assert props["$url"] == "https://shop.example/event"


def test_span_event_properties_only_from_the_event() -> None:
    props = event_track({"sku": "A1"}, {"plan": "pro", "http.method": "GET"})["properties"]
    assert props["sku"] == "A1"
    assert "plan" not in props
    assert "http.method" not in props


def test_release_only_with_service_version() -> None:
    with_version = span_track({}, resource={"service.name": "shop", "service.version": "1.4.2"})
    assert with_version["properties"]["$release"] == "1.4.2"
    without = span_track({}, resource={"service.name": "shop"})
    assert "$release" not in without["properties"]


def test_service_name_property() -> None:
    for track in (
        span_track({}, resource={"service.name": "shop"}),
        log_track({}, resource={"service.name": "shop"}),
        event_track({}, resource={"service.name": "shop"}),
    ):
        assert track["properties"]["service.name"] == "shop"


def test_span_trace_and_span_ids() -> None:
    span = finished_span("x", {"analytics.event": True})
    props = one_track(map_spans([span], opts()))["properties"]
    assert props["otel.trace_id"] == format(span.context.trace_id, "032x")
    assert props["otel.span_id"] == format(span.context.span_id, "016x")
    assert HEX32.match(props["otel.trace_id"])
    assert HEX16.match(props["otel.span_id"])


def test_span_event_carries_its_span_ids() -> None:
    span = finished_span("x", events=(EventSpec("e", {"analytics.event": True}),))
    props = one_track(map_spans([span], opts()))["properties"]
    assert props["otel.trace_id"] == format(span.context.trace_id, "032x")
    assert props["otel.span_id"] == format(span.context.span_id, "016x")


def test_log_ids_only_with_a_valid_span_context() -> None:
    inside = emitted_log_record(
        attributes={"analytics.event": "E"}, context_span=span_context(0xABC, 0xDEF)
    )
    props = one_track(map_log_records([inside], opts()))["properties"]
    assert props["otel.trace_id"] == "00000000000000000000000000000abc"
    assert props["otel.span_id"] == "0000000000000def"
    outside = emitted_log_record(attributes={"analytics.event": "E"})
    props = one_track(map_log_records([outside], opts()))["properties"]
    assert "otel.trace_id" not in props
    assert "otel.span_id" not in props


# --------------------------------------------------------------------------- log records


def test_log_body_dict_attributes_and_analytics_properties_layering() -> None:
    record = emitted_log_record(
        body={"a": "body", "b": "body", "c": "body", "nested": {"n": (1, 2)}},
        attributes={
            "analytics.event": "Paid",
            "b": "attr",
            "c": "attr",
            "analytics.properties.c": "analytics",
        },
    )
    props = one_track(map_log_records([record], opts()))["properties"]
    assert props["a"] == "body"
    assert props["b"] == "attr"
    assert props["c"] == "analytics"
    assert props["nested"] == {"n": [1, 2]}


@pytest.mark.parametrize("body", ["a message", 42, None, ("x", "y"), b"raw"])
def test_log_non_dict_body_does_not_break_the_track(body: Any) -> None:
    record = emitted_log_record(attributes={"analytics.event": "E", "k": "v"}, body=body)
    track = one_track(map_log_records([record], opts()))
    assert track["properties"]["k"] == "v"
    json.dumps(track, allow_nan=False)


def test_log_body_does_not_tag_a_record() -> None:
    record = emitted_log_record(body={"analytics.event": "Paid", "amount": 3})
    assert map_log_records([record], opts()).tracks == []


def test_log_timestamp_then_observed() -> None:
    record = emitted_log_record(
        attributes={"analytics.event": "E"}, timestamp=T0_NS + 250 * 1_000_000
    )
    assert one_track(map_log_records([record], opts()))["timestamp"] == iso_at(250)
    record = emitted_log_record(
        attributes={"analytics.event": "E"},
        timestamp=None,
        observed_timestamp=T0_NS + 3_500 * 1_000_000,
    )
    assert one_track(map_log_records([record], opts()))["timestamp"] == iso_at(3500)


def test_log_context_rows() -> None:
    props = log_track(
        {
            "client.address": "203.0.113.5",
            "url.full": "https://shop.example/",
            "user_agent.original": "curl/8",
        }
    )["properties"]
    assert props["$ip"] == "203.0.113.5"
    assert props["$url"] == "https://shop.example/"
    assert props["$user_agent"] == "curl/8"


def test_log_through_the_logging_bridge() -> None:
    records = logging_bridge_records(
        lambda log: log.info(
            "signed up", extra={"analytics.event": "Signed Up", "user.id": "u9", "plan": "pro"}
        ),
        resource={"service.name": "accounts"},
    )
    track = one_track(map_log_records(records, opts()))
    assert track["event"] == "Signed Up"
    assert track["distinct_id"] == "u9"
    assert track["properties"]["plan"] == "pro"
    assert track["properties"]["service.name"] == "accounts"
    assert ISO_RE.match(track["timestamp"])


# --------------------------------------------------------------------------- `$` keys


def test_unknown_dollar_key_loses_its_dollar_with_a_warning() -> None:
    warnings = Warnings()
    props = span_track({"$plan": "pro", "analytics.properties.$seats": 3}, warnings=warnings)[
        "properties"
    ]
    assert props["plan"] == "pro"
    assert props["seats"] == 3
    assert "$plan" not in props
    assert "$seats" not in props
    assert warnings.keys_mentioning("plan")
    assert warnings.keys_mentioning("seats")


def test_unknown_dollar_key_in_log_body() -> None:
    warnings = Warnings()
    record = emitted_log_record(attributes={"analytics.event": "E"}, body={"$coupon": "X1"})
    props = one_track(map_log_records([record], opts(warnings=warnings)))["properties"]
    assert props["coupon"] == "X1"
    assert "$coupon" not in props
    assert warnings.keys_mentioning("coupon")


def test_dollar_key_warnings_share_one_dedup_key_per_key() -> None:
    warnings = Warnings()
    spans = finished_spans(
        [
            ("a", {"analytics.event": True, "$alpha": 1, "$beta": 1}, (), T0_NS, T0_NS),
            ("b", {"analytics.event": True, "$alpha": 2}, (), T0_NS, T0_NS),
        ]
    )
    tracks = map_spans(spans, opts(warnings=warnings)).tracks
    assert [t["properties"]["alpha"] for t in tracks] == [1, 2]
    alpha = set(warnings.keys_mentioning("alpha"))
    beta = set(warnings.keys_mentioning("beta"))
    assert len(alpha) == 1
    assert len(beta) == 1
    assert alpha != beta


@pytest.mark.parametrize("key", USER_SETTABLE_BUILTINS)
def test_builtin_dollar_keys_are_kept(key: str) -> None:
    warnings = Warnings()
    props = span_track({key: "v", f"analytics.properties.{key}": "w"}, warnings=warnings)[
        "properties"
    ]
    assert props[key] == "w"
    assert key[1:] not in props
    assert warnings.calls == []


# --------------------------------------------------------------------------- timestamps


def test_span_timestamp_is_end_time() -> None:
    span = finished_span(
        "x", {"analytics.event": True}, start=T0_NS - 5 * SECOND_NS, end=T0_NS + 42_000_000
    )
    assert one_track(map_spans([span], opts()))["timestamp"] == iso_at(42)


def test_unended_span_uses_start_time() -> None:
    with open_span("x", {"analytics.event": True}, start=T0_NS + 1_250_000_000) as live:
        assert live.end_time is None
        assert one_track(map_spans([live], opts()))["timestamp"] == iso_at(1250)


def test_span_event_timestamp_is_event_time() -> None:
    calls = spans_calls(
        "x", events=(EventSpec("e", {"analytics.event": True}, timestamp=T0_NS + 7_000_000),)
    )
    assert one_track(calls)["timestamp"] == iso_at(7)


# --------------------------------------------------------------------------- order


def test_tracks_follow_input_order() -> None:
    spans = finished_spans(
        [
            ("first", {"analytics.event": True}, (), T0_NS, T0_NS + 3 * SECOND_NS),
            ("second", {"analytics.event": True}, (), T0_NS, T0_NS + 1 * SECOND_NS),
            ("third", {"analytics.event": True}, (), T0_NS, T0_NS + 2 * SECOND_NS),
        ]
    )
    assert [t["event"] for t in map_spans(spans, opts()).tracks] == ["first", "second", "third"]
    records = emitted_log_records(
        [
            {"attributes": {"analytics.event": name}, "timestamp": T0_NS - i}
            for i, name in enumerate(["one", "two", "three"])
        ]
    )
    assert [t["event"] for t in map_log_records(records, opts()).tracks] == ["one", "two", "three"]


def test_span_events_follow_their_order() -> None:
    calls = spans_calls(
        "x",
        events=(
            EventSpec("b", {"analytics.event": True}, T0_NS + 2),
            EventSpec("a", {"analytics.event": True}, T0_NS + 1),
        ),
    )
    assert [t["event"] for t in calls.tracks] == ["b", "a"]


def test_tagged_span_and_tagged_events_all_tracked() -> None:
    calls = spans_calls(
        "Checkout",
        {"analytics.event": True},
        events=(EventSpec("Coupon Applied", {"analytics.event": True}),),
    )
    assert sorted(t["event"] for t in calls.tracks) == ["Checkout", "Coupon Applied"]


# --------------------------------------------------------------------------- identify


TRAIT_ATTRIBUTES = {
    "user.email": "ada@example.com",
    "user.full_name": "Ada Lovelace",
    "user.name": "ada",
    "user.roles": ("admin", "billing"),
    "analytics.traits.plan": "pro",
    "analytics.traits.seats": 5,
}
EXPECTED_TRAITS = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "username": "ada",
    "roles": ["admin", "billing"],
    "plan": "pro",
    "seats": 5,
}


def test_identify_from_untagged_span() -> None:
    calls = spans_calls("login", {"user.id": "u1", **TRAIT_ATTRIBUTES})
    assert calls.tracks == []
    assert calls.identifies == [
        {
            "environment": "production",
            "distinct_id": "u1",
            "traits": EXPECTED_TRAITS,
            "timestamp": T0_ISO,
        }
    ]


def test_identify_with_anonymous_id() -> None:
    calls = spans_calls(
        "login", {"user.id": "u1", "enduser.pseudo.id": "anon-1", "user.email": "a@example.com"}
    )
    assert calls.identifies == [
        {
            "environment": "production",
            "distinct_id": "u1",
            "anonymous_id": "anon-1",
            "traits": {"email": "a@example.com"},
            "timestamp": T0_ISO,
        }
    ]


def test_identify_and_track_from_one_tagged_span() -> None:
    calls = spans_calls("Upgraded", {"analytics.event": True, "user.id": "u1", "user.name": "ada"})
    assert len(calls.tracks) == 1
    assert calls.identifies[0]["traits"] == {"username": "ada"}
    assert "username" not in calls.tracks[0]["properties"]
    assert "user.name" not in calls.tracks[0]["properties"]


def test_identify_from_log_record() -> None:
    record = emitted_log_record(
        attributes={"user.id": "u2", "analytics.traits.company": "Acme"},
        timestamp=T0_NS + 9_000_000,
    )
    calls = map_log_records([record], opts())
    assert calls.tracks == []
    assert calls.identifies == [
        {
            "environment": "production",
            "distinct_id": "u2",
            "traits": {"company": "Acme"},
            "timestamp": iso_at(9),
        }
    ]


def test_identify_needs_a_distinct_id() -> None:
    assert spans_calls("x", {"user.email": "a@example.com"}).identifies == []
    warnings = Warnings()
    calls = spans_calls("x", {"user.id": "guest", "user.email": "a@example.com"}, warnings=warnings)
    assert calls.identifies == []
    assert [key for key, _ in warnings.calls] == ["reserved-id:user.id:guest"]


def test_identify_traits_merge_resource_span_event() -> None:
    resource = {"analytics.traits.tier": "r", "analytics.traits.region": "eu"}
    span_attrs = {"user.id": "u1", "analytics.traits.tier": "s", "analytics.traits.seats": 5}
    calls = spans_calls(
        "request",
        span_attrs,
        resource=resource,
        events=(
            EventSpec(
                "Seats Changed",
                {"analytics.event": True, "analytics.traits.seats": 7},
                T0_NS + 77_000_000,
            ),
        ),
    )
    from_event = [i for i in calls.identifies if i["timestamp"] == iso_at(77)]
    assert len(from_event) == 1
    assert from_event[0]["distinct_id"] == "u1"
    assert from_event[0]["traits"] == {"tier": "s", "region": "eu", "seats": 7}
    from_span = [i for i in calls.identifies if i["timestamp"] == T0_ISO]
    assert len(from_span) == 1
    assert from_span[0]["traits"] == {"tier": "s", "region": "eu", "seats": 5}


def test_identify_for_span_event_from_span_traits() -> None:
    calls = spans_calls(
        "request",
        {"user.id": "u1", "user.email": "a@example.com"},
        events=(EventSpec("Clicked", {"analytics.event": True}, T0_NS + 5_000_000),),
    )
    stamps = {i["timestamp"] for i in calls.identifies}
    assert iso_at(5) in stamps
    assert all(i["traits"] == {"email": "a@example.com"} for i in calls.identifies)


def test_identify_from_resource_alone_once_per_call() -> None:
    resource = {"user.id": "svc-user", "user.email": "ops@example.com"}
    spans = finished_spans(
        [(f"s{i}", {"http.method": "GET"}, (), T0_NS, T0_NS + i) for i in range(3)],
        resource=resource,
    )
    calls = map_spans(spans, opts())
    assert len(calls.identifies) == 1
    identify = calls.identifies[0]
    assert identify["distinct_id"] == "svc-user"
    assert identify["traits"] == {"email": "ops@example.com"}
    assert ISO_RE.match(identify["timestamp"])
    assert calls.tracks == []
    records = emitted_log_records([{"attributes": {"k": i}} for i in range(3)], resource=resource)
    assert len(map_log_records(records, opts()).identifies) == 1


def test_identical_identifies_appear_once_per_call() -> None:
    attrs = {"user.id": "u1", "user.email": "a@example.com"}
    spans = finished_spans([("a", attrs, (), T0_NS, T0_NS), ("b", attrs, (), T0_NS, T0_NS)])
    assert len(map_spans(spans, opts()).identifies) == 1


def test_identifies_follow_input_order() -> None:
    spans = finished_spans(
        [
            ("a", {"user.id": "u2", "user.email": "b@example.com"}, (), T0_NS, T0_NS),
            ("b", {"user.id": "u1", "user.email": "a@example.com"}, (), T0_NS, T0_NS),
        ]
    )
    assert [i["distinct_id"] for i in map_spans(spans, opts()).identifies] == ["u2", "u1"]


def test_identify_payload_is_json_ready() -> None:
    calls = spans_calls("x", {"user.id": "u1", "analytics.traits.score": math.nan})
    identify = calls.identifies[0]
    assert identify["traits"] == {"score": None}
    json.dumps(identify, allow_nan=False)


# --------------------------------------------------------------------------- alias


def test_alias_payload() -> None:
    calls = spans_calls(
        "merge", {"analytics.distinct_id": "anon_xyz789", "analytics.alias": "user_456"}
    )
    assert calls.aliases == [
        {
            "environment": "production",
            "distinct_id": "anon_xyz789",
            "new_user_id": "user_456",
            "timestamp": T0_ISO,
        }
    ]
    assert calls.tracks == []


def test_alias_from_span_event_uses_span_distinct_id() -> None:
    calls = spans_calls(
        "request",
        {"user.id": "anon-9"},
        events=(EventSpec("signup", {"analytics.alias": "user-9"}, T0_NS + 3_000_000),),
    )
    assert calls.aliases == [
        {
            "environment": "production",
            "distinct_id": "anon-9",
            "new_user_id": "user-9",
            "timestamp": iso_at(3),
        }
    ]


def test_alias_from_log_record() -> None:
    record = emitted_log_record(attributes={"enduser.id": "a1", "analytics.alias": "u1"})
    assert map_log_records([record], opts()).aliases == [
        {
            "environment": "production",
            "distinct_id": "a1",
            "new_user_id": "u1",
            "timestamp": T0_ISO,
        }
    ]


def test_alias_needs_a_distinct_id() -> None:
    assert spans_calls("x", {"analytics.alias": "u1"}).aliases == []


@pytest.mark.parametrize("new_id", ["anonymous", "null", "Guest", "0"])
def test_alias_to_reserved_id_is_skipped(new_id: str) -> None:
    warnings = Warnings()
    calls = spans_calls("x", {"user.id": "a1", "analytics.alias": new_id}, warnings=warnings)
    assert calls.aliases == []
    assert [key for key, _ in warnings.calls] == [f"alias-invalid:{new_id}"]


def test_alias_to_same_id_is_skipped() -> None:
    warnings = Warnings()
    calls = spans_calls("x", {"user.id": "a1", "analytics.alias": "a1"}, warnings=warnings)
    assert calls.aliases == []
    assert [key for key, _ in warnings.calls] == ["alias-invalid:a1"]


def test_aliases_follow_input_order() -> None:
    spans = finished_spans(
        [
            ("a", {"user.id": "a2", "analytics.alias": "u2"}, (), T0_NS, T0_NS),
            ("b", {"user.id": "a1", "analytics.alias": "u1"}, (), T0_NS, T0_NS),
        ]
    )
    assert [a["new_user_id"] for a in map_spans(spans, opts()).aliases] == ["u2", "u1"]


# --------------------------------------------------------------------------- robustness


class Tag(str):
    """A ``str`` subclass, as enums mixed with ``str`` and many libraries' string types are."""


class Color(str, enum.Enum):
    RED = "red"


def wire(payload: dict[str, Any]) -> bytes:
    """Encode as the transport does: strict JSON, UTF-8, no ASCII escaping."""
    return json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")


def all_payloads(calls: Calls) -> list[dict[str, Any]]:
    return [*calls.identifies, *calls.aliases, *calls.tracks]


def test_lone_surrogates_and_nul_are_made_encodable() -> None:
    calls = spans_calls(
        "x",
        {
            "analytics.event": "Clicked \ud800",
            "user.id": "u\udfff1",
            "user.email": "a\ud800@example.com",
            "k\ud800": "v\x00\ud83d",
            "analytics.properties.p\udc00": ("a\ud800", "b"),
        },
        resource={"service.name": "shop\ud800", "service.version": "1.0\udfff"},
    )
    assert calls.tracks
    assert calls.identifies
    for payload in all_payloads(calls):
        assert json.loads(wire(payload))


def test_resource_environment_with_lone_surrogate_is_encodable() -> None:
    resource = {"deployment.environment.name": "stag\ud800ing", "user.id": "u1"}
    calls = spans_calls(
        "x", {"analytics.event": True, "user.email": "a@example.com"}, resource=resource
    )
    assert calls.tracks
    for payload in all_payloads(calls):
        wire(payload)


def test_double_dollar_key_never_reaches_properties_as_unknown_built_in() -> None:
    warnings = Warnings()
    props = span_track(
        {"$$plan": "pro", "analytics.properties.$$seats": 3, "$$utm_source": "x"}, warnings=warnings
    )["properties"]
    assert {key for key in props if key.startswith("$")} == {"$lib", "$lib_version", "$ip"}
    assert (props["plan"], props["seats"], props["utm_source"]) == ("pro", 3, "x")
    assert [key for key, _ in warnings.calls] == [
        "dollar-key:$$plan", "dollar-key:$$utm_source", "dollar-key:$$seats"
    ]


def test_giant_int_values_still_give_valid_json() -> None:
    giant = 10**5000
    calls = spans_calls("x", {"analytics.event": True, "n": giant, "analytics.traits.n": giant})
    for payload in all_payloads(calls):
        wire(payload)
    record = emitted_log_record(attributes={"analytics.event": "E"}, body={"n": giant})
    for payload in all_payloads(map_log_records([record], opts())):
        wire(payload)


def test_giant_int_id_does_not_break_the_batch() -> None:
    spans = finished_spans(
        [
            ("a", {"analytics.event": True, "user.id": 10**5000}, (), T0_NS, T0_NS),
            ("b", {"analytics.event": True, "user.id": "u2"}, (), T0_NS, T0_NS),
        ]
    )
    tracks = map_spans(spans, opts()).tracks
    assert [t["event"] for t in tracks] == ["a", "b"]
    assert tracks[1]["distinct_id"] == "u2"
    for track in tracks:
        wire(track)


def test_str_subclass_values_stay_strings() -> None:
    assert json_safe(Tag("abc")) == "abc"
    assert json_safe(Color.RED) == "red"
    props = span_track({"tag": Tag("abc"), "color": Color.RED})["properties"]
    assert props["tag"] == "abc"
    assert props["color"] == "red"
    record = emitted_log_record(attributes={"analytics.event": "E"}, body={"color": Color.RED})
    assert one_track(map_log_records([record], opts()))["properties"]["color"] == "red"


def test_str_subclass_ids_are_ids() -> None:
    assert span_track({"user.id": Tag("u1")})["distinct_id"] == "u1"
