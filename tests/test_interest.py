"""The skip path's key-only test answers as the mapping's general rules do.

``has_interest`` decides, from a record's keys alone, whether the mapping could build any call
from it; readers skip the record when it answers no. It must never answer no for a record the
general rules (``_Builder.add``) turn into a call, and it should answer no for the common
record that only names its user (``user.id``, ``enduser.id``, ``session.id``): such a record
yields an identify only when a trait is present too. Keys are drawn from the mapping's own
tables, so a key a rule reads is covered as soon as the rule reads it.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from otel_builders import EventSpec, finished_span

from opentelemetry_exporter_altertable._keys import ALIAS_KEY, EVENT_KEY, ID_KEYS, TRAIT_KEYS
from opentelemetry_exporter_altertable._mapping import (
    _ANSWERS,
    _ANSWERS_MAX,
    MappingOptions,
    Record,
    _Builder,
    has_interest,
)
from opentelemetry_exporter_altertable._sdk import (
    map_spans,
    records_from_spans,
    span_has_analytics_data,
)
from opentelemetry_exporter_altertable._web import OLD_KEYS, STABLE_KEYS

#: Every key a rule of the mapping reads, from its own tables, and the prefixed families.
RULE_KEYS = sorted(
    {*ID_KEYS, *TRAIT_KEYS, *STABLE_KEYS, *OLD_KEYS, EVENT_KEY, ALIAS_KEY}
    | {"analytics.properties.sku", "analytics.traits.plan", "analytics.properties.$url"}
)
#: Near misses of those keys, and ordinary attributes.
OTHER_KEYS = (
    "user.emails", "user.email.work", "user.", "enduser.role", "xanalytics.event", "analytics",
    "Analytics.event", "user_agent.original", "http.route", "code.function", "session.ids",
)  # fmt: skip
KEYS = st.one_of(
    st.sampled_from(RULE_KEYS),
    st.sampled_from(OTHER_KEYS),
    st.text(alphabet="analytics.uerm\n_id", max_size=14),
)
VALUES = st.one_of(
    st.sampled_from(("u-1", "user_42", "Signed Up", "a@example.com", "", " ", "null")),
    st.booleans(),
    st.integers(-3, 3),
    st.none(),
)
RESOURCES = st.sampled_from(
    ({}, {"service.name": "shop"}, {"user.id": "res-user"}, {"enduser.id": "res-user"})
)


def rule(attrs: dict[Any, Any]) -> bool:
    """The documented answer: an ``analytics.*`` key or a trait key."""
    return any(
        type(key) is str and (key.startswith("analytics.") or key in TRAIT_KEYS) for key in attrs
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attrs=st.dictionaries(st.one_of(KEYS, st.integers(), st.none()), VALUES, max_size=8),
    parent=st.dictionaries(KEYS, VALUES, max_size=4),
    resource=RESOURCES,
    kind=st.sampled_from(("server", "client", "")),
    name=st.sampled_from((None, "", "checkout")),
)
def test_a_record_the_rules_map_is_never_skipped(
    attrs: dict[Any, Any], parent: dict[str, Any], resource: dict[str, Any], kind: str,
    name: str | None,
) -> None:  # fmt: skip
    """Whatever the rules build from a record (track, identify, alias), ``has_interest`` said
    yes to it or to its span; and it says yes exactly by the documented rule (keys that are
    not strings, which no reader produces, only by the rule)."""
    if all(type(key) is str for key in attrs):
        builder = _Builder(MappingOptions())
        record = Record(name, attrs, resource, 1_700_000_000_000_000_000, 1, 2, parent, kind)
        res = builder.resource(resource, record.time_ns)
        before = len(builder.calls)  # the resource's own identify, if any
        builder.add(record, res)
        if len(builder.calls) > before:
            # A span event's calls may come from its span's keys alone (its traits): then
            # the span is a record of its own and yields them.
            assert has_interest(attrs) or has_interest(parent)
    if any(type(key) is str and "\n" in key for key in attrs):
        assert has_interest(attrs) >= rule(attrs)  # a newline may only cost a closer look
    else:
        assert has_interest(attrs) == rule(attrs)


@settings(max_examples=200, deadline=None)
@given(
    identity=st.lists(
        st.sampled_from(sorted(key for key in ID_KEYS if not key.startswith("analytics."))),
        min_size=1,
        unique=True,
    ),
    others=st.lists(st.sampled_from(sorted({*STABLE_KEYS, *OLD_KEYS})), unique=True),
)
def test_identity_keys_alone_are_skipped(identity: list[str], others: list[str]) -> None:
    """``user.id``, ``session.id``, ... with web attributes: no call, so no interest (the
    ``analytics.*`` identity keys are found by their prefix, which is cheaper than telling
    them apart)."""
    attrs = dict.fromkeys((*others, *identity), "u-1")
    assert not has_interest(attrs)
    for trait in TRAIT_KEYS:
        assert has_interest({**attrs, trait: "x"})


def _python_calls(attrs: dict[str, Any]) -> list[str]:
    """The Python frames one ``has_interest`` call runs."""
    frames: list[str] = []

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            frames.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        answer = has_interest(attrs)
    finally:
        sys.setprofile(None)
    assert answer is False
    return frames


def test_identity_keys_cost_no_python_loop() -> None:
    """The most common span of a traced service (a request naming its user) is answered in C:
    no generator or other Python frame runs per key, whether its key set is new or was seen
    before (then the answer is remembered). So 40 keys run the frames 9 keys run."""
    request = {
        "http.request.method": "GET", "http.route": "/p/{sku}", "url.full": "https://x.test/p",
        "http.response.status_code": 200, "user_agent.original": "Mozilla/5.0",
        "client.address": "203.0.113.9", "session.id": "s-1", "user.id": "u-1",
        "enduser.id": "u-1",
    }  # fmt: skip
    larger = {**request, **{f"app.key_{i}": i for i in range(31)}}
    _ANSWERS.clear()
    new = [_python_calls(attrs) for attrs in (request, larger)]
    seen = [_python_calls(attrs) for attrs in (request, larger)]
    assert new[0] == new[1] and seen[0] == seen[1]
    assert len(seen[0]) < len(new[0])  # a remembered answer skips the rule itself
    assert not any(name.startswith("<") for name in new[0])  # no generator, no comprehension


def test_remembered_answers_are_bounded() -> None:
    _ANSWERS.clear()
    for i in range(_ANSWERS_MAX + 5):
        assert not has_interest({f"key.{i}": 1, "user.id": "u-1"})
    assert 0 < len(_ANSWERS) <= _ANSWERS_MAX
    assert has_interest({"key.1": 1, "user.id": "u-1", "user.email": "a@example.com"})


def test_sdk_spans_with_identity_but_no_analytics_data_are_skipped() -> None:
    identity = {"user.id": "u-1", "enduser.id": "u-1", "session.id": "s-1", "http.route": "/p"}
    plain = finished_span("GET /p", identity)
    assert not span_has_analytics_data(plain)
    assert records_from_spans([plain])[1] == 1  # counted as skipped
    with_trait = finished_span("GET /p", {**identity, "user.email": "a@example.com"})
    assert span_has_analytics_data(with_trait)
    tagged_event = finished_span(
        "GET /p", identity, events=[EventSpec("signup", {EVENT_KEY: "Signed Up"})]
    )
    assert span_has_analytics_data(tagged_event)
    assert records_from_spans([tagged_event])[1] == 0


def test_spans_without_the_sdk_internals_map_the_same() -> None:
    """The reader goes to the SDK's internals for speed; a span built through the public
    ``ReadableSpan`` constructor (plain attributes, a tuple of events) lacks them and is read
    through the public properties, to the same calls and the same skip count."""
    identity = {"user.id": "u-1", "session.id": "s-1", "http.route": "/p"}
    tagged = {**identity, EVENT_KEY: "Product Viewed", "analytics.properties.sku": "S-1"}
    event = EventSpec("signup", {EVENT_KEY: "Signed Up"})
    built = [
        finished_span("GET /p", identity, resource={"service.name": "shop"}),
        finished_span("GET /p", tagged, resource={"service.name": "shop"}),
        finished_span("GET /p", identity, resource={"service.name": "shop"}, events=[event]),
    ]
    public = [
        ReadableSpan(
            span.name,
            span.context,
            attributes=dict(span.attributes or {}),
            events=tuple(span.events),
            resource=span.resource,
            kind=span.kind,
            start_time=span.start_time,
            end_time=span.end_time,
        )
        for span in built
    ]
    assert not hasattr(public[0]._attributes, "_dict")
    options = MappingOptions()
    assert map_spans(public, options).by_endpoint() == map_spans(built, options).by_endpoint()
    assert map_spans(public, options).skipped == map_spans(built, options).skipped == 1
