"""Pure web rules: ``$url`` from either HTTP convention, ``$utm_*``, exclusion patterns."""

from __future__ import annotations

import fnmatch
import string
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from opentelemetry_exporter_altertable._web import (
    ExcludeMatcher,
    is_page_view,
    old_url,
    parse_patterns,
    stable_url,
    strip_url,
    text,
    url_from_parts,
    utm_from_query,
    web_context,
)

# ------------------------------------------------------------------ url from parts


@pytest.mark.parametrize(
    ("scheme", "host", "port", "path", "expected"),
    [
        ("https", "shop.example", 443, "/cart", "https://shop.example/cart"),
        ("http", "shop.example", 80, "/cart", "http://shop.example/cart"),
        ("http", "shop.example", 8080, "/cart", "http://shop.example:8080/cart"),
        ("https", "shop.example", 80, "/", "https://shop.example:80/"),
        ("HTTPS", "shop.example", None, None, "https://shop.example/"),
        ("https", "shop.example", None, "", "https://shop.example/"),
        ("https", "shop.example", None, "cart", "https://shop.example/cart"),
        ("http", "::1", 8000, "/a", "http://[::1]:8000/a"),
        ("http", "[::1]", 8000, "/a", "http://[::1]:8000/a"),
        ("http", "2001:db8::5", 80, "/", "http://[2001:db8::5]/"),
        ("http", "[2001:db8::5]:9000", None, "/", "http://[2001:db8::5]:9000/"),
        # server.address carrying the Host header, port included (WSGI instrumentation)
        ("http", "127.0.0.1:5000", 5000, "/p", "http://127.0.0.1:5000/p"),
        ("https", "shop.example:443", None, "/p", "https://shop.example/p"),
        ("http", "shop.example", "8080", "/x?token=1", "http://shop.example:8080/x"),
        ("http", "shop.example", "not-a-port", "/", "http://shop.example/"),
        ("http", "shop.example", True, "/", "http://shop.example/"),
        ("http", "shop.example", 0, "/", "http://shop.example/"),
        ("http", "shop.example", 70000, "/", "http://shop.example/"),
        # bytes and lists where strings belong
        (b"https", b"shop.example", [8443], [b"/cart"], "https://shop.example:8443/cart"),
        (["https"], ("shop.example",), None, [], "https://shop.example/"),
    ],
)
def test_url_from_parts(scheme: Any, host: Any, port: Any, path: Any, expected: str) -> None:
    assert url_from_parts(scheme, host, port, path) == expected


@pytest.mark.parametrize(
    ("scheme", "host"),
    [(None, "h"), ("http", None), ("http", ""), ("", "h"), ("http", []), ("http", 3.5),
     ("http", "  "), ("http", "[]")],
)  # fmt: skip
def test_url_from_parts_needs_scheme_and_host(scheme: Any, host: Any) -> None:
    assert url_from_parts(scheme, host, 80, "/") is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a.example/p?q=1#frag", "https://a.example/p"),
        ("https://user:secret@a.example/p", "https://a.example/p"),
        ("https://a.example/p#x?y", "https://a.example/p"),
        ("https://a.example", "https://a.example"),
        ("/relative?x=1", "/relative"),
        ("https://a.example/at@sign", "https://a.example/at@sign"),
    ],
)
def test_strip_url(url: str, expected: str) -> None:
    assert strip_url(url) == expected


def test_stable_url_prefers_url_full() -> None:
    attrs = {"url.full": "https://a.example/x?token=t", "url.scheme": "http",
             "server.address": "b.example", "url.path": "/y"}  # fmt: skip
    assert stable_url(attrs) == "https://a.example/x"
    del attrs["url.full"]
    assert stable_url(attrs) == "http://b.example/y"
    attrs["url.path"] = ""
    assert stable_url(attrs) == "http://b.example/"
    del attrs["url.path"]  # no path at all: no address rather than the wrong page's
    assert stable_url(attrs) is None


