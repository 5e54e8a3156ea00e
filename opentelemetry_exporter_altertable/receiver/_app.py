"""The receiver's application: one parsed request in, one response out, no sockets.

Its one job is deciding answers: routing, auth, the API's order of checks, applying items to
the store. The HTTP server (``_server``) only reads bodies and writes these answers, so every
rule here can be tested without a socket, and new endpoints are one entry in a route table:
``app.route("GET", "/", handler)`` or ``app.route("POST", "/query", handler)`` replaces or
adds the handler of a path (the built-in ``/query`` is the plain JSON one).

Before any route, :meth:`Application.screen` refuses (``403``) requests a web page could have
sent: an ``Origin`` other than the receiver's own (cross-site requests, including the
``text/plain`` "simple" POSTs a browser sends without asking), or a ``Host`` that is neither a
loopback name nor the receiver's own host (DNS rebinding: a page whose name resolves to
127.0.0.1 still sends its own name as ``Host``). Tools that send no ``Origin`` are unaffected.

Order of checks on ingestion, as the API does it: API key (``401``, empty body; checked before
the body is read, and on the OTLP routes too when the receiver has keys), then the body
as a whole (``400`` malformed JSON, ``422`` schema, ``400 unknown-built-in-property``: nothing
stored), then item by item, in order, the environment (``400 environment-not-found``). Items
before the first unknown environment are stored before the error is answered, like the official
mock, so a client that retries such a batch stores its first items twice (at-least-once
delivery). """

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

from .._http_server import OTHER_ROUTE, host_name
from ._faults import Fault, FaultInjector
from ._store import Store, StoreError, new_uuid7, to_jsonable
from ._validation import (
    AliasItem,
    ApiError,
    IdentifyItem,
    TrackItem,
    decode_body,
    parse_alias,
    parse_identify,
    parse_track,
)

__all__ = [
    "DEFAULT_ENVIRONMENTS",
    "DEFAULT_MAX_BODY_BYTES",
    "INGEST_PATHS",
    "OTLP_PATHS",
    "Application",
    "Method",
    "Request",
    "Response",
    "Route",
    "error_response",
    "json_response",
]

logger = logging.getLogger(__name__)

DEFAULT_ENVIRONMENTS = ("production", "staging", "development")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
INGEST_PATHS = ("/track", "/identify", "/alias")
#: OTLP ingestion (served when the ``otlp`` extra is installed): keyed like the rest when the
#: receiver has keys; open otherwise, so an SDK left at its defaults can send here.
OTLP_PATHS = ("/v1/traces", "/v1/logs")
_FAILED_CODES = {
    "/track": "insert-failed",
    "/identify": "identify-failed",
    "/alias": "alias-failed",
}
_ItemT = TypeVar("_ItemT", TrackItem, IdentifyItem, AliasItem)
Method = Literal["GET", "POST"]
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class Request:
    """What the server read: ``path`` without query or trailing slash, headers in lower case."""

    method: Method
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, list[str]]
    body: bytes = b""
    watch_disconnect: Callable[[Callable[[], None]], AbstractContextManager[Any]] = (
        lambda cancel: nullcontext()
    )
    """``with request.watch_disconnect(cancel):`` calls ``cancel`` if the client goes away."""


@dataclass(frozen=True)
class Response:
    """One answer. ``drop`` closes the connection without answering (an injected fault)."""

    status: int
    body: bytes = b""
    items: int | None = None
    close: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"
    drop: bool = False
    stream: Generator[bytes, None, None] | None = None
    """Sent chunked after ``body``; closed (``.close()``) whatever happens, so it can clean up."""


Route = Callable[[Request], Response]


def json_response(status: int, payload: Any, items: int | None = None) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"), items)


def error_response(error: ApiError, items: int | None = None, close: bool = False) -> Response:
    response = json_response(error.status, error.body(), items)
    return Response(response.status, response.body, items, close=close)


