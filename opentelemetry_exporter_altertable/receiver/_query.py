"""``POST /query`` as Altertable's Lakehouse API answers it, and safe for untrusted SQL.

Its one job is running one read-only statement and streaming the answer:

* Auth is HTTP Basic: the configured ``(user, password)``, else any non-empty pair. Ingestion
  keys (``X-API-Key``, ``Bearer``, ``?apiKey=``, or a Basic pair carrying one) are refused with
  ``401``, as by the real service.
* Only one statement, and only a query (SELECT, WITH, VALUES, EXPLAIN, DESCRIBE, SHOW,
  SUMMARIZE, which DuckDB's own parser reports as ``SELECT`` or ``EXPLAIN``): anything else is
  ``403``. The kind check is the first of four walls; the others are DuckDB's: the statement
  runs in a ``READ ONLY`` transaction (so ``EXPLAIN ANALYZE DELETE`` cannot write), on its own
  connection of a database whose external access is off and configuration locked (see
  ``_store``: no file read or written, no ``ATTACH``/``INSTALL``/``LOAD``/``SET``).
* A time limit (``query_timeout``) interrupts the connection; so does a client that goes away
  (the server's disconnect watch, or a failed write). The connection is not the store's, so a
  long query never holds up ``/track``.
* The answer is ``application/x-ndjson``: metadata, then the columns ``[{"name", "type"}]``,
  then one JSON array per row, fetched and sent in chunks so no result is ever whole in memory.
  A failure before the first row is ``400 {"error": message}``; one after (the time limit while
  streaming) ends the stream with an ``{"error": message}`` line, as the Lakehouse client reads.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._app import Request, Response, json_response
from ._store import Store, to_jsonable
from ._validation import ApiError

__all__ = [
    "DEFAULT_QUERY_TIMEOUT",
    "QueryEndpoint",
    "QueryRefused",
    "QueryRequest",
    "SafeQueries",
    "check_statement",
    "parse_query_request",
]

logger = logging.getLogger(__name__)

DEFAULT_QUERY_TIMEOUT = 30.0
NDJSON = "application/x-ndjson"
_ALLOWED_KINDS = frozenset({"SELECT", "EXPLAIN"})
_EXPLAIN_PREFIX = re.compile(r"(?is)^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?")
_FETCH_ROWS = 1024
_CHUNK_BYTES = 64 * 1024


class QueryRefused(Exception):
    """The statement is not one read-only query (answered ``403``)."""


class QueryFailed(Exception):
    """DuckDB refused or aborted the query (answered ``400 {"error": ...}``)."""


@dataclass(frozen=True)
class QueryRequest:
    """The Lakehouse ``QueryRequest`` fields the receiver uses; the others are accepted."""

    statement: str
    limit: int | None = None
    offset: int = 0
    session_id: str | None = None
    query_id: str | None = None


def parse_query_request(doc: Any) -> QueryRequest:
    """``{"statement": SQL, "limit": n, "offset": n, ...}``; ``ApiError(400)`` otherwise."""
    if not isinstance(doc, dict):
        raise _bad('expected a JSON object {"statement": "SQL", ...}')
    statement = doc.get("statement")
    if not isinstance(statement, str) or not statement.strip():
        raise _bad('"statement" must be a non-empty string')
    numbers: dict[str, int | None] = {}
    for name in ("limit", "offset"):
        value = doc.get(name)
        if value is not None and (type(value) is not int or value < 0):
            raise _bad(f'"{name}" must be a non-negative integer')
        numbers[name] = value
    texts: dict[str, str | None] = {}
    for name in ("session_id", "query_id"):
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise _bad(f'"{name}" must be a string')
        texts[name] = value
    return QueryRequest(
        statement,
        numbers["limit"],
        numbers["offset"] or 0,
        texts["session_id"],
        texts["query_id"],
    )


def check_statement(conn: Any, sql: str) -> None:
    """Refuse (``QueryRefused``) anything but exactly one query, by DuckDB's own parser.

    A syntax error is left for the execution to report (``400``), as any query failure.
    """
    try:
        statements = conn.extract_statements(sql)
    except Exception:
        return
    if len(statements) != 1:
        raise QueryRefused(f"one statement per query, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in _ALLOWED_KINDS:
        raise QueryRefused(f"{kind} statements are refused: /query only reads")
    if kind == "EXPLAIN":
        inner = _EXPLAIN_PREFIX.sub("", sql, count=1)
        with contextlib.suppress(QueryRefused):
            check_statement(conn, inner)
            return
        raise QueryRefused("EXPLAIN of a statement that is not a query is refused")


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid-payload", message)


class SafeQueries:
    """Runs untrusted read-only SQL on its own connection with a time limit."""

    def __init__(self, store: Store, timeout: float = DEFAULT_QUERY_TIMEOUT) -> None:
        self.store = store
        self.timeout = timeout

    def open(
        self, request: QueryRequest, watch: Callable[[Callable[[], None]], Any] | None = None
    ) -> RunningQuery:
        """Check and start the statement; its rows are read from the returned object.

        ``watch(cancel)`` is a context manager during which a vanished client calls ``cancel``.
        """
        cursor = self.store.reader()
        running = RunningQuery(self.store, cursor, self.timeout)
        try:
            check_statement(cursor, request.statement)
            with watch(running.cancel) if watch is not None else contextlib.nullcontext():
                running.execute(request.statement)
        except BaseException:
            running.close()
            raise
        return running


class RunningQuery:
    """One query's connection, transaction and timer; ``close()`` gives them all back."""

    def __init__(self, store: Store, cursor: Any, timeout: float) -> None:
        self._store = store
        self._cursor = cursor
        self._timeout = timeout
        self._timer: threading.Timer | None = None
        self._timed_out = threading.Event()
        self._cancelled = threading.Event()
        self._statement_done = threading.Event()
        self._closed = False
        self.columns: list[dict[str, str]] = []

    def execute(self, sql: str) -> None:
        timer = threading.Timer(self._timeout, self._expire)
        timer.daemon = True
        self._timer = timer
        timer.start()
        try:
            self._cursor.execute("BEGIN TRANSACTION READ ONLY")
            self._cursor.execute(sql)
        except Exception as exc:
            raise QueryFailed(self._reason(exc)) from None
        finally:
            self._statement_done.set()
        description = self._cursor.description or []
        self.columns = [{"name": d[0], "type": str(d[1])} for d in description]

    def rows(self) -> Iterator[list[Any]]:
        """The rows, fetched a batch at a time; ``QueryFailed`` if interrupted on the way."""
        if not self.columns:
            return
        while True:
            try:
                batch = self._cursor.fetchmany(_FETCH_ROWS)
            except Exception as exc:
                raise QueryFailed(self._reason(exc)) from None
            if not batch:
                return
            for row in batch:
                yield to_jsonable(list(row))

    def cancel(self) -> None:
        """Abort the statement (the client went away).

        An interrupt that lands before DuckDB has started the statement (while ``BEGIN`` runs,
        or between the two) is lost and the statement would run to its time limit, so the
        interrupt is repeated until the statement has ended.
        """
        self._cancelled.set()
        while True:
            with contextlib.suppress(Exception):
                self._cursor.interrupt()
            if self._statement_done.wait(0.05):
                return

    def _expire(self) -> None:
        self._timed_out.set()
        with contextlib.suppress(Exception):
            self._cursor.interrupt()

    def _reason(self, exc: BaseException) -> str:
        if self._timed_out.is_set():
            return f"query exceeded the time limit of {self._timeout:g} s (--query-timeout)"
        if self._cancelled.is_set():
            return "query cancelled: the client went away"
        return str(exc).strip() or type(exc).__name__

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(Exception):
            self._cursor.execute("ROLLBACK")
        self._store.release_reader(self._cursor)


