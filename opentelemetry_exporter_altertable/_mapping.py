"""Pure mapping: OpenTelemetry spans, span events and log records -> Altertable calls.

Nothing here does I/O or keeps state between calls: the exporter feeds records in and gets
JSON-ready payload dicts out, grouped by endpoint. Warnings are handed to a callback so the
caller decides how (and how often) to log them.

The skip path matters most: in a traced service nearly every span carries no analytics data,
so :func:`_has_interest` looks only at attribute *keys* and returns before anything is built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ._api import BUILT_IN_PROPERTIES, LIB_NAME, LIB_VERSION, is_reserved_id

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import ReadableLogRecord
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan

_LIB_PROPERTIES = {"$lib": LIB_NAME, "$lib_version": LIB_VERSION}

EVENT_KEY = "analytics.event"
ALIAS_KEY = "analytics.alias"
_PROPERTIES_PREFIX = "analytics.properties."
_TRAITS_PREFIX = "analytics.traits."

# (payload field, attribute keys in order of preference)
_ID_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("distinct_id", ("analytics.distinct_id", "user.id", "enduser.id")),
    ("anonymous_id", ("analytics.anonymous_id", "enduser.pseudo.id")),
    ("device_id", ("analytics.device_id", "device.id")),
    ("session_id", ("analytics.session_id", "session.id")),
)
_ID_KEYS = frozenset(key for _, keys in _ID_FIELDS for key in keys)
# (built-in property, attribute key): looked up on the record, then its span.
_CONTEXT_FIELDS = (
    ("$url", "url.full"),
    ("$user_agent", "user_agent.original"),
    ("$ip", "client.address"),
    ("$referer", "http.request.header.referer"),
)
_TRAIT_KEYS = {
    "user.email": "email",
    "user.full_name": "name",
    "user.name": "username",
    "user.roles": "roles",
}
_CONTEXT_KEYS = {key: builtin for builtin, key in _CONTEXT_FIELDS}
#: Attributes a row of the mapping consumes, so they are not copied into properties as well.
_CONSUMED_KEYS = frozenset(
    {"device.id", "session.id", "url.full", "user_agent.original", "client.address",
     "http.request.header.referer"}
)  # fmt: skip
_NOT_PROPERTIES = ("analytics.", "user.", "enduser.")
#: A record is worth a closer look only if one of its keys starts with one of these.
_INTEREST_PREFIXES = ("analytics.", *_TRAIT_KEYS)

# How _scan_track treats an attribute key: decided once per key and batch (see _classify).
_PROPERTY = 0  # copied to properties as is
_SKIP = 1  # analytics.*, user.*, enduser.* keys no row maps, and identity keys
_RENAMED, _OVERRIDE, _TRAIT, _CONTEXT = 2, 3, 4, 5  # (kind, name) tuples
KeyClass = int | tuple[int, str]

_MAX_DEPTH = 32
#: Python refuses to print integers of more than 4300 digits; longer ones become null.
_INT_LIMIT = 10**4000

Attrs = Mapping[str, Any]
Payload = dict[str, Any]
WarningHook = Callable[[str, str], None]
_EMPTY: Attrs = {}


@dataclass(frozen=True)
class MappingOptions:
    """What the mapping needs from the exporter's configuration."""

    environment: str | None = None
    """Explicit environment (argument or env var); wins over the resource's."""
    on_warning: WarningHook | None = None
    """Called as ``(dedup_key, message)``; the caller logs each key once."""


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


# --------------------------------------------------------------------------- values


def _clean_str(value: str) -> str:
    """Replace lone surrogates (valid in Python, invalid in UTF-8) with U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def json_safe(value: Any, _depth: int = 0) -> Any:
    """Turn an attribute or body value into something ``json.dumps(allow_nan=False)`` accepts.

    Sequences become lists, NaN and infinities become ``None`` (JSON cannot carry them),
    bytes are decoded, anything unknown becomes its ``str``; nesting is cut at 32 levels.
    """
    kind = type(value)
    if kind is str:
        return _clean_str(value)
    if kind is bool or value is None:
        return value
    if kind is int:
        return value if -_INT_LIMIT < value < _INT_LIMIT else None
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, str):  # str subclasses (enums, tagged strings) stay strings
        return _clean_str(str.__str__(value))
    if _depth >= _MAX_DEPTH:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {_clean_str(str(k)): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, Sequence, set, frozenset)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):  # int subclasses such as IntEnum
        return json_safe(int(value))
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return _clean_str(str(value))


@lru_cache(maxsize=256)
def _format_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch -> ISO 8601 UTC with milliseconds, as the official SDKs send."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_format_seconds(seconds)}.{rest // 1_000_000:03d}Z"


def _as_id(value: Any) -> str | None:
    if isinstance(value, str):
        return _clean_str(str.__str__(value)) if value else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value)) if -_INT_LIMIT < value < _INT_LIMIT else None
    return None


# --------------------------------------------------------------------------- resource


def resolve_environment(resource: Resource | None, explicit: str | None) -> str:
    """Explicit setting, else the resource's deployment environment, else ``production``."""
    if explicit:
        return _clean_str(explicit)
    if resource is not None:
        attrs = resource.attributes
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


