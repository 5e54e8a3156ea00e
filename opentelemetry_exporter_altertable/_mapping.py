"""The mapping's rules: neutral records -> Altertable calls.

One job: decide which identify, alias and track calls a batch of records yields. A record is
the neutral :class:`Record` (a span, a span event or a log record reduced to what the rules
read); readers build them (``_sdk`` for the OpenTelemetry SDK's spans and log records), so a
new input is a new reader, not a branch inside every rule. Nothing here imports SDK or protobuf
types, does I/O or keeps state between calls (but :func:`has_interest`'s memo of answers that
depend on keys alone): records go in, JSON-ready payload dicts come out, grouped by endpoint.
Warnings are handed to a callback so the caller decides how (and how often) to log them. The
keys the rules read are named in ``_keys``; a plain tagged record takes its key set's plan
(``_plans``), which gives what these rules give at about two thirds of their cost.

The skip path matters most: in a traced service nearly every span carries no analytics data,
so :func:`has_interest` looks only at attribute *keys*; readers call it before building a
record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._api import BUILT_IN_PROPERTIES, LIB_NAME, LIB_VERSION, PAGEVIEW_EVENT, is_reserved_id
from ._keys import (
    ALIAS_KEY,
    EVENT_KEY,
    ID_FIELDS,
    ID_KEYS,
    TRAIT_KEYS,
    TRAITS_PREFIX,
    Key,
    KeyClass,
    classify,
)
from ._plans import Planner
from ._values import _as_id, _clean_str, _value, format_timestamp, json_safe
from ._web import (
    DEFAULT_PROPERTIES_EXCLUDE,
    WEB_KEYS,
    ExcludeMatcher,
    is_page_view,
    web_context,
)

__all__ = [
    "ALIAS_KEY",
    "EMPTY",
    "EVENT_KEY",
    "Attrs",
    "Calls",
    "MappingOptions",
    "Payload",
    "Record",
    "WarningHook",
    "carries_identity",
    "format_timestamp",
    "has_interest",
    "identify_key",
    "json_safe",
    "map_records",
    "resolve_environment",
]

_LIB_PROPERTIES = {"$lib": LIB_NAME, "$lib_version": LIB_VERSION}

#: A record is worth a closer look only if one of its keys starts with this prefix or is a
#: trait key (see :func:`has_interest`).
_INTEREST_PREFIX = "analytics."
_TRAIT_KEY_SET = frozenset(TRAIT_KEYS)


# Module-level aliases: the hot loop reads globals, not enum class attributes.
_PROPERTY, _SKIP = Key.PROPERTY, Key.SKIP
_OVERRIDE, _TRAIT, _OLD_WEB = Key.OVERRIDE, Key.TRAIT, Key.OLD_WEB

Attrs = Mapping[str, Any]
Payload = dict[str, Any]
WarningHook = Callable[[str, str], None]


class _EmptyAttrs(dict[str, Any]):
    """The shared empty attributes: a ``dict`` (reads stay in C) that refuses writes, and is
    hashable so it can be a dataclass default."""

    __hash__ = object.__hash__  # type: ignore[assignment]

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("the shared empty attributes are read-only")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse


EMPTY: Attrs = _EmptyAttrs()


@dataclass(frozen=True)
class MappingOptions:
    """What the mapping needs from the exporter's configuration."""

    environment: str | None = None
    """Explicit environment (argument or env var); wins over the resource's."""
    on_warning: WarningHook | None = None
    """Called as ``(dedup_key, message)``; the caller logs each key once."""
    pageviews: bool = False
    """Untagged server spans that served an HTML page become ``$pageview`` tracks."""
    properties_exclude: ExcludeMatcher = field(
        default_factory=lambda: ExcludeMatcher(DEFAULT_PROPERTIES_EXCLUDE)
    )
    """Attribute names never copied into properties (``analytics.properties.*`` always are)."""


