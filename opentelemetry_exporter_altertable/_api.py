"""The Altertable API's facts: built-in property names, reserved ids, our library name.

One place for what the API itself fixes (its reference, official SDKs and mock), so the
exporter's mapping, its transport and the local receiver agree by construction. The receiver
imports this module, never the exporter's mapping.
"""

from __future__ import annotations

from .version import __version__

LIB_NAME = "opentelemetry-exporter-altertable"
LIB_VERSION = __version__
USER_AGENT = f"{LIB_NAME}/{LIB_VERSION}"

#: The three ingestion endpoints, in the order one export sends them.
ENDPOINTS = ("identify", "alias", "track")

#: Property names the API knows; any other ``$`` key makes it refuse the whole request.
BUILT_IN_PROPERTIES = frozenset(
    {
        "$lib", "$lib_version", "$release", "$url", "$referer", "$viewport", "$ip",
        "$user_agent", "$utm_source", "$utm_medium", "$utm_campaign", "$utm_term",
        "$utm_content", "$app_name", "$app_version", "$app_build", "$app_namespace",
        "$device", "$device_type", "$device_manufacturer", "$device_model", "$os",
        "$os_version", "$screen_name",
    }
)  # fmt: skip

#: Built-in event names.
PAGEVIEW_EVENT = "$pageview"

_RESERVED_IDS_CASELESS = frozenset(
    {
        "anonymous_id", "anonymous", "distinct_id", "distinctid", "false", "guest", "id",
        "not_authenticated", "true", "undefined", "user_id", "user", "visitor_id", "visitor",
    }
)  # fmt: skip
_RESERVED_IDS_EXACT = frozenset({"[object Object]", "0", "NaN", "none", "None", "null"})

#: Error codes of the API's answers that the clients act on.
ENVIRONMENT_NOT_FOUND = "environment-not-found"
UNKNOWN_BUILT_IN_PROPERTY = "unknown-built-in-property"


def is_reserved_id(value: str) -> bool:
    """True for the placeholder ids the API must never receive as a user id."""
    return value in _RESERVED_IDS_EXACT or value.lower() in _RESERVED_IDS_CASELESS