# --------------------------------------------------------------------------- records


def _has_interest(attrs: Attrs | None) -> bool:
    """Cheap key-only test: could this record produce any call? Most records answer no."""
    if not attrs:
        return False
    if EVENT_KEY in attrs:  # the common interesting case, in one lookup
        return True
    for key in attrs:  # noqa: SIM110 (a plain loop beats any() on this hot path)
        if key.startswith(_INTEREST_PREFIXES):
            return True
    return False


def _own_traits(attrs: Attrs) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    for key, value in attrs.items():
        trait = _TRAIT_KEYS.get(key)
        if trait is not None:
            traits[trait] = json_safe(value)
        elif key.startswith(_TRAITS_PREFIX):
            traits[_clean_str(key[len(_TRAITS_PREFIX) :])] = json_safe(value)
    return traits


@dataclass(slots=True)
class _Record:
    """One span, span event or log record, reduced to what the mapping reads."""

    name: str | None
    attrs: Attrs
    parent: Attrs  # the span's attributes for a span event, else empty
    resource: _ResourceInfo
    time_ns: int
    trace_id: int
    span_id: int
    body: Mapping[Any, Any] | None = None


class _Builder:
    """Accumulates the calls of one batch; one instance per map call."""

    def __init__(self, options: MappingOptions) -> None:
        self.options = options
        self.calls = Calls()
        self._warn = options.on_warning
        self._resources: dict[int, _ResourceInfo] = {}
        self._identify_keys: set[tuple[Any, ...]] = set()
        self._key_classes: dict[str, KeyClass] = {}

    def warn(self, key: str, message: str) -> None:
        if self._warn is not None:
            self._warn(key, message)

    def resource(self, resource: Resource | None, time_ns: int) -> _ResourceInfo:
        info = self._resources.get(id(resource))
        if info is None:
            attrs: Attrs = _plain(resource.attributes) if resource is not None else _EMPTY
            release = attrs.get("service.version")
            service = attrs.get("service.name")
            info = _ResourceInfo(
                attrs=attrs,
                environment=resolve_environment(resource, self.options.environment),
                release=_clean_str(str(release)) if release is not None else None,
                service_name=_clean_str(str(service)) if service is not None else None,
                traits=_own_traits(attrs),
                ids=self.identity((attrs,), {}),
            )
            self._resources[id(resource)] = info
            distinct_id = info.ids.get("distinct_id")
            if info.traits and distinct_id is not None:  # the resource itself names a user
                anonymous_id = info.ids.get("anonymous_id")
                self.add_identify(info, distinct_id, anonymous_id, info.traits, time_ns)
        return info

    def identity(self, levels: tuple[Attrs, ...], fallback: dict[str, str]) -> dict[str, str]:
        """Each identity field from the first level that has it, else from ``fallback``."""
        if len(levels) == 1 and _ID_KEYS.isdisjoint(levels[0]):  # one C-level test
            return dict(fallback)
        ids: dict[str, str] = {}
        for field_name, keys in _ID_FIELDS:
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
        ident = raw if type(raw) is str and raw.isascii() and raw else _as_id(raw)
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
        key = (resource.environment, distinct_id, anonymous_id, _freeze(traits))
        if key in self._identify_keys:
            return
        self._identify_keys.add(key)
        payload: Payload = {
            "environment": resource.environment,
            "distinct_id": distinct_id,
            "traits": traits,
            "timestamp": format_timestamp(time_ns),
        }
        if anonymous_id is not None:
            payload["anonymous_id"] = anonymous_id
        self.calls.identifies.append(payload)

    def add(self, record: _Record) -> None:
        """Build every call this (interesting) record yields."""
        attrs, parent, res = record.attrs, record.parent, record.resource
        ids = self.identity((attrs, parent) if parent else (attrs,), res.ids)
        distinct_id = ids.get("distinct_id")

        tag = attrs.get(EVENT_KEY)
        event = record.name if tag is True else tag if isinstance(tag, str) else None
        if event and event.isspace():  # blank: the API would store a nameless event
            self.warn("blank-event", "an analytics.event of only spaces was skipped")
            event = None
        properties: dict[str, Any] | None = None
        context: dict[str, Any] = {}
        if event:
            properties, own_traits, context = _scan_track(record, self._key_classes)
        else:
            own_traits = _own_traits(attrs)
        parent_traits = _own_traits(parent) if parent else {}
        if distinct_id is not None and (own_traits or parent_traits):
            traits = {**res.traits, **parent_traits, **own_traits}
            self.add_identify(res, distinct_id, ids.get("anonymous_id"), traits, record.time_ns)

        alias = attrs.get(ALIAS_KEY)
        if alias is not None:
            self._add_alias(record, distinct_id, alias)
        if event and properties is not None:
            self._add_track(record, _clean_str(str.__str__(event)), properties, context, ids)

    def _add_alias(self, record: _Record, distinct_id: str | None, alias: Any) -> None:
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
                "environment": record.resource.environment,
                "distinct_id": distinct_id,
                "new_user_id": new_id,
                "timestamp": format_timestamp(record.time_ns),
            }
        )

    def _add_track(
        self,
        record: _Record,
        event: str,
        properties: dict[str, Any],
        context: dict[str, Any],
        ids: dict[str, str],
    ) -> None:
        res = record.resource
        # "$" sorts before letters and digits: one C-level min() tells whether any key could
        # be a "$" key, instead of a Python loop over every key.
        if properties and min(properties)[:1] <= "$":
            for key in properties:
                if key[:1] == "$" and key not in BUILT_IN_PROPERTIES:
                    properties = self._strip_unknown_builtins(properties)
                    break

        parent = record.parent
        if parent:  # a span event falls back to its span's context
            for builtin, key in _CONTEXT_FIELDS:
                if builtin not in context and key in parent:
                    context[builtin] = parent[key]
        for builtin, raw in context.items():
            if builtin not in properties:  # an explicit analytics.properties.$url wins
                value = raw if type(raw) is str and raw.isascii() else _context_value(raw)
                if value is not None:
                    properties[builtin] = value
        properties.setdefault("$ip", 0)
        if res.release is not None:
            properties.setdefault("$release", res.release)
        properties.update(_LIB_PROPERTIES)
        if res.service_name is not None:
            properties.setdefault("service.name", res.service_name)
        if record.trace_id:
            properties["otel.trace_id"] = format(record.trace_id, "032x")
        if record.span_id:
            properties["otel.span_id"] = format(record.span_id, "016x")

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