@dataclass
class Calls:
    """The API calls built from one batch, in the order they must be sent."""

    identifies: list[Payload] = field(default_factory=list)
    aliases: list[Payload] = field(default_factory=list)
    tracks: list[Payload] = field(default_factory=list)
    skipped: int = 0
    """Records that carried no analytics data at all."""

    def __len__(self) -> int:
        return len(self.identifies) + len(self.aliases) + len(self.tracks)

    def by_endpoint(self) -> dict[str, list[Payload]]:
        """Non-empty lists keyed by endpoint, identifies first, then aliases, then tracks."""
        out: dict[str, list[Payload]] = {}
        if self.identifies:
            out["identify"] = self.identifies
        if self.aliases:
            out["alias"] = self.aliases
        if self.tracks:
            out["track"] = self.tracks
        return out


@dataclass(slots=True)
class Record:
    """One span, span event or log record, reduced to what the mapping reads."""

    name: str | None
    """Span name, span-event name, or a log record's ``event_name`` (else ``event.name``)."""
    attrs: Attrs
    """The record's own attributes, as a plain mapping."""
    resource: Attrs
    """Resource attributes. Per-resource work is cached by ``id(resource)``: a reader passes
    the same mapping object for every record of one resource."""
    time_ns: int
    """Span end time, event time, or a log record's time (else its observed time)."""
    trace_id: int = 0
    span_id: int = 0
    # A factory, not ``= EMPTY``: Python 3.10's dataclasses refuse any dict instance as a
    # default; the factory hands out the one shared read-only empty mapping.
    parent: Attrs = field(default_factory=lambda: EMPTY)
    """The span's attributes, for a span event; else empty."""
    span_kind: str = ""
    """``server``, ``client``, ``internal``, ``producer`` or ``consumer`` for spans and span
    events (their span's kind); empty for log records."""
    body: Mapping[Any, Any] | None = None
    """A log record's body, when it is a mapping."""
    dropped_attributes: int = 0
    """How many attributes the SDK dropped (attribute limits)."""

    @classmethod
    def resource_only(cls, resource: Attrs, time_ns: int) -> Record:
        """A record that only introduces ``resource``: its own identify (a resource naming a
        user with traits) is due even when none of its records is tagged."""
        return cls(None, EMPTY, resource, time_ns)


# --------------------------------------------------------------------------- resource


def resolve_environment(resource: Attrs | None, explicit: str | None) -> str:
    """Explicit setting, else the resource's deployment environment, else ``production``.

    ``resource`` is the resource's attributes.
    """
    if explicit:
        return _clean_str(explicit)
    if resource:
        attrs = resource
        for key in ("deployment.environment.name", "deployment.environment"):
            value = attrs.get(key)
            if isinstance(value, str) and value:
                return _clean_str(value)
    return "production"


@dataclass(frozen=True)
class _ResourceInfo:
    """What every record of one resource shares, computed once per batch."""

    attrs: Attrs
    environment: str
    release: str | None
    service_name: str | None
    traits: dict[str, Any]
    ids: dict[str, str]
    """Identity fields the resource itself provides: the last fallback of every record."""
    tail: dict[str, str]
    """The built-ins every track of this resource ends with (``$release``, ``$lib``,
    ``$lib_version``, ``service.name``), in the order the general rules add them: a planned
    track whose properties name none of them adds them with one ``update``."""


def _tail(release: Any, service: Any) -> dict[str, str]:
    tail = {"$release": _clean_str(str(release))} if release is not None else {}
    tail.update(_LIB_PROPERTIES)
    if service is not None:
        tail["service.name"] = _clean_str(str(service))
    return tail


# --------------------------------------------------------------------------- records


def has_interest(attrs: Attrs | None) -> bool:
    """Cheap key-only test: could this record produce any call? Most records answer no.

    A call needs an ``analytics.*`` key (an event, an alias, ``analytics.traits.*``) or one of
    the trait keys (``user.email``, ...): identity keys alone (``user.id``, ``session.id``,
    which the identity recipes put on every server span) yield nothing, since an identify
    needs a trait (:func:`_keys_interest` decides). The spans of one instrumentation share
    their keys, in order, so the answer is remembered by key tuple: most records cost one
    ``tuple`` and one dict lookup, both in C.
    """
    if not attrs:
        return False
    if EVENT_KEY in attrs:  # the common interesting case, in one lookup
        return True
    keys = tuple(attrs)
    answer = _ANSWERS.get(keys)
    if answer is None:
        answer = _keys_interest(keys)
        if len(_ANSWERS) >= _ANSWERS_MAX:  # key sets made up per record: start over
            _ANSWERS.clear()
        _ANSWERS[keys] = answer
    return answer