def _fault_response(fault: Fault) -> Response:
    error = ApiError(fault.status, fault.error_code, "fault injected by the local receiver")
    return Response(fault.status, error_response(error).body, headers=fault.headers)


class Application:
    """Routes a :class:`Request` to its handler and answers as the Altertable API does."""

    def __init__(
        self,
        store: Store,
        api_keys: tuple[str, ...] | None,
        environments: frozenset[str] | None,
        max_body_bytes: int,
        faults: FaultInjector | None = None,
        *,
        host: str = "127.0.0.1",
    ) -> None:
        self.store = store
        self.host = host.strip("[]").lower()
        self._api_keys = None if api_keys is None else tuple(k.encode("utf-8") for k in api_keys)
        self.environments = environments
        self.max_body_bytes = max_body_bytes
        self.faults = faults
        self._routes: dict[tuple[Method, str], Route] = {("GET", "/health"): self._health}
        for path in INGEST_PATHS:
            self._routes[("POST", path)] = self._ingest
        self._routes[("POST", "/query")] = self._query

    def route(self, method: Method, path: str, handler: Route) -> None:
        """Serve ``method path`` with ``handler`` (replacing the one there, if any)."""
        self._routes[(method, path)] = handler

    def screen(self, headers: Mapping[str, str]) -> Response | None:
        """``403`` for a request from a web page of another origin or via a foreign name.

        ``headers`` is keyed in lower case. Called by the server before it reads a body.
        """
        host = headers.get("host")
        if host is not None and not self._own_host(host_name(host)):
            error = ApiError(403, "forbidden-host", "Host is not this receiver's address")
            return error_response(error)
        origin = headers.get("origin")
        if origin is not None and (host is None or origin.lower() != f"http://{host.lower()}"):
            error = ApiError(403, "forbidden-origin", "requests from other web origins are refused")
            return error_response(error)
        return None

    def _own_host(self, name: str) -> bool:
        if name in ("localhost", self.host):
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        # Bound to every interface: any address of ours may be named. A name that only
        # resolves here (the rebinding attack) is still refused.
        return address.is_loopback or self.host in _WILDCARD_HOSTS

    def refuse_unkeyed(
        self,
        method: Method,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, list[str]],
    ) -> Response | None:
        """``401`` for an ingestion POST without an accepted key (``None``: go on).

        Every ingestion route is keyed: ``/track``, ``/identify``, ``/alias`` always (any
        non-empty key when the receiver has none), the OTLP routes whenever the receiver
        has keys. Called by the server before it reads a body (unless faults are injected:
        they come first, as a front end's outage would), and again by :meth:`handle`.
        """
        if method != "POST":
            return None
        keyed = path in INGEST_PATHS or (path in OTLP_PATHS and self._api_keys is not None)
        if keyed and not self.authorized(headers, query):
            return Response(401)
        return None

    def route_of(self, path: str) -> str:
        """``path`` when some method serves it, else ``(other)``: what answers are counted by,
        so a client sending endless distinct paths cannot grow the counters."""
        if any(route_path == path for _, route_path in self._routes):
            return path
        return OTHER_ROUTE

    def handle(self, request: Request) -> Response:  # noqa: PLR0911  # one return per check, in the API's order
        """The answer to ``request``; an unexpected error is a ``500``, never an exception."""
        screened = self.screen(request.headers)
        if screened is not None:
            return screened
        faults = self.faults
        if faults is not None and request.method == "POST" and request.path in INGEST_PATHS:
            fault = faults.decide(request.path)  # a front-end outage precedes the API's checks
            if fault is not None:
                return Response(0, drop=True) if fault.drop else _fault_response(fault)
        unkeyed = self.refuse_unkeyed(request.method, request.path, request.headers, request.query)
        if unkeyed is not None:
            return unkeyed
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return self._unrouted(request)
        try:
            return handler(request)
        except ApiError as refusal:
            return error_response(refusal)
        except Exception:
            logger.exception("internal error while handling %s", request.path)
            return error_response(
                ApiError(500, "internal-error", "internal error in the local receiver")
            )

    def _unrouted(self, request: Request) -> Response:
        allowed = sorted(method for method, path in self._routes if path == request.path)
        if not allowed:
            error = ApiError(404, "not-found", f"no such endpoint: {request.path}")
            return error_response(error)
        methods = ", ".join(allowed)
        error = ApiError(405, "method-not-allowed", f"{request.path} only accepts {methods}")
        response = error_response(error)
        return Response(response.status, response.body, headers=(("Allow", methods),))

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, list[str]]) -> bool:
        """``X-API-Key``, else ``Authorization: Bearer``, else ``?apiKey=``, as the API reads them.

        ``headers`` is keyed in lower case.
        """
        key: str | None
        if "x-api-key" in headers:
            key = headers["x-api-key"].strip()
        elif "authorization" in headers:
            scheme, _, token = headers["authorization"].strip().partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        else:
            key = next(iter(query.get("apiKey", ())), None)
        if not key:
            return False
        if self._api_keys is None:
            return True
        candidate = key.encode("utf-8", "surrogateescape")
        return any(hmac.compare_digest(candidate, allowed) for allowed in self._api_keys)

    def decode(self, request: Request) -> Any:
        """The request's JSON body (``Content-Encoding`` undone, size-limited), or ``ApiError``."""
        return decode_body(
            request.body, request.headers.get("content-encoding"), self.max_body_bytes
        )

    # -- routes -----------------------------------------------------------------------------

    def _health(self, request: Request) -> Response:
        return json_response(200, {"ok": True})

    def _ingest(self, request: Request) -> Response:
        if not self.authorized(request.headers, request.query):
            return Response(401)
        doc = self.decode(request)
        now = datetime.now(timezone.utc)
        path = request.path
        if path == "/track":
            return self._apply(path, parse_track(doc, now), self.store.insert_events)
        if path == "/identify":
            return self._apply(path, parse_identify(doc, now), self.store.apply_identify)
        return self._apply(path, parse_alias(doc, now), self.store.apply_alias)

    def _apply(
        self, path: str, items: list[_ItemT], store: Callable[[Sequence[_ItemT]], None]
    ) -> Response:
        """Store the items up to the first unknown environment, then answer for all of them."""
        allowed = self.environments
        accepted = len(items)
        if allowed is not None:
            unknown = (i for i, item in enumerate(items) if item.environment not in allowed)
            accepted = next(unknown, accepted)
        try:
            store(items[:accepted])
        except StoreError as exc:
            logger.warning("%s: %s", path, exc)
            error = ApiError(400, _FAILED_CODES[path], str(exc))
            return error_response(error, items=exc.stored)
        if accepted < len(items):
            environment = items[accepted].environment
            known = ", ".join(sorted(allowed or ()))
            error = ApiError(
                400,
                "environment-not-found",
                f"environment {environment!r} does not exist (known: {known})",
            )
            return error_response(error, items=accepted)
        body = {"ok": True, "task_id": new_uuid7(), "error_code": None}
        return json_response(200, body, items=accepted)

    def _query(self, request: Request) -> Response:
        if not self.authorized(request.headers, request.query):
            return Response(401)
        doc = self.decode(request)
        statement = doc.get("statement") if isinstance(doc, dict) else None
        if not isinstance(statement, str) or not statement.strip():
            raise ApiError(422, "invalid-payload", 'query: expected {"statement": "SQL"}')
        try:
            columns, rows = self.store.query(statement)
        except Exception as exc:  # any DuckDB error is the caller's SQL
            raise ApiError(400, "query-failed", str(exc)) from None
        return json_response(200, {"columns": columns, "rows": to_jsonable(rows)}, items=len(rows))
