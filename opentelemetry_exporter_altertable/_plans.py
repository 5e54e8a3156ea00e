"""Per-key-set plans: the track of a plain tagged record, with the per-key decisions made once.

One job: make the common record cheap. The spans of one instrumentation share their keys, in
order, so what the general rules (``_mapping``) decide per key (is it a property, under which
name, which identity field does it feed, which web built-in) is decided once per key set and
batch, as a :class:`Plan`; what is left per record is reading its values.

The contract: a plan gives exactly what the general rules give, field order included (it
decides the JSON the API receives); ``tests/test_mapping_plans.py`` checks this on random
records whose keys come from the mapping's own tables. A plan covers only plain records: when
a key needs more (an alias, a trait, a ``$`` property name, a key that is not a string) no plan
is made, and when a value does (a non-ASCII or non-string id, event or web value, a reserved
id) :meth:`Planner.track` answers ``None``; the general rules then map the record. Nothing here
does I/O or keeps state beyond one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._api import is_reserved_id
from ._keys import ALIAS_KEY, EVENT_KEY, ID_FIELDS, Key, KeyClass, classify
from ._values import _value
from ._web import WEB_KEYS, Attrs, ExcludeMatcher, stable_utm, strip_url

__all__ = ["LATER_BUILT_INS", "SIMPLE_WEB_KEYS", "Plan", "PlannedTrack", "Planner", "plan_for"]

# Module-level aliases: the hot loops read globals, not enum class attributes.
_PROPERTY, _SKIP = Key.PROPERTY, Key.SKIP
_OVERRIDE, _TRAIT, _OLD_WEB = Key.OVERRIDE, Key.TRAIT, Key.OLD_WEB

#: The web keys of the simple stable shape: each built-in read from exactly one key, in the
#: order :func:`_web.web_context` writes them ($url, then $user_agent, $ip and $referer).
SIMPLE_WEB_KEYS = (
    "url.full", "user_agent.original", "client.address", "http.request.header.referer"
)  # fmt: skip
#: Property names the built-ins added after the web ones would collide with: a record whose
#: properties name one of them takes the general web rules (which never overwrite them).
LATER_BUILT_INS = frozenset({"service.name", "otel.trace_id", "otel.span_id"})

#: (event, properties, identity fields, complete): ``complete`` when the web built-ins and
#: the resource's tail are in; otherwise the general web rules and built-ins still apply.
PlannedTrack = tuple[str, dict[str, Any], dict[str, str], bool]


@dataclass(frozen=True, slots=True)
class Plan:
    """What every tagged record with one key set (in one order) yields, decided once."""

    properties: tuple[tuple[str, str], ...]
    """(attribute key, property name), in the order the general scan would write them."""
    ids: tuple[tuple[str, str], ...]
    """Each identity field with a key present, and its first present key, in field order
    (the others come from the resource)."""
    checks_distinct_id: bool
    """``distinct_id`` comes from the record, so its value is checked for reserved ids."""
    web: tuple[str, str, str, str] | None
    """For the simple stable shape (no web keys but those of ``SIMPLE_WEB_KEYS``, and no
    property named like ``LATER_BUILT_INS``), each of those keys when present (else empty);
    ``None``: the general web rules and built-ins."""


def plan_for(
    keys: tuple[str, ...], server: bool, classes: dict[str, KeyClass], exclude: ExcludeMatcher
) -> Plan | None:
    """The plan for records with exactly these keys, or ``None`` when one of them needs the
    general rules (an alias, traits, a ``$`` property name, a key that is not a string)."""
    if ALIAS_KEY in keys:
        return None
    properties: list[tuple[str, str]] = []
    overrides: list[tuple[str, str]] = []
    for key in keys:
        if type(key) is not str:
            return None
        kind = classes.get(key)
        if kind is None:
            kind = classes[key] = classify(key, exclude)
        if kind == _PROPERTY:
            properties.append((key, key))
        elif kind != _SKIP:
            tag, name = kind  # type: ignore[misc]
            if tag == _TRAIT:
                return None
            if tag == _OVERRIDE:
                overrides.append((key, name))
            elif tag != _OLD_WEB or not server:
                properties.append((key, name))
    names = [name for _, name in (*properties, *overrides)]
    if any(name[:1] == "$" for name in names):
        return None
    present = set(keys)
    ids = tuple(
        (field_name, next(key for key in id_keys if key in present))
        for field_name, id_keys in ID_FIELDS
        if not present.isdisjoint(id_keys)
    )
    simple = present.isdisjoint(WEB_KEYS - set(SIMPLE_WEB_KEYS)) and LATER_BUILT_INS.isdisjoint(
        names
    )
    web = tuple(key if key in present else "" for key in SIMPLE_WEB_KEYS) if simple else None
    return Plan(
        properties=(*properties, *overrides),
        ids=ids,
        checks_distinct_id=any(name == "distinct_id" for name, _ in ids),
        web=web,  # type: ignore[arg-type]
    )


_UNPLANNED: Any = object()


class Planner:
    """The plans of one batch, by span kind (server or not) and key tuple."""

    def __init__(self, classes: dict[str, KeyClass], exclude: ExcludeMatcher) -> None:
        self._classes = classes  # shared with the general scan: each key classified once
        self._exclude = exclude
        self._plans: tuple[dict[tuple[str, ...], Plan | None], ...] = ({}, {})

    def plan(self, attrs: Attrs, server: bool) -> Plan | None:
        """The plan for records with ``attrs``'s keys, made on first sight."""
        plans = self._plans[server]
        keys = tuple(attrs)
        plan: Plan | None = plans.get(keys, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = plans[keys] = plan_for(keys, server, self._classes, self._exclude)
        return plan

    def track(  # noqa: PLR0912  # the hot path: inline branches beat helper calls per record
        self, attrs: Attrs, server: bool, fallback: dict[str, str], tail: dict[str, str]
    ) -> PlannedTrack | None:
        """The track of a record whose ``analytics.event`` is a string, by its key plan, or
        ``None`` when the general rules must map it.

        ``fallback`` is the resource's identity fields, ``tail`` the built-ins every track of
        the resource ends with (``$release``, ``$lib``, ``$lib_version``, ``service.name``).
        """
        plan = self.plan(attrs, server)
        if plan is None:
            return None
        event = attrs[EVENT_KEY]
        if not event.isascii() or not event or event.isspace():
            return None
        ids = planned_ids(attrs, plan, fallback)
        if ids is None:
            return None
        web = None
        if plan.web is not None:
            web = simple_web(attrs, plan.web)
            if web is None:
                return None
        properties: dict[str, Any] = {
            name: value if type(value) is str and value.isascii() else _value(value)
            for key, name in plan.properties
            for value in (attrs[key],)
        }
        if web is None:
            return event, properties, ids, False
        url, user_agent, ip, referer = web
        if url:
            if "@" in url or "#" in url:
                properties["$url"] = strip_url(url)
            else:  # only a query to cut, if any: strip_url's other scans would find nothing
                cut = url.find("?")
                properties["$url"] = url[:cut] if cut >= 0 else url
            if "utm_" in url:
                properties.update(stable_utm(attrs))
        if user_agent:
            properties["$user_agent"] = user_agent
        if ip:
            properties["$ip"] = ip
        if referer:
            properties["$referer"] = referer
        if not ip:
            properties["$ip"] = 0
        properties.update(tail)
        return event, properties, ids, True


def planned_ids(attrs: Attrs, plan: Plan, fallback: dict[str, str]) -> dict[str, str] | None:
    """The identity fields of a planned record: each from its planned key, else the resource's;
    ``None`` when a value needs the general rules (not a non-empty ASCII string, a reserved
    ``distinct_id``)."""
    ids: dict[str, str] = {}
    for field_name, key in plan.ids:
        raw = attrs[key]
        if type(raw) is not str or not raw or not raw.isascii():
            return None
        ids[field_name] = raw
    if plan.checks_distinct_id and is_reserved_id(ids["distinct_id"]):
        return None
    if fallback and len(ids) < len(ID_FIELDS):  # the resource fills the gaps, in field order
        ids = {
            name: ids.get(name) or fallback[name]
            for name, _ in ID_FIELDS
            if name in ids or name in fallback
        }
    return ids


def simple_web(attrs: Attrs, keys: tuple[str, str, str, str]) -> tuple[str, str, str, str] | None:
    """The URL, user agent, client address and referer of a record of the simple stable shape
    (``""`` where absent), or ``None`` when one is not an ASCII string (the general web rules
    decode, pick from sequences and clean such values)."""
    url_key, agent_key, ip_key, referer_key = keys
    url = attrs[url_key] if url_key else ""
    user_agent = attrs[agent_key] if agent_key else ""
    ip = attrs[ip_key] if ip_key else ""
    referer = attrs[referer_key] if referer_key else ""
    if (
        type(url) is str
        and type(user_agent) is str
        and type(ip) is str
        and type(referer) is str
        and (url + user_agent + ip + referer).isascii()
    ):
        return url, user_agent, ip, referer
    return None