#: :func:`has_interest`'s answers by key tuple. A memo of a pure function (the answer depends
#: on the keys alone), so exporters may share it; bounded by clearing it when full. Dict reads
#: and writes are atomic, so threads need no lock.
_ANSWERS: dict[tuple[Any, ...], bool] = {}
_ANSWERS_MAX = 1024


def _keys_interest(keys: tuple[Any, ...]) -> bool:
    """The rule behind :func:`has_interest`: an ``analytics.`` key or a trait key.

    The keys are joined once and searched for ``analytics.`` in C; the trait keys are one set
    test: no Python loop runs over the keys. A key holding a newline can only make the answer
    a false yes, which costs a closer look, never a lost record.
    """
    try:
        if "\nanalytics." in "\n" + "\n".join(keys):
            return True
    except TypeError:  # a key that is not a string
        if any(type(key) is str and key.startswith(_INTEREST_PREFIX) for key in keys):
            return True
    return not _TRAIT_KEY_SET.isdisjoint(keys)


def carries_identity(attrs: Attrs) -> bool:
    """True when ``attrs`` name a user or device (``user.id``, ``session.id``, ...)."""
    return not ID_KEYS.isdisjoint(attrs)


def _own_traits(attrs: Attrs) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    for key, value in attrs.items():
        trait = TRAIT_KEYS.get(key)
        if trait is not None:
            traits[trait] = json_safe(value)
        elif key.startswith(TRAITS_PREFIX):
            traits[_clean_str(key[len(TRAITS_PREFIX) :])] = json_safe(value)
    return traits


