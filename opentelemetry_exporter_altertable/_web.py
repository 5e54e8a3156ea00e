"""Pure web rules: ``$url``, ``$utm_*`` and friends from HTTP attributes; exclusion patterns.

Auto-instrumented servers describe a request with either the stable HTTP semantic conventions
(``url.scheme``, ``server.address``, ``url.path``, ``url.query``, ``client.address``, ...) or the
old ones (``http.scheme``, ``http.host``, ``http.target``, ``net.peer.ip``, ...), depending on
``OTEL_SEMCONV_STABILITY_OPT_IN``. This module turns either into the Altertable built-ins the
browser SDK would have sent. The old names are read on server spans only: on a client span
``net.peer.ip`` is the remote server, never the user.

Attribute values come from user code as often as from instrumentations, so every reader here
accepts anything (bytes, lists, numbers, ``None``) and never raises. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import translate
from typing import Any
from urllib.parse import parse_qsl

Attrs = Mapping[str, Any]

#: Attributes never copied into properties unless configured otherwise: source paths, thread
#: names and socket peers (noise, or personal data such as the client's address and port).
DEFAULT_PROPERTIES_EXCLUDE = ("code.*", "thread.*", "network.*", "net.*")

#: Ports a URL leaves out for its scheme.
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

UTM_PARAMETERS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")

# Keys each convention's rows read: none of them is copied into properties as well.
STABLE_KEYS = frozenset(
    {
        "url.full", "url.scheme", "server.address", "server.port", "url.path", "url.query",
        "user_agent.original", "client.address", "http.request.header.referer",
    }
)  # fmt: skip
OLD_KEYS = frozenset(
    {
        "http.url", "http.scheme", "http.host", "http.target", "http.user_agent",
        "http.client_ip", "net.peer.ip", "net.host.name", "net.host.port",
    }
)  # fmt: skip
#: Keys that tell a record carries any web context at all (one set test on the skip path).
WEB_KEYS = STABLE_KEYS | OLD_KEYS


def text(value: Any) -> str | None:  # noqa: PLR0911  # a flat type dispatch, plain str first
    """A usable string from an attribute value: a string, decoded bytes, a sequence's first.

    Numbers become their decimal form; ``None``, booleans, empty strings and anything else
    become ``None``.
    """
    if type(value) is str:  # the common case, first
        return value or None
    if isinstance(value, str):
        return str.__str__(value) or None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace") or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Sequence):
        return text(value[0]) if len(value) else None
    return None


def _port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        port = int(value)
    else:
        raw = text(value)
        if raw is None or not raw.strip().isdigit():
            return None
        port = int(raw.strip())
    return port if 0 < port < 65536 else None


def strip_url(url: str) -> str:
    """``url`` without its query string, fragment and credentials (tokens live there)."""
    for mark in ("#", "?"):
        cut = url.find(mark)
        if cut >= 0:
            url = url[:cut]
    start = url.find("://")
    if start >= 0:
        authority_start = start + 3
        slash = url.find("/", authority_start)
        authority_end = len(url) if slash < 0 else slash
        at = url.rfind("@", authority_start, authority_end)
        if at >= 0:
            url = url[:authority_start] + url[at + 1 :]
    return url


def _host(host: str) -> str:
    """IPv6 literals go in brackets (``[::1]``); names and IPv4 stay as they are."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _path(path: str | None) -> str:
    if not path:
        return "/"
    for mark in ("#", "?"):
        cut = path.find(mark)
        if cut >= 0:
            path = path[:cut]
    if not path.startswith("/"):
        path = "/" + path
    return path


def _split_host(host: str) -> tuple[str, str | None]:
    """``name[:port]`` -> (name, port); ``[v6]:port`` and a bare IPv6 literal understood.

    Several instrumentations copy the ``Host`` header, port included, into ``server.address``
    (and ``http.host`` always carries it), so a host is never trusted to be a bare name.
    """
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        rest = host[end + 1 :]
        return host[1:end], (rest[1:] if rest.startswith(":") else None)
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, None


#: Characters that end a URL's authority: a host holding one is not a host, and would put a
#: path, query or fragment into ``$url``, which never carries a query.
_NOT_IN_HOST = frozenset("/?#@\\ ")


def _authority(scheme: str, host: str, port: Any) -> str | None:
    name, embedded = _split_host(host)
    if not name or not name.isprintable() or not _NOT_IN_HOST.isdisjoint(name):
        return None
    number = _port(port) if port is not None else None
    if number is None and embedded is not None:
        number = _port(embedded)
    authority = _host(name)
    if number is not None and DEFAULT_PORTS.get(scheme) != number:
        authority = f"{authority}:{number}"
    return authority


def url_from_parts(scheme: Any, host: Any, port: Any, path: Any) -> str | None:
    """``scheme://host[:port]path``: the port only when not the scheme's default.

    ``None`` without a scheme and a host; an empty path is ``/``; a query in ``path`` is cut.
    """
    scheme_text, host_text = text(scheme), text(host)
    if scheme_text is None or host_text is None:
        return None
    scheme_text = scheme_text.strip().lower()
    authority = _authority(scheme_text, host_text, port)
    if authority is None or not scheme_text:
        return None
    return f"{scheme_text}://{authority}{_path(text(path))}"


