"""The per-key-set plans give exactly what the general rules give, byte for byte.

The mapping's fast path (a plan decided once per key set, see ``_mapping._plan``) must be an
optimisation only: for any record, the calls it yields, their field order included (it decides
the JSON the API receives), equal those of the general rules with plans switched off. Keys and
values are drawn from what instrumentations and programs set: the web attributes of both
conventions, identity keys, ``$``-prefixed and non-ASCII names, empty, non-string and non-ASCII
values, URLs with queries, fragments, credentials and ``utm_`` parameters.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opentelemetry_exporter_altertable._mapping import (
    Calls,
    MappingOptions,
    Record,
    _Builder,
    map_records,
)
from opentelemetry_exporter_altertable._values import _value, json_safe

#: Keys of a plain tagged request (what the plans are for), and keys that need the general rules.
PLAIN_KEYS = (
    "analytics.properties.sku", "analytics.distinct_id", "user.id", "enduser.id", "session.id",
    "device.id", "analytics.anonymous_id", "url.full", "user_agent.original", "client.address",
    "http.request.header.referer", "http.route", "http.request.method", "price", "prix_é",
    "code.function", "service.name", "otel.trace_id",
)  # fmt: skip
OTHER_KEYS = (
    "analytics.properties.$url", "analytics.properties.service.name", "analytics.traits.plan",
    "analytics.alias", "user.email", "url.query", "url.path", "url.scheme", "server.address",
    "http.url", "http.host", "http.user_agent", "http.client_ip", "$custom", "http.target",
    "net.peer.ip",
)  # fmt: skip
URLS = (
    "https://shop.example.com/p/1", "https://shop.example.com/p/1?ref=home",
    "https://u:secret@shop.example.com/p?utm_source=news&utm_medium=mail#top",
    "http://[::1]:8080/a?utm_campaign=x", "/p?utm_source=ads", "https://é.example/ü",
    "https://shop.example.com/utm_x/p", "",
)  # fmt: skip
TEXTS = ("Product Viewed", "u-1", "user_42", "null", " ", "203.0.113.9", "é", "")
ODD_VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.sampled_from(("a", "b")), max_size=2),
    st.binary(max_size=4),
)
#: Any value: URLs and texts a key may carry, or anything at all.
VALUES = st.one_of(st.sampled_from(URLS), st.sampled_from(TEXTS), ODD_VALUES)


@st.composite
def shapes(draw: st.DrawFn) -> list[str]:
    """A key set, in order: mostly a plain tagged request, sometimes with a key (an old web
    name, a trait, an alias, a ``$`` name) that needs the general rules."""
    keys = draw(st.lists(st.sampled_from(PLAIN_KEYS), max_size=9, unique=True))
    if draw(st.integers(0, 7)):
        keys.insert(draw(st.integers(0, len(keys))), "analytics.event")
    if draw(st.integers(0, 3)) == 0:
        keys.append(draw(st.sampled_from(OTHER_KEYS)))
    return keys


RESOURCES = st.sampled_from(
    (
        {"service.name": "shop-api", "service.version": "2.14.1"},
        {"service.name": "shop-api", "deployment.environment.name": "staging"},
        {"user.id": "res-user", "user.email": "ops@example.com"},
        {"session.id": "res-session"},
        {},
    )
)


CLEAN = {
    "url.full": (*URLS[:5], "https://u:pw@shop.example.com/p", "https://shop.example.com/utm_x/p"),
    "http.target": ("/p?utm_source=ads", "/p"),
    "user_agent.original": ("Mozilla/5.0",),
    "client.address": ("203.0.113.9",),
    "http.request.header.referer": ("https://news.example/",),
    "price": (19.99, 3),
}


def value_for(draw: st.DrawFn, key: str, odd: bool) -> Any:
    """The value a key usually carries (an ASCII id, URL or text), else anything."""
    if odd:
        return draw(VALUES)
    if key == "analytics.event":
        return "Product Viewed"
    return draw(st.sampled_from(CLEAN.get(key, ("u-1", "user_42", "SKU-1", "null"))))


@st.composite
def records(draw: st.DrawFn) -> list[Record]:
    """A batch where key sets repeat (so plans are reused) and values vary."""
    resource = draw(RESOURCES)
    key_sets = draw(st.lists(shapes(), min_size=1, max_size=3))
    out = [Record.resource_only(resource, 1_700_000_000_000_000_000)]
    for i in range(draw(st.integers(1, 8))):
        shape = key_sets[i % len(key_sets)]
        # Clean values (the plans' fast path), one odd value, or odd values anywhere.
        mode = draw(st.integers(0, 2))
        odd_key = draw(st.sampled_from(shape)) if shape and mode == 1 else None
        attrs = {
            key: value_for(draw, key, key == odd_key or (mode == 2 and draw(st.booleans())))
            for key in shape
        }
        out.append(
            Record(
                name=draw(st.sampled_from(("GET /p", "", "checkout"))),
                attrs=attrs,
                resource=resource,
                time_ns=1_700_000_000_123_456_789 + i,
                trace_id=draw(st.sampled_from((0, 0x7F5564F6A42440621D7527D195804CE2))),
                span_id=draw(st.sampled_from((0, 0x6DDA0982BB99383A))),
                span_kind=draw(st.sampled_from(("server", "client", "internal"))),
            )
        )
    return out


def as_json(calls: Calls) -> str:
    return json.dumps(calls.by_endpoint(), ensure_ascii=False, allow_nan=True, default=repr)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=records(), pageviews=st.booleans())
def test_plans_change_nothing(batch: list[Record], pageviews: bool) -> None:
    warned: list[str] = []
    options = MappingOptions(on_warning=lambda key, _: warned.append(key), pageviews=pageviews)
    expected = as_json(map_records(batch, options, planned=False))
    general_warnings = list(warned)
    warned.clear()
    assert as_json(map_records(batch, options)) == expected
    assert warned == general_warnings


def test_a_plain_tagged_record_is_planned() -> None:
    """The equivalence above must be about the fast path: a plain record takes it."""
    attrs = {
        "analytics.event": "Product Viewed",
        "url.full": "https://shop.example.com/p/1?ref=home",
        "user_agent.original": "Mozilla/5.0",
        "client.address": "203.0.113.9",
        "user.id": "u-1",
    }
    record = Record("GET /p", attrs, {}, 1_700_000_000_000_000_000, span_kind="server")
    builder = _Builder(MappingOptions())
    builder.add(record, builder.resource(record.resource, record.time_ns))
    assert [plan is not None for plan in builder._plans[True].values()] == [True]
    assert builder.calls.tracks[0]["properties"]["$url"] == "https://shop.example.com/p/1"


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        VALUES,
        st.integers(),
        st.sampled_from((10**4000 - 1, 10**4000, -(10**4000), True, False, None, "\ud800", 1.5)),
        st.lists(VALUES, max_size=3),
        st.dictionaries(st.text(max_size=3), VALUES, max_size=3),
    )
)
def test_the_value_shortcut_answers_as_json_safe(value: Any) -> None:
    """``_value`` (the per-property shortcut) is ``json_safe`` with the common cases first."""
    assert repr(_value(value)) == repr(json_safe(value))
