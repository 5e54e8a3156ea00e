"""Altertable's official compliance fixtures, reproduced from OpenTelemetry records.

Each fixture gives the input of an SDK call and the payload the API expects. Here the same
input is expressed as attributes on a span, a span event or a log record, and the payload the
mapping builds must be the fixture's, plus ``environment``, with this package's ``$lib`` and
``$lib_version``, and the context properties the mapping adds (``$ip``, ``service.name``,
``otel.trace_id``/``otel.span_id``). Nothing else may appear.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from otel_builders import (
    T0_ISO,
    T0_NS,
    EventSpec,
    emitted_log_record,
    finished_span,
    span_context,
)

from opentelemetry_exporter_altertable._api import LIB_NAME, LIB_VERSION
from opentelemetry_exporter_altertable._mapping import Calls, MappingOptions
from opentelemetry_exporter_altertable._sdk import map_log_records, map_spans

# Altertable's compliance fixtures (the official client specification's), kept verbatim here so
# the suite needs nothing outside the repository. JSON files dropped into
# tests/fixtures/altertable/ are picked up as well.
OFFICIAL_FIXTURES: dict[str, Any] = json.loads(
    r"""
{
    "alias_basic.json": {
        "description": "Basic alias call linking anonymous ID to new user ID",
        "input": {
            "new_user_id": "user_456",
            "distinct_id": "anon_xyz789"
        },
        "output": {
            "payload": {
                "distinct_id": "anon_xyz789",
                "new_user_id": "user_456",
                "timestamp": "2023-01-01T12:00:00.000Z"
            }
        }
    },
    "identify_basic.json": {
        "description": "Standard identify call with traits and no active session",
        "input": {
            "distinct_id": "user_123",
            "traits": {
                "email": "user@example.com",
                "plan": "pro"
            }
        },
        "output": {
            "payload": {
                "distinct_id": "user_123",
                "traits": {
                    "email": "user@example.com",
                    "plan": "pro"
                },
                "anonymous_id": "anon_abc123",
                "timestamp": "2023-01-01T12:00:00.000Z"
            }
        }
    },
    "track_basic.json": {
        "description": "Basic track call with properties",
        "input": {
            "event": "Button Clicked",
            "properties": {
                "color": "blue",
                "size": "large"
            },
            "distinct_id": "user_123"
        },
        "output": {
            "payload": {
                "event": "Button Clicked",
                "properties": {
                    "color": "blue",
                    "size": "large",
                    "$lib": "altertable-sdk",
                    "$lib_version": "1.0.0"
                },
                "distinct_id": "user_123",
                "anonymous_id": "anon_abc123",
                "timestamp": "2023-01-01T12:00:00.000Z"
            }
        }
    },
    "track_null_properties.json": {
        "description": "Track call with null properties defaulting to empty object",
        "input": {
            "event": "Viewed Page",
            "properties": null,
            "distinct_id": "user_123"
        },
        "output": {
            "payload": {
                "event": "Viewed Page",
                "properties": {
                    "$lib": "altertable-sdk",
                    "$lib_version": "1.0.0"
                },
                "distinct_id": "user_123",
                "anonymous_id": "anon_abc123",
                "timestamp": "2023-01-01T12:00:00.000Z"
            }
        }
    }
}
"""
)
EXTRA_FIXTURES_DIR = Path(__file__).parent / "fixtures" / "altertable"


def all_fixtures() -> dict[str, Any]:
    fixtures = dict(OFFICIAL_FIXTURES)
    if EXTRA_FIXTURES_DIR.is_dir():
        for path in sorted(EXTRA_FIXTURES_DIR.glob("*.json")):
            fixtures[path.name] = json.loads(path.read_text(encoding="utf-8"))
    return fixtures


RESOURCE = {"service.name": "shop"}
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
SOURCES = ["span", "span_event", "log_in_span", "log"]
# Trait names the mapping derives from semantic-convention attributes; others use analytics.traits.
TRAIT_ATTRIBUTE = {
    "email": "user.email",
    "name": "user.full_name",
    "username": "user.name",
    "roles": "user.roles",
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = all_fixtures()[name]
    assert data["output"]["payload"].get("timestamp", T0_ISO) == T0_ISO
    return data


def fixture_names(prefix: str) -> list[str]:
    return sorted(name for name in all_fixtures() if name.startswith(f"{prefix}_"))


def calls_for(source: str, name: str, attributes: dict[str, Any]) -> tuple[Calls, dict[str, str]]:
    """Map ``attributes`` carried by one record of kind ``source``; also give its hex ids."""
    options = MappingOptions()
    if source in {"span", "span_event"}:
        span: ReadableSpan
        if source == "span":
            span = finished_span(name, attributes, resource=RESOURCE, end=T0_NS)
        else:
            span = finished_span(
                "HTTP POST",
                {"http.request.method": "POST"},
                resource=RESOURCE,
                end=T0_NS + 2_000_000_000,
                events=(EventSpec(name, attributes, T0_NS),),
            )
        assert span.context is not None
        ids = {
            "otel.trace_id": format(span.context.trace_id, "032x"),
            "otel.span_id": format(span.context.span_id, "016x"),
        }
        return map_spans([span], options), ids
    in_span = source == "log_in_span"
    record = emitted_log_record(
        attributes=attributes,
        event_name=name,
        timestamp=T0_NS,
        context_span=span_context(TRACE_ID, SPAN_ID) if in_span else None,
        resource=RESOURCE,
    )
    ids = (
        {"otel.trace_id": format(TRACE_ID, "032x"), "otel.span_id": format(SPAN_ID, "016x")}
        if in_span
        else {}
    )
    return map_log_records([record], options), ids


def track_attributes(fixture: dict[str, Any]) -> dict[str, Any]:
    given = fixture["input"]
    expected = fixture["output"]["payload"]
    attributes: dict[str, Any] = {"analytics.event": True}
    attributes.update(given.get("properties") or {})
    if "distinct_id" in given:
        attributes["user.id"] = given["distinct_id"]
    # The SDKs add their stored anonymous id; an OpenTelemetry record carries it as an attribute.
    if "anonymous_id" in expected:
        attributes["analytics.anonymous_id"] = expected["anonymous_id"]
    return attributes


def expected_track(fixture: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    payload = dict(fixture["output"]["payload"])
    properties = {
        k: v for k, v in payload["properties"].items() if k not in {"$lib", "$lib_version"}
    }
    properties.update(
        {"$lib": LIB_NAME, "$lib_version": LIB_VERSION, "$ip": 0, "service.name": "shop", **ids}
    )
    payload["properties"] = properties
    payload["environment"] = "production"
    return payload


# --------------------------------------------------------------------------- tracks


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fixture_name", fixture_names("track"))
def test_track_fixture(fixture_name: str, source: str) -> None:
    fixture = load(fixture_name)
    calls, ids = calls_for(source, fixture["input"]["event"], track_attributes(fixture))
    assert calls.identifies == []
    assert calls.aliases == []
    assert calls.tracks == [expected_track(fixture, ids)]


def test_track_basic_exact_payload() -> None:
    span = finished_span(
        "Button Clicked",
        {
            "analytics.event": True,
            "color": "blue",
            "size": "large",
            "user.id": "user_123",
            "analytics.anonymous_id": "anon_abc123",
        },
        resource=RESOURCE,
        end=T0_NS,
    )
    assert map_spans([span], MappingOptions()).tracks == [
        {
            "environment": "production",
            "event": "Button Clicked",
            "properties": {
                "color": "blue",
                "size": "large",
                "$lib": "opentelemetry-exporter-altertable",
                "$lib_version": LIB_VERSION,
                "$ip": 0,
                "service.name": "shop",
                "otel.trace_id": format(span.context.trace_id, "032x"),
                "otel.span_id": format(span.context.span_id, "016x"),
            },
            "distinct_id": "user_123",
            "anonymous_id": "anon_abc123",
            "timestamp": "2023-01-01T12:00:00.000Z",
        }
    ]


@pytest.mark.parametrize(
    "attributes",
    [
        {"analytics.event": "Viewed Page", "user.id": "user_123"},
        {"analytics.event": True},
    ],
)
def test_track_null_properties_gives_only_built_ins_and_context(attributes: dict[str, Any]) -> None:
    span = finished_span("Viewed Page", attributes, resource=RESOURCE)
    [track] = map_spans([span], MappingOptions()).tracks
    assert track["event"] == "Viewed Page"
    assert set(track["properties"]) == {
        "$lib",
        "$lib_version",
        "$ip",
        "service.name",
        "otel.trace_id",
        "otel.span_id",
    }


def test_track_fixture_with_release() -> None:
    fixture = load("track_basic.json")
    span = finished_span(
        "Button Clicked",
        track_attributes(fixture),
        resource={**RESOURCE, "service.version": "2.3.4"},
    )
    [track] = map_spans([span], MappingOptions()).tracks
    expected = expected_track(
        fixture,
        {
            "otel.trace_id": format(span.context.trace_id, "032x"),
            "otel.span_id": format(span.context.span_id, "016x"),
        },
    )
    expected["properties"]["$release"] = "2.3.4"
    assert track == expected


# --------------------------------------------------------------------------- identify


def identify_attributes(fixture: dict[str, Any]) -> dict[str, Any]:
    given = fixture["input"]
    expected = fixture["output"]["payload"]
    attributes: dict[str, Any] = {"user.id": given["distinct_id"]}
    if "anonymous_id" in expected:
        attributes["enduser.pseudo.id"] = expected["anonymous_id"]
    for trait, value in (given.get("traits") or {}).items():
        key = TRAIT_ATTRIBUTE.get(trait, f"analytics.traits.{trait}")
        attributes[key] = tuple(value) if isinstance(value, list) else value
    return attributes


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fixture_name", fixture_names("identify"))
def test_identify_fixture(fixture_name: str, source: str) -> None:
    fixture = load(fixture_name)
    calls, _ = calls_for(source, "login", identify_attributes(fixture))
    assert calls.tracks == []
    assert calls.aliases == []
    assert calls.identifies == [{**fixture["output"]["payload"], "environment": "production"}]


def test_identify_basic_with_its_track() -> None:
    fixture = load("identify_basic.json")
    attributes = {"analytics.event": "Logged In", **identify_attributes(fixture)}
    calls, _ = calls_for("span", "login", attributes)
    assert calls.identifies == [{**fixture["output"]["payload"], "environment": "production"}]
    [track] = calls.tracks
    assert track["distinct_id"] == "user_123"
    assert track["anonymous_id"] == "anon_abc123"
    assert not {"email", "plan", "user.email"} & set(track["properties"])


# --------------------------------------------------------------------------- alias


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fixture_name", fixture_names("alias"))
def test_alias_fixture(fixture_name: str, source: str) -> None:
    fixture = load(fixture_name)
    given = fixture["input"]
    attributes = {
        "analytics.distinct_id": given["distinct_id"],
        "analytics.alias": given["new_user_id"],
    }
    calls, _ = calls_for(source, "signup", attributes)
    assert calls.tracks == []
    assert calls.identifies == []
    assert calls.aliases == [{**fixture["output"]["payload"], "environment": "production"}]


def test_every_fixture_is_exercised() -> None:
    names = set(all_fixtures())
    covered = {*fixture_names("track"), *fixture_names("identify"), *fixture_names("alias")}
    assert names
    assert names == covered
    assert {"track_basic.json", "track_null_properties.json"} <= names
    assert {"identify_basic.json", "alias_basic.json"} <= names