def stable_url(attrs: Attrs) -> str | None:
    """``$url`` from the stable conventions: ``url.full``, else the URL parts (``url.path``
    required: an empty one is ``/``, a missing one means no ``$url``)."""
    full = text(attrs.get("url.full"))
    if full is not None:
        return strip_url(full)
    path = attrs.get("url.path")
    if path is None:  # a page's address without its path would name the wrong page
        return None
    return url_from_parts(
        attrs.get("url.scheme"), attrs.get("server.address"), attrs.get("server.port"), path
    )


def old_url(attrs: Attrs) -> str | None:
    """``$url`` from the old conventions: ``http.url``, else scheme, host and target."""
    full = text(attrs.get("http.url"))
    if full is not None:
        return strip_url(full)
    target = attrs.get("http.target")
    if target is None:  # a page's address without its path would name the wrong page
        return None
    host = attrs.get("http.host")
    if text(host) is None:
        # Instrumentations that leave out http.host name the server with net.host.*.
        return url_from_parts(
            attrs.get("http.scheme"),
            attrs.get("net.host.name"),
            attrs.get("net.host.port"),
            target,
        )
    return url_from_parts(attrs.get("http.scheme"), host, None, target)


def _query_of(url_or_target: str | None) -> str | None:
    if url_or_target is None:
        return None
    cut = url_or_target.find("?")
    if cut < 0:
        return None
    query = url_or_target[cut + 1 :]
    hash_mark = query.find("#")
    return query[:hash_mark] if hash_mark >= 0 else query


def utm_from_query(query: str | None) -> dict[str, str]:
    """``{"$utm_source": ..., ...}`` from a query string (first value of each parameter)."""
    if not query or "utm_" not in query:
        return {}
    found: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name in UTM_PARAMETERS and value:
            found.setdefault(f"${name}", value)
    return found


def stable_utm(attrs: Attrs) -> dict[str, str]:
    """``$utm_*`` from ``url.query``, else the query of ``url.full``."""
    query = text(attrs.get("url.query"))
    if query is None:
        query = _query_of(text(attrs.get("url.full")))
    return utm_from_query(query.lstrip("?") if query else None)


def old_utm(attrs: Attrs) -> dict[str, str]:
    """``$utm_*`` from the query of ``http.target``, else of ``http.url``."""
    query = _query_of(text(attrs.get("http.target")))
    if query is None:
        query = _query_of(text(attrs.get("http.url")))
    return utm_from_query(query)


def _first(levels: Sequence[Attrs], key: str) -> str | None:
    for attrs in levels:
        value = text(attrs.get(key))
        if value is not None:
            return value
    return None


def web_context(levels: Sequence[Attrs], server: bool) -> dict[str, str]:
    """The web built-ins of a record: stable names on every record (``levels``: the record,
    then its span), the old names as fallbacks when the record is (or belongs to) a server span.

    Only what is known is returned; ``$ip`` is left out when no client address is known.
    Every value is a string.
    """
    out: dict[str, str] = {}
    for attrs in levels:
        url = stable_url(attrs)
        if url is None and server:
            url = old_url(attrs)
        if url is not None:
            out["$url"] = url
            break
    for attrs in levels:
        utm = stable_utm(attrs)
        if not utm and server and ("http.target" in attrs or "http.url" in attrs):
            utm = old_utm(attrs)
        if utm:
            out.update(utm)
            break
    user_agent = _first(levels, "user_agent.original")
    if user_agent is None and server:
        user_agent = _first(levels, "http.user_agent")
    if user_agent is not None:
        out["$user_agent"] = user_agent
    ip = _first(levels, "client.address")
    if ip is None and server:
        ip = _first(levels, "http.client_ip") or _first(levels, "net.peer.ip")
    if ip is not None:
        out["$ip"] = ip
    referer = _first(levels, "http.request.header.referer")
    if referer is not None:
        out["$referer"] = referer
    return out


# --------------------------------------------------------------------------- exclusion


def parse_patterns(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Comma-separated glob patterns (or a sequence of them) -> a tuple, blanks dropped."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    patterns: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"properties_exclude patterns must be strings, not {item!r}")
        pattern = item.strip()
        if pattern and pattern not in patterns:
            patterns.append(pattern)
    return tuple(patterns)


class ExcludeMatcher:
    """Case-sensitive glob patterns over attribute names, compiled once into one regex."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._regex = (
            re.compile("|".join(f"(?:{translate(p)})" for p in self.patterns))
            if self.patterns
            else None
        )

    def __call__(self, key: str) -> bool:
        return self._regex is not None and self._regex.match(key) is not None

    def __bool__(self) -> bool:
        return self._regex is not None

    def __repr__(self) -> str:
        return f"ExcludeMatcher({','.join(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExcludeMatcher) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)


# --------------------------------------------------------------------------- page views

#: The captured response header, as the conventions spell it and as the WSGI and ASGI
#: instrumentations do (they turn ``-`` into ``_`` in header names).
CONTENT_TYPE_KEYS = ("http.response.header.content-type", "http.response.header.content_type")


def _status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    raw = text(value)
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def is_page_view(attrs: Attrs, span_kind: str) -> bool:
    """An HTML page served: a SERVER span, GET, 2xx, response content type ``text/html``."""
    if span_kind != "server":
        return False
    method = text(attrs.get("http.request.method")) or text(attrs.get("http.method"))
    if method is None or method.strip().upper() != "GET":
        return False
    status = _status(attrs.get("http.response.status_code"))
    if status is None:
        status = _status(attrs.get("http.status_code"))
    if status is None or not 200 <= status < 300:
        return False
    for key in CONTENT_TYPE_KEYS:
        content_type = text(attrs.get(key))
        if content_type is not None:
            return content_type.strip().lower().startswith("text/html")
    return False