def ndjson_stream(
    request: QueryRequest, running: RunningQuery, rows_limit: int | None
) -> Generator[bytes, None, None]:
    """The Lakehouse answer, in chunks of about 64 KiB; closing it ends the query."""
    try:
        metadata = {
            "statement": request.statement,
            "rows_limit": rows_limit,
            "rows_offset": request.offset,
            "query_id": request.query_id or str(uuid.uuid4()),
            "session_id": request.session_id or str(uuid.uuid4()),
        }
        buffer = bytearray(_line(metadata) + _line(running.columns))
        skip, left = request.offset, rows_limit
        try:
            for row in running.rows():
                if skip:
                    skip -= 1
                    continue
                if left is not None:
                    if left == 0:
                        break
                    left -= 1
                buffer += _line(row)
                if len(buffer) >= _CHUNK_BYTES:
                    yield bytes(buffer)
                    buffer.clear()
        except QueryFailed as exc:
            buffer += _line({"error": str(exc)})
        if buffer:
            yield bytes(buffer)
    finally:
        running.close()


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def lakehouse_error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


class QueryEndpoint:
    """The ``POST /query`` route: Basic auth, then a streamed read-only query."""

    def __init__(
        self,
        queries: SafeQueries,
        credentials: tuple[str, str] | None,
        ingestion_keys: Sequence[str] | None,
        decode: Callable[[Request], Any],
    ) -> None:
        self.queries = queries
        self._credentials = credentials
        self._ingestion_keys = tuple(ingestion_keys or ())
        self._decode = decode

    def authorized(self, headers: Any) -> bool:
        """Basic auth with the configured pair, else any non-empty pair; never an ingestion key."""
        scheme, _, token = str(headers.get("authorization", "")).strip().partition(" ")
        if scheme.lower() != "basic" or "x-api-key" in headers:
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep or not user or not password:
            return False
        if any(_same(password, key) or _same(user, key) for key in self._ingestion_keys):
            return False
        if self._credentials is None:
            return not password.startswith("pk_")
        expected_user, expected_password = self._credentials
        return _same(user, expected_user) & _same(password, expected_password)

    def __call__(self, request: Request) -> Response:
        if not self.authorized(request.headers):
            return Response(401)
        try:
            parsed = parse_query_request(self._decode(request))
        except ApiError as error:
            return lakehouse_error(400 if error.status == 422 else error.status, error.message)
        try:
            running = self.queries.open(parsed, request.watch_disconnect)
        except QueryRefused as exc:
            return lakehouse_error(403, str(exc))
        except QueryFailed as exc:
            return lakehouse_error(400, str(exc))
        stream = ndjson_stream(parsed, running, parsed.limit)
        return Response(200, content_type=NDJSON, stream=stream)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