def _value(value: Any) -> Any:
    """``json_safe`` with the common cases first (this runs for every property)."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() else _clean_str(value)
    if kind is bool or (kind is int and -_INT_LIMIT < value < _INT_LIMIT):
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    return json_safe(value)


def _context_value(raw: Any) -> Any:
    if type(raw) is str:
        return raw if raw.isascii() else _clean_str(raw)
    if isinstance(raw, Sequence):  # the referer header is an array in the conventions
        return _value(raw[0]) if raw else None
    return _value(raw)


def _classify(key: str) -> KeyClass:
    """What a record's attribute ``key`` contributes to a track call."""
    if key.startswith(_NOT_PROPERTIES):
        if key.startswith(_PROPERTIES_PREFIX):
            return (_OVERRIDE, _clean_str(key[len(_PROPERTIES_PREFIX) :]))
        if key.startswith(_TRAITS_PREFIX):
            return (_TRAIT, _clean_str(key[len(_TRAITS_PREFIX) :]))
        trait = _TRAIT_KEYS.get(key)
        return (_TRAIT, trait) if trait is not None else _SKIP
    builtin = _CONTEXT_KEYS.get(key)
    if builtin is not None:
        return (_CONTEXT, builtin)
    if key in _CONSUMED_KEYS:
        return _SKIP
    return _PROPERTY if key.isascii() else (_RENAMED, _clean_str(key))


