"""The mapping's tables: which attribute keys its rules read, and what each key contributes.

One job: name the keys once. The general rules (``_mapping``), the per-key-set plans
(``_plans``) and the tests that check one against the other read the same tables, so a key a
rule starts to read is covered everywhere at once. Nothing here reads a record.
"""

from __future__ import annotations

from enum import IntEnum

from ._values import _clean_str
from ._web import OLD_KEYS, STABLE_KEYS, ExcludeMatcher

__all__ = [
    "ALIAS_KEY",
    "CONSUMED_KEYS",
    "EVENT_KEY",
    "ID_FIELDS",
    "ID_KEYS",
    "NOT_PROPERTIES",
    "PROPERTIES_PREFIX",
    "TRAITS_PREFIX",
    "TRAIT_KEYS",
    "Key",
    "KeyClass",
    "classify",
]

EVENT_KEY = "analytics.event"
ALIAS_KEY = "analytics.alias"
PROPERTIES_PREFIX = "analytics.properties."
TRAITS_PREFIX = "analytics.traits."

#: (payload field, attribute keys in order of preference)
ID_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("distinct_id", ("analytics.distinct_id", "user.id", "enduser.id")),
    ("anonymous_id", ("analytics.anonymous_id", "enduser.pseudo.id")),
    ("device_id", ("analytics.device_id", "device.id")),
    ("session_id", ("analytics.session_id", "session.id")),
)
ID_KEYS = frozenset(key for _, keys in ID_FIELDS for key in keys)
#: Trait attribute -> trait name (``analytics.traits.<k>`` -> ``<k>`` besides).
TRAIT_KEYS = {
    "user.email": "email",
    "user.full_name": "name",
    "user.name": "username",
    "user.roles": "roles",
}
#: Key prefixes that never become properties: the rows' own namespaces.
NOT_PROPERTIES = ("analytics.", "user.", "enduser.")
#: Attributes a row of the mapping consumes, so they are not copied into properties as well
#: (those the prefixes above already keep out need no entry). The stable HTTP names are
#: consumed on every record; the old ones only on server spans (see ``_web``).
CONSUMED_KEYS = frozenset(
    key for key in (*ID_KEYS, *STABLE_KEYS, *TRAIT_KEYS) if not key.startswith(NOT_PROPERTIES)
)


class Key(IntEnum):
    """How a track treats an attribute key: decided once per key and batch (:func:`classify`)."""

    PROPERTY = 0  # copied to properties as is
    SKIP = 1  # analytics.*, user.*, enduser.* keys no row maps, and identity keys
    RENAMED = 2  # the rest are (class, name) tuples
    OVERRIDE = 3
    TRAIT = 4
    OLD_WEB = 5  # an old-convention HTTP name: consumed on server spans, a property elsewhere


KeyClass = Key | tuple[Key, str]


def classify(key: str, exclude: ExcludeMatcher) -> KeyClass:
    """What a record's attribute ``key`` contributes to a track call."""
    if key.startswith(NOT_PROPERTIES):
        if key.startswith(PROPERTIES_PREFIX):
            return (Key.OVERRIDE, _clean_str(key[len(PROPERTIES_PREFIX) :]))
        if key.startswith(TRAITS_PREFIX):
            return (Key.TRAIT, _clean_str(key[len(TRAITS_PREFIX) :]))
        trait = TRAIT_KEYS.get(key)
        return (Key.TRAIT, trait) if trait is not None else Key.SKIP
    if key in CONSUMED_KEYS or exclude(key):
        return Key.SKIP
    if key in OLD_KEYS:
        return (Key.OLD_WEB, key)
    return Key.PROPERTY if key.isascii() else (Key.RENAMED, _clean_str(key))