def test_old_url_from_http_host_and_target() -> None:
    assert old_url({"http.url": "http://a.example:80/x?q"}) == "http://a.example:80/x"
    attrs = {"http.scheme": "http", "http.host": "127.0.0.1:5000", "http.target": "/p/1?a=b"}
    assert old_url(attrs) == "http://127.0.0.1:5000/p/1"
    attrs = {"http.scheme": "https", "http.host": "shop.example:443", "http.target": "/"}
    assert old_url(attrs) == "https://shop.example/"
    attrs = {"http.scheme": "http", "net.host.name": "h.example", "net.host.port": 8000,
             "http.target": "/t"}  # fmt: skip
    assert old_url(attrs) == "http://h.example:8000/t"
    assert old_url({"http.target": "/no-host"}) is None
    assert old_url({"http.scheme": "http", "http.host": "h"}) is None


# ------------------------------------------------------------------ utm


def test_utm_from_query() -> None:
    query = "utm_source=news&utm_medium=email&utm_campaign=spring%20sale&utm_term=shoes" \
        "&utm_content=hero&token=secret&utm_source=second&utm_other=x"
    assert utm_from_query(query) == {
        "$utm_source": "news",
        "$utm_medium": "email",
        "$utm_campaign": "spring sale",
        "$utm_term": "shoes",
        "$utm_content": "hero",
    }
    assert utm_from_query("") == {}
    assert utm_from_query(None) == {}
    assert utm_from_query("utm_source=&utm_medium") == {}
    assert utm_from_query("UTM_SOURCE=x") == {}


def test_utm_sources_in_either_convention() -> None:
    stable = {"url.query": "utm_source=a", "url.full": "https://x/?utm_source=b"}
    assert web_context([stable], server=True)["$utm_source"] == "a"
    assert web_context([{"url.full": "https://x/p?utm_medium=m#f"}], server=False) == {
        "$url": "https://x/p",
        "$utm_medium": "m",
    }
    old = {"http.scheme": "http", "http.host": "x", "http.target": "/?utm_campaign=c"}
    assert web_context([old], server=True) == {"$url": "http://x/", "$utm_campaign": "c"}
    assert web_context([old], server=False) == {}
    assert web_context([{"http.url": "http://x/?utm_term=t"}], server=True)["$utm_term"] == "t"


# ------------------------------------------------------------------ context


def test_old_names_only_on_server_spans() -> None:
    old = {"http.user_agent": "UA", "net.peer.ip": "10.0.0.1", "http.scheme": "http",
           "http.host": "h", "http.target": "/"}  # fmt: skip
    assert web_context([old], server=True) == {
        "$url": "http://h/",
        "$user_agent": "UA",
        "$ip": "10.0.0.1",
    }
    # A client span's net.peer.ip is the remote server, never the user.
    assert web_context([old], server=False) == {}
    assert web_context([{"http.client_ip": "1.2.3.4", "net.peer.ip": "5.6.7.8"}], True) == {
        "$ip": "1.2.3.4"
    }


def test_stable_names_win_and_record_before_span() -> None:
    record = {"user_agent.original": "own"}
    span = {
        "user_agent.original": "span",
        "http.user_agent": "old",
        "client.address": "9.9.9.9",
        "net.peer.ip": "1.1.1.1",
        "http.request.header.referer": ["https://r/", "x"],
    }
    assert web_context([record, span], server=True) == {
        "$user_agent": "own",
        "$ip": "9.9.9.9",
        "$referer": "https://r/",
    }


# ------------------------------------------------------------------ page views


@pytest.mark.parametrize(
    ("attrs", "kind", "expected"),
    [
        ({"http.request.method": "GET", "http.response.status_code": 200,
          "http.response.header.content-type": ["text/html; charset=utf-8"]}, "server", True),
        ({"http.method": "GET", "http.status_code": 204,
          "http.response.header.content_type": ("TEXT/HTML",)}, "server", True),
        ({"http.method": "GET", "http.status_code": "200",
          "http.response.header.content_type": "text/html"}, "server", True),
        ({"http.method": "GET", "http.status_code": 200,
          "http.response.header.content_type": ["text/html"]}, "client", False),
        ({"http.method": "POST", "http.status_code": 200,
          "http.response.header.content_type": ["text/html"]}, "server", False),
        ({"http.method": "GET", "http.status_code": 302,
          "http.response.header.content_type": ["text/html"]}, "server", False),
        ({"http.method": "GET", "http.status_code": 200,
          "http.response.header.content_type": ["application/json"]}, "server", False),
        ({"http.method": "GET", "http.status_code": 200}, "server", False),
        ({"http.method": "GET", "http.status_code": True,
          "http.response.header.content_type": ["text/html"]}, "server", False),
    ],
)  # fmt: skip
def test_is_page_view(attrs: dict[str, Any], kind: str, expected: bool) -> None:
    assert is_page_view(attrs, kind) is expected