class _Builder:
    """Accumulates the calls of one batch; one instance per map call."""

    def __init__(self, options: MappingOptions, planned: bool = True) -> None:
        self.options = options
        self.calls = Calls()
        self._warn = options.on_warning
        self._resources: dict[int, _ResourceInfo] = {}
        self._identify_keys: set[str] = set()
        self._key_classes: dict[str, KeyClass] = {}
        self._exclude = options.properties_exclude
        self._planner = Planner(self._key_classes, self._exclude) if planned else None
        self._pageviews = options.pageviews

    def warn(self, key: str, message: str) -> None:
        if self._warn is not None:
            self._warn(key, message)

    def warn_truncated(self, record: Record) -> None:
        """A record with analytics keys that lost attributes to the SDK's limit may have lost
        ``analytics.event`` itself (the limit evicts the oldest attribute first)."""
        self.warn(
            "truncated-attributes",
            f"{record.name or 'a record'!r:.200} carries analytics attributes but the SDK dropped "
            f"{record.dropped_attributes} of its attributes (attribute count limit, default "
            "128; OTEL_ATTRIBUTE_COUNT_LIMIT / OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT): the oldest go "
            "first, analytics.event among them when it was set first (logged once)",
        )

    def resource(self, attrs: Attrs, time_ns: int) -> _ResourceInfo:
        info = self._resources.get(id(attrs))
        if info is None:
            release = attrs.get("service.version")
            service = attrs.get("service.name")
            info = _ResourceInfo(
                attrs=attrs,
                environment=resolve_environment(attrs, self.options.environment),
                release=_clean_str(str(release)) if release is not None else None,
                service_name=_clean_str(str(service)) if service is not None else None,
                traits=_own_traits(attrs),
                ids=self.identity((attrs,), {}),
                tail=_tail(release, service),
            )
            self._resources[id(attrs)] = info
            distinct_id = info.ids.get("distinct_id")
            if info.traits and distinct_id is not None:  # the resource itself names a user
                anonymous_id = info.ids.get("anonymous_id")
                self.add_identify(info, distinct_id, anonymous_id, info.traits, time_ns)
        return info

    def identity(self, levels: tuple[Attrs, ...], fallback: dict[str, str]) -> dict[str, str]:
        """Each identity field from the first level that has it, else from ``fallback``."""
        if len(levels) == 1 and ID_KEYS.isdisjoint(levels[0]):  # one C-level test
            return dict(fallback)
        ids: dict[str, str] = {}
        for field_name, keys in ID_FIELDS:
            found: str | None = None
            for attrs in levels:
                for key in keys:
                    raw = attrs.get(key)
                    if raw is not None:
                        found = self._identifier(field_name, key, raw)
                        if found is not None:
                            break
                if found is not None:
                    break
            if found is None:
                found = fallback.get(field_name)
            if found is not None:
                ids[field_name] = found
        return ids

    def _identifier(self, field_name: str, key: str, raw: Any) -> str | None:
        ident = _as_id(raw)
        if ident is not None and field_name == "distinct_id" and is_reserved_id(ident):
            self.warn(
                f"reserved-id:{key}:{ident}",
                f"{key}={ident!r} is a reserved placeholder id and is never sent as "
                "distinct_id; the next identity source is used instead",
            )
            return None
        return ident

    def add_identify(
        self,
        resource: _ResourceInfo,
        distinct_id: str,
        anonymous_id: str | None,
        traits: dict[str, Any],
        time_ns: int,
    ) -> None:
        payload: Payload = {
            "environment": resource.environment,
            "distinct_id": distinct_id,
            "traits": traits,
            "timestamp": format_timestamp(time_ns),
        }
        if anonymous_id is not None:
            payload["anonymous_id"] = anonymous_id
        key = identify_key(payload)
        if key in self._identify_keys:
            return
        self._identify_keys.add(key)
        self.calls.identifies.append(payload)

    def add(self, record: Record, res: _ResourceInfo) -> None:
        """Build every call this (interesting) record yields."""
        attrs, parent = record.attrs, record.parent
        planner = self._planner
        if planner is not None and self._add_planned(planner, record, res):
            return
        ids = self.identity((attrs, parent) if parent else (attrs,), res.ids)
        distinct_id = ids.get("distinct_id")

        tag = attrs.get(EVENT_KEY)
        event = record.name if tag is True else tag if isinstance(tag, str) else None
        if event and event.isspace():  # blank: the API would store a nameless event
            self.warn("blank-event", "an analytics.event of only spaces was skipped")
            event = None
        if tag is True and not record.name:
            self.warn(
                "event-true-unnamed",
                "analytics.event=true means 'use this record's own name', but a record "
                "(a log record without event_name) has none; nothing was tracked. Set the log "
                "record's event_name, or give analytics.event the event name itself",
            )
        elif tag is None and self._pageviews and _is_page_view_record(record):
            event = PAGEVIEW_EVENT
        properties: dict[str, Any] | None = None
        if event:
            properties, own_traits = _scan_track(record, self._key_classes, self._exclude)
        else:
            own_traits = _own_traits(attrs)
        parent_traits = _own_traits(parent) if parent else {}
        if distinct_id is not None and (own_traits or parent_traits):
            traits = {**res.traits, **parent_traits, **own_traits}
            self.add_identify(res, distinct_id, ids.get("anonymous_id"), traits, record.time_ns)

        alias = attrs.get(ALIAS_KEY)
        if alias is not None:
            self._add_alias(record, res, distinct_id, alias)
        if event and properties is not None:
            event_name = _clean_str(str.__str__(event))
            self._add_track(record, res, event=event_name, properties=properties, ids=ids)

    def _add_planned(self, planner: Planner, record: Record, res: _ResourceInfo) -> bool:
        """The track of a plain tagged record, by its key set's plan (see ``_plans``, which
        gives what the rest of :meth:`add` would); False (nothing done) when the general rules
        must map it: a span event, a log record's body, an ``analytics.event`` that is not a
        string, or what the plan cannot cover."""
        attrs = record.attrs
        if record.parent or record.body or type(attrs.get(EVENT_KEY)) is not str:
            return False
        planned = planner.track(attrs, record.span_kind == "server", res.ids, res.tail)
        if planned is None:
            return False
        event, properties, ids, complete = planned
        if complete:
            self._append_track(record, res, event, properties, ids)
        else:
            self._finish_track(record, res, event=event, properties=properties, ids=ids)
        return True

    def _add_alias(
        self, record: Record, res: _ResourceInfo, distinct_id: str | None, alias: Any
    ) -> None:
        new_id = _as_id(alias)
        if new_id is None or distinct_id is None:
            self.warn(
                "alias-unresolved",
                "analytics.alias needs a non-empty id and a resolvable distinct_id "
                "(analytics.distinct_id, user.id or enduser.id); the alias was skipped",
            )
            return
        if is_reserved_id(new_id) or new_id == distinct_id:
            self.warn(
                f"alias-invalid:{new_id}",
                f"analytics.alias={new_id!r} is reserved or equals the distinct_id; skipped",
            )
            return
        self.calls.aliases.append(
            {
                "environment": res.environment,
                "distinct_id": distinct_id,
                "new_user_id": new_id,
                "timestamp": format_timestamp(record.time_ns),
            }
        )

    def _add_track(
        self,
        record: Record,
        res: _ResourceInfo,
        *,
        event: str,
        properties: dict[str, Any],
        ids: dict[str, str],
    ) -> None:
        # "$" sorts before letters and digits: one C-level min() tells whether any key could
        # be a "$" key, instead of a Python loop over every key.
        if properties and min(properties)[:1] <= "$":
            for key in properties:
                if key[:1] == "$" and key not in BUILT_IN_PROPERTIES:
                    properties = self._strip_unknown_builtins(properties)
                    break
        self._finish_track(record, res, event=event, properties=properties, ids=ids)

    def _finish_track(
        self,
        record: Record,
        res: _ResourceInfo,
        *,
        event: str,
        properties: dict[str, Any],
        ids: dict[str, str],
    ) -> None:
        """Web context, the built-ins and trace ids, then the payload."""
        attrs, parent = record.attrs, record.parent
        if not (WEB_KEYS.isdisjoint(attrs) and WEB_KEYS.isdisjoint(parent)):
            # The record, then its span (a span event falls back to its span's context).
            levels = (attrs, parent) if parent else (attrs,)
            for builtin, value in web_context(levels, record.span_kind == "server").items():
                if builtin not in properties:  # an explicit analytics.properties.$url wins
                    properties[builtin] = value if value.isascii() else _clean_str(value)
        properties.setdefault("$ip", 0)
        if res.release is not None:
            properties.setdefault("$release", res.release)
        properties.update(_LIB_PROPERTIES)
        if res.service_name is not None:
            properties.setdefault("service.name", res.service_name)
        self._append_track(record, res, event, properties, ids)

    def _append_track(
        self,
        record: Record,
        res: _ResourceInfo,
        event: str,
        properties: dict[str, Any],
        ids: dict[str, str],
    ) -> None:
        """The trace ids, then the payload."""
        # printf-style formatting: half the time of format(n, "032x") (timeit, 0.33 vs 0.66 us).
        if record.trace_id:
            properties["otel.trace_id"] = "%032x" % record.trace_id  # noqa: UP031
        if record.span_id:
            properties["otel.span_id"] = "%016x" % record.span_id  # noqa: UP031
        payload: Payload = {
            "environment": res.environment,
            "event": event,
            "properties": properties,
            "timestamp": format_timestamp(record.time_ns),
        }
        if ids:
            payload.update(ids)
        self.calls.tracks.append(payload)

    def _strip_unknown_builtins(self, properties: dict[str, Any]) -> dict[str, Any]:
        cleaned: dict[str, Any] = {}
        renamed: list[tuple[str, Any]] = []
        for key, value in properties.items():
            if key.startswith("$") and key not in BUILT_IN_PROPERTIES:
                self.warn(
                    f"dollar-key:{key}",
                    f"property {key!r} is not an Altertable built-in ($-prefixed names are "
                    f"reserved); it is sent as {key.lstrip('$')!r}",
                )
                renamed.append((key.lstrip("$"), value))
            else:
                cleaned[key] = value
        for key, value in renamed:
            if key and key not in cleaned:
                cleaned[key] = value
        return cleaned