def _scan_track(
    record: _Record, classes: dict[str, KeyClass]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One pass over a tagged record's attributes: its properties, traits and context.

    ``classes`` caches :func:`_classify` for the batch: spans of one instrumentation share
    their keys, so each key is classified once and then costs one dict lookup.
    """
    properties: dict[str, Any] = {}
    if record.body:
        for key, value in record.body.items():
            properties[_clean_str(str(key))] = json_safe(value)
    overrides: dict[str, Any] | None = None
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}
    for key, value in record.attrs.items():
        kind = classes.get(key)
        if kind is None:
            kind = classes[key] = _classify(key)
        if kind is _PROPERTY:
            # _value() inlined for ASCII strings, the commonest case by far.
            properties[key] = value if type(value) is str and value.isascii() else _value(value)
        elif kind is not _SKIP:
            tag, name = kind  # type: ignore[misc]
            if tag is _OVERRIDE:
                if overrides is None:
                    overrides = {}
                overrides[name] = _value(value)
            elif tag is _CONTEXT:
                context[name] = value
            elif tag is _TRAIT:
                traits[name] = json_safe(value)
            else:
                properties[name] = _value(value)
    if overrides:
        properties.update(overrides)
    return properties, traits, context


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a JSON-ready value (for deduplication keys)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# --------------------------------------------------------------------------- entry points


def _plain(attrs: Any) -> Attrs:
    """The plain dict behind the SDK's ``BoundedAttributes``, else the mapping itself.

    ``BoundedAttributes`` is a Python-level ``MutableMapping``: every ``get`` and every step of
    iteration goes through a Python call. Reading its ``_dict`` (present in every supported SDK)
    makes the mapping about twice as fast; when an SDK lacks it, the public mapping is used.
    """
    inner = getattr(attrs, "_dict", None)
    if isinstance(inner, dict):
        return inner
    return attrs or _EMPTY


def span_attributes(span: ReadableSpan) -> Attrs:
    """A span's attributes without the read-only proxy the public property builds per call."""
    raw = getattr(span, "_attributes", None)
    if raw is None:
        return span.attributes or _EMPTY
    return _plain(raw)


def span_events(span: ReadableSpan) -> Sequence[Event]:
    """A span's events without the tuple copy the public property makes per call.

    The SDK keeps them in a ``BoundedList`` whose ``len()`` is a Python call; its ``_dq``
    deque answers in C.
    """
    raw = getattr(span, "_events", None)
    if raw is None:
        return span.events
    events: Sequence[Event] = getattr(raw, "_dq", raw)
    return events


def span_has_analytics_data(span: ReadableSpan) -> bool:
    """True when the span or one of its events could yield a track, identify or alias."""
    if _has_interest(span_attributes(span)):
        return True
    return any(_has_interest(_plain(event.attributes)) for event in span_events(span))


def map_spans(spans: Sequence[ReadableSpan], options: MappingOptions) -> Calls:
    """Map spans and their events; records without analytics data cost a key scan."""
    builder = _Builder(options)
    last_resource: object = None
    res: _ResourceInfo | None = None
    for span in spans:
        resource = span.resource
        if resource is not last_resource or res is None:
            # Once per resource: it may itself carry identify data.
            last_resource = resource
            res = builder.resource(resource, span.end_time or span.start_time or time.time_ns())
        attrs = span_attributes(span)
        span_interesting = _has_interest(attrs)
        events = span_events(span)
        tagged_events = [e for e in events if _has_interest(_plain(e.attributes))] if events else ()
        if not span_interesting and not tagged_events:
            builder.calls.skipped += 1
            continue
        ctx = span.context
        trace_id = ctx.trace_id if ctx is not None else 0
        span_id = ctx.span_id if ctx is not None else 0
        end_ns = span.end_time or span.start_time or time.time_ns()
        for event in tagged_events:
            builder.add(
                _Record(
                    name=event.name,
                    attrs=_plain(event.attributes),
                    parent=attrs,
                    resource=res,
                    time_ns=event.timestamp,
                    trace_id=trace_id,
                    span_id=span_id,
                )
            )
        if span_interesting:
            builder.add(_Record(span.name, attrs, _EMPTY, res, end_ns, trace_id, span_id))
    return builder.calls


def map_log_records(records: Sequence[ReadableLogRecord], options: MappingOptions) -> Calls:
    """Map log records; a dict body is merged under the record's attributes."""
    builder = _Builder(options)
    last_resource: object = None
    for readable in records:
        record = readable.log_record
        if readable.resource is not last_resource:
            last_resource = readable.resource
            builder.resource(readable.resource, record.timestamp or record.observed_timestamp)
        attrs = record.attributes or _EMPTY
        if not _has_interest(attrs):
            builder.calls.skipped += 1
            continue
        time_ns = record.timestamp or record.observed_timestamp or time.time_ns()
        res = builder.resource(readable.resource, time_ns)
        name = getattr(record, "event_name", None) or attrs.get("event.name")
        body = record.body if isinstance(record.body, Mapping) else None
        builder.add(
            _Record(
                name=name if isinstance(name, str) else None,
                attrs=attrs,
                parent=_EMPTY,
                resource=res,
                time_ns=time_ns,
                trace_id=record.trace_id or 0,
                span_id=record.span_id or 0,
                body=body,
            )
        )
    return builder.calls