# ------------------------------------------------------------------ exclusion


def test_default_style_patterns() -> None:
    match = ExcludeMatcher(parse_patterns("code.*, thread.*,network.*,net.*"))
    for key in ("code.file.path", "thread.id", "network.peer.port", "net.peer.ip"):
        assert match(key), key
    for key in ("codec", "network", "netflix.plan", "http.route", "Code.x"):
        assert not match(key), key


def test_patterns_parse_and_match() -> None:
    assert parse_patterns("") == ()
    assert parse_patterns(" , ,") == ()
    assert parse_patterns(None) == ()
    assert parse_patterns(["a.*", " b ", "a.*"]) == ("a.*", "b")
    assert not ExcludeMatcher(())
    assert not ExcludeMatcher(()).__call__("anything")
    match = ExcludeMatcher(["secret", "*.token", "card.?", "x[0-9]"])
    assert match("secret") and not match("secrets")
    assert match("auth.token") and match("a.b.token")
    assert match("card.4") and not match("card.42")
    assert match("x7") and not match("xa")
    with pytest.raises(TypeError):
        parse_patterns([1])  # type: ignore[list-item]


_NAMES = st.text(alphabet=string.ascii_letters + string.digits + "._-$*?", max_size=20)


@given(st.lists(_NAMES.filter(bool), max_size=5), _NAMES)
def test_matcher_agrees_with_fnmatchcase(patterns: list[str], key: str) -> None:
    assert ExcludeMatcher(patterns)(key) == any(fnmatch.fnmatchcase(key, p) for p in patterns)


# ------------------------------------------------------------------ properties

_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.binary(max_size=6), st.sampled_from(["http", "::1", "[::1]:80", "a:b:c", "/p?q#f", "@"]),
)  # fmt: skip
_ODD = _SCALAR | st.lists(_SCALAR, max_size=2) | st.tuples(_SCALAR)
_KEYS = ["url.full", "url.scheme", "server.address", "server.port", "url.path", "url.query",
         "http.url", "http.scheme", "http.host", "http.target", "net.host.name",
         "net.host.port", "user_agent.original", "http.user_agent", "client.address",
         "http.client_ip", "net.peer.ip", "http.request.header.referer"]  # fmt: skip


@example({"url.scheme": 0, "server.address": "?"}, False)
@example({"http.scheme": "http", "http.host": "a#b", "http.target": "/"}, True)
@given(st.dictionaries(st.sampled_from(_KEYS), _ODD, max_size=8), st.booleans())
def test_web_context_never_raises_and_gives_strings(attrs: dict[str, Any], server: bool) -> None:
    context = web_context([attrs], server)
    assert all(isinstance(v, str) for v in context.values())
    url = context.get("$url")
    if url is not None and "url.full" not in attrs and "http.url" not in attrs:
        assert "?" not in url and "#" not in url


@given(
    st.sampled_from(["http", "https"]),
    st.ip_addresses(v=6).map(str),
    st.integers(min_value=1, max_value=65535),
    st.text(alphabet=string.ascii_letters + "/-_", max_size=10),
)
def test_ipv6_hosts_in_brackets(scheme: str, host: str, port: int, path: str) -> None:
    url = url_from_parts(scheme, host, port, path)
    assert url is not None
    assert url.startswith(f"{scheme}://[{host}]")
    default = {"http": 80, "https": 443}[scheme]
    assert url.endswith(("/" + path.lstrip("/")) if path else "/")
    assert (f"]:{port}/" in url) is (port != default)


@given(st.dictionaries(st.sampled_from(["utm_source", "utm_medium", "x", "token"]),
                       st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)))  # fmt: skip
def test_utm_round_trip(params: dict[str, str]) -> None:
    from urllib.parse import urlencode

    expected = {f"${k}": v for k, v in params.items() if k.startswith("utm_")}
    assert utm_from_query(urlencode(params)) == expected


def test_text() -> None:
    assert text("a") == "a"
    assert text("") is None
    assert text(b"\xffx") == "\ufffdx"
    assert text([b"a", "b"]) == "a"
    assert text([]) is None
    assert text(7) == "7"
    assert text(True) is None
    assert text(1.5) is None