def _is_page_view_record(record: Record) -> bool:
    """A span (not a span event) that is a page view by the rules of ``_web.is_page_view``."""
    return not record.parent and record.span_kind == "server" and is_page_view(
        record.attrs, record.span_kind
    )


def _scan_track(  # noqa: PLR0912  # the hot one-pass scan: a branch per key class beats helper calls per attribute
    record: Record, classes: dict[str, KeyClass], exclude: ExcludeMatcher
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One pass over a tagged record's attributes: its properties and traits.

    ``classes`` caches :func:`_classify` for the batch: spans of one instrumentation share
    their keys, so each key is classified once and then costs one dict lookup.
    """
    properties: dict[str, Any] = {}
    if record.body:
        for key, value in record.body.items():
            properties[_clean_str(str(key))] = json_safe(value)
    overrides: dict[str, Any] | None = None
    traits: dict[str, Any] = {}
    server = record.span_kind == "server"
    for key, value in record.attrs.items():
        kind = classes.get(key)
        if kind is None:
            kind = classes[key] = classify(key, exclude)
        if kind == _PROPERTY:
            properties[key] = _value(value)
        elif kind != _SKIP:
            tag, name = kind  # type: ignore[misc]
            if tag == _OVERRIDE:
                if overrides is None:
                    overrides = {}
                overrides[name] = _value(value)
            elif tag == _OLD_WEB:
                if not server:  # on a server span the old names are read as context
                    properties[name] = _value(value)
            elif tag == _TRAIT:
                traits[name] = json_safe(value)
            else:
                properties[name] = _value(value)
    if overrides:
        properties.update(overrides)
    return properties, traits


def identify_key(payload: Mapping[str, Any]) -> str:
    """What makes two identify payloads the same call (the timestamp aside): the one key
    both the batch's deduplication and the exporter's cache of accepted identifies use.

    Every field is taken whole, whatever a ``before_send`` hook left in it (lists and dicts
    included), as canonical JSON: a string is always hashable, and JSON keeps apart what
    Python equality merges (``true`` and ``1``, a dict and a list of its pairs). Payloads are
    JSON-safe by construction (the mapping, then ``json_safe`` after the hook); ``repr`` is
    only the last word for a value that is not.
    """
    get = payload.get
    return json.dumps(
        [get("environment"), get("distinct_id"), get("anonymous_id"), get("traits")],
        sort_keys=True,
        separators=(",", ":"),
        default=repr,
    )


# --------------------------------------------------------------------------- entry points


def map_records(
    records: Iterable[Record], options: MappingOptions, skipped: int = 0, *, planned: bool = True
) -> Calls:
    """Map neutral records, in order, to the calls they yield.

    A record without analytics data (see :func:`has_interest`) yields nothing but introduces
    its resource, whose own identify may be due (see :meth:`Record.resource_only`). Readers
    test interest before building records and count what they skip: ``skipped`` is reported
    as :attr:`Calls.skipped`. ``planned=False`` maps by the general rules alone: the reference
    the per-key-set plans are tested against.
    """
    builder = _Builder(options, planned)
    builder.calls.skipped = skipped
    resources = builder._resources
    pageviews = options.pageviews
    for record in records:
        res = resources.get(id(record.resource))
        if res is None:
            res = builder.resource(record.resource, record.time_ns)
        if has_interest(record.attrs):
            if record.dropped_attributes:
                builder.warn_truncated(record)
            builder.add(record, res)
        elif record.dropped_attributes and carries_identity(record.attrs):
            # Identity but no analytics.event: the limit may have evicted the tag itself.
            builder.warn_truncated(record)
        elif pageviews and _is_page_view_record(record):
            builder.add(record, res)
    return builder.calls
