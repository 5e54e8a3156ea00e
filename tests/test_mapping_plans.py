"""The per-key-set plans give exactly what the general rules give, byte for byte.

The mapping's fast path (a plan decided once per key set, ``_plans``) must be an optimisation
only: for any record, the calls it yields, their field order included (it decides the JSON the
API receives), equal those of the general rules with plans switched off. Keys come from the
mapping's own tables (every key a rule reads: identity, traits, both HTTP conventions, page
view headers, the prefixed families, the built-ins a plan must not shadow), so a key a rule
starts to read is drawn here at once; values are what instrumentations and programs set:
empty, non-string and non-ASCII values, URLs with queries, fragments, credentials and ``utm_``
parameters.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opentelemetry_exporter_altertable._keys import (
    ALIAS_KEY,
    EVENT_KEY,
    ID_KEYS,
    PROPERTIES_PREFIX,
    TRAIT_KEYS,
    TRAITS_PREFIX,
)
from opentelemetry_exporter_altertable._mapping import (
    Calls,
    MappingOptions,
    Record,
    _Builder,
    map_records,
)
from opentelemetry_exporter_altertable._plans import LATER_BUILT_INS, SIMPLE_WEB_KEYS
from opentelemetry_exporter_altertable._values import _value, json_safe
from opentelemetry_exporter_altertable._web import (
    CONTENT_TYPE_KEYS,
    DEFAULT_PROPERTIES_EXCLUDE,
    WEB_KEYS,
)

#: Plain attributes of a request, a non-ASCII name, and one per default exclusion pattern.
ORDINARY = (
    "http.route", "http.request.method", "http.response.status_code", "price", "prix_é",
    *(pattern.replace("*", "peer.port") for pattern in DEFAULT_PROPERTIES_EXCLUDE),
)  # fmt: skip
#: Keys of a plain tagged request besides its web keys (``SIMPLE_WEB_KEYS``): a plan handles
#: them with the simple web shape.
REQUEST_KEYS = (
    *sorted(ID_KEYS), *ORDINARY, *CONTENT_TYPE_KEYS,
    PROPERTIES_PREFIX + "sku", PROPERTIES_PREFIX + "price",
)  # fmt: skip
#: Properties named like the built-ins added after the web ones: a plan, but no simple shape.
SHADOWING_KEYS = (
    *sorted(LATER_BUILT_INS), *(PROPERTIES_PREFIX + name for name in sorted(LATER_BUILT_INS))
)
#: The other web keys (both conventions: server.port, http.scheme, net.host.*, ...): a plan
#: leaves them to the general web rules.
WEB_OTHER = tuple(sorted(WEB_KEYS - set(SIMPLE_WEB_KEYS)))
#: Keys no plan covers: traits, an alias, ``$`` property names.
GENERAL_KEYS = (
    *sorted(TRAIT_KEYS), TRAITS_PREFIX + "plan", ALIAS_KEY, "$custom", PROPERTIES_PREFIX + "$url",
)  # fmt: skip
URLS = (
    "https://shop.example.com/p/1", "https://shop.example.com/p/1?ref=home",
    "https://u:secret@shop.example.com/p?utm_source=news&utm_medium=mail#top",
    "http://[::1]:8080/a?utm_campaign=x", "/p?utm_source=ads", "https://é.example/ü",
    "https://shop.example.com/utm_x/p", "https://shop.example.com/p#reviews", "",
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


def test_every_key_a_rule_reads_is_drawn() -> None:
    drawn = {*SIMPLE_WEB_KEYS, *REQUEST_KEYS, *SHADOWING_KEYS, *WEB_OTHER, *GENERAL_KEYS, EVENT_KEY}
    read = {*ID_KEYS, *TRAIT_KEYS, *WEB_KEYS, *CONTENT_TYPE_KEYS, EVENT_KEY, ALIAS_KEY}
    assert read <= drawn
    assert {"server.port", "http.scheme", "net.host.name", "net.host.port"} <= drawn


@st.composite
def shapes(draw: st.DrawFn) -> list[str]:
    """A key set, in order: mostly a plain tagged request, often with other web keys or a
    property named like a built-in, sometimes with a key (a trait, an alias, a ``$`` name)
    that needs the general rules."""
    web = draw(st.lists(st.sampled_from(SIMPLE_WEB_KEYS), max_size=4, unique=True))
    rest = draw(st.lists(st.sampled_from(REQUEST_KEYS), max_size=6, unique=True))
    keys = list(draw(st.permutations(web + rest)))
    if draw(st.integers(0, 7)):
        keys.insert(draw(st.integers(0, len(keys))), EVENT_KEY)
    extra: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        extra.append(draw(st.sampled_from(SHADOWING_KEYS)))
    if draw(st.integers(0, 2)) == 0:
        extra += draw(st.lists(st.sampled_from(WEB_OTHER), min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        extra.append(draw(st.sampled_from(GENERAL_KEYS)))
    for key in extra:
        if key not in keys:
            keys.insert(draw(st.integers(0, len(keys))), key)
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


CLEAN: dict[str, tuple[Any, ...]] = {
    "url.full": (*URLS[:5], *URLS[6:8], "https://u:pw@shop.example.com/p"),
    "http.url": URLS[:4],
    "http.target": ("/p?utm_source=ads", "/p"),
    "url.path": ("/p/1", "p"),
    "url.query": ("ref=home&utm_source=news", ""),
    "url.scheme": ("https", "http"),
    "http.scheme": ("https",),
    "server.address": ("shop.example.com", "::1"),
    "http.host": ("shop.example.com:8080",),
    "net.host.name": ("shop.example.com",),
    "server.port": (443, 8080, "8080"),
    "net.host.port": (80, 8443),
    "user_agent.original": ("Mozilla/5.0",),
    "http.user_agent": ("Mozilla/5.0",),
    "client.address": ("203.0.113.9",),
    "http.client_ip": ("198.51.100.7",),
    "net.peer.ip": ("192.0.2.1",),
    "http.request.header.referer": ("https://news.example/",),
    "http.request.method": ("GET", "POST"),
    "http.response.status_code": (200, 404),
    **dict.fromkeys(CONTENT_TYPE_KEYS, ("text/html; charset=utf-8", "application/json")),
    "price": (19.99, 3),
}


def value_for(draw: st.DrawFn, key: str, odd: bool) -> Any:
    """The value a key usually carries (an ASCII id, URL or text), else anything."""
    if odd:
        return draw(VALUES)
    if key == EVENT_KEY:
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


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
    assert builder._planner is not None
    assert builder._planner.plan(attrs, server=True) is not None
    assert builder._planner.track(attrs, True, {}, {}) is not None
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
