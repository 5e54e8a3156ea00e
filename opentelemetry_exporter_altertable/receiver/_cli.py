"""``altertable-otel serve`` and ``altertable-otel query``: the local receiver's commands.

``serve`` runs the local Altertable-compatible receiver (with the OTLP routes when the
``otlp`` extra is installed); ``query`` runs SQL against it (over ``POST /query``) or against
its database file (``--db``). Each command is one ``add_<name>(subparsers)`` function that
registers its arguments and its ``run`` function; ``cli.main`` dispatches.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from types import FrameType
from typing import Any, TextIO

from .. import environment_variables as ev
from .._command import PROG, CommandError
from .._secrets import secret_argument
from ..version import __version__

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_PORT", "add_query", "add_serve"]

DEFAULT_PORT = 15001
DEFAULT_ENDPOINT = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_DB = "altertable-local.duckdb"
LOCAL_QUERY_USER = "local"
LOCAL_QUERY_PASSWORD = "local"
_USER_VARIABLES = ("ALTERTABLE_LAKEHOUSE_USERNAME", "ALTERTABLE_USERNAME")
_PASSWORD_VARIABLES = ("ALTERTABLE_LAKEHOUSE_PASSWORD", "ALTERTABLE_PASSWORD")
_TABLE_SAMPLE_ROWS = 1000
#: ``serve``'s keys when no ``--api-key`` is given (comma-separated), kept out of ``ps``.
KEYS_VARIABLE = "ALTERTABLE_RECEIVER_API_KEYS"



# -- serve ---------------------------------------------------------------------------------


def add_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a local Altertable-compatible receiver backed by DuckDB",
        description=(
            "Accept POST /track, /identify and /alias as the Altertable API does and store "
            "them in DuckDB as altertable.analytics.events and .identities. Point an exporter "
            f"at it with {ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT}={DEFAULT_ENDPOINT}."
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; other than loopback it needs --api-key (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        help="DuckDB file, created if missing; ':memory:' keeps nothing (default: ./%(default)s)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        type=secret_argument,
        help="accept only this key, or @FILE holding it: a flag is visible to every user in "
        f"ps (repeatable; default: ${KEYS_VARIABLE}, comma-separated, else any non-empty key)",
    )
    parser.add_argument(
        "--environment",
        action="append",
        dest="environments",
        metavar="NAME",
        help="an environment that exists (repeatable; default: production, staging, development)",
    )
    parser.add_argument(
        "--query-user",
        default=None,
        help=f"POST /query's Basic auth user (default: ${_USER_VARIABLES[0]}; "
        "neither set: any non-empty pair)",
    )
    parser.add_argument(
        "--query-password",
        default=None,
        type=secret_argument,
        help=f"POST /query's Basic auth password, or @FILE holding it "
        f"(default: ${_PASSWORD_VARIABLES[0]})",
    )
    parser.add_argument(
        "--query-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a query running longer is interrupted (default: %(default)s)",
    )
    from ..bridge._cli import add_otlp_port_arguments

    add_otlp_port_arguments(parser)
    parser.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:  # noqa: PLR0915  # the serve command's steps in order
    from .._http_server import is_loopback_host
    from . import DEFAULT_ENVIRONMENTS, LocalReceiver

    if not args.api_keys:
        from_environment = os.environ.get(KEYS_VARIABLE, "")
        args.api_keys = [key.strip() for key in from_environment.split(",") if key.strip()] or None

    if not args.api_keys and not is_loopback_host(args.host):
        raise CommandError(
            f"--host {args.host} lets other machines (and their users) write to this receiver; "
            "pass --api-key KEY so that only clients with the key are accepted, "
            "or listen on 127.0.0.1",
            status=2,
        )
    db_path = None if args.db == ":memory:" else os.path.abspath(args.db)
    query_user = args.query_user or os.environ.get(_USER_VARIABLES[0]) or None
    query_password = args.query_password or os.environ.get(_PASSWORD_VARIABLES[0]) or None
    if (query_user is None) != (query_password is None):
        raise CommandError("--query-user and --query-password go together")
    if not args.query_timeout > 0:
        raise CommandError("--query-timeout must be positive")
    receiver = LocalReceiver(
        db_path=db_path,
        api_keys=args.api_keys,
        environments=args.environments or DEFAULT_ENVIRONMENTS,
        host=args.host,
        port=args.port,
        request_log_level=logging.INFO,
        query_user=query_user,
        query_password=query_password,
        query_timeout=args.query_timeout,
    )
    try:
        receiver.start()
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            "(is another receiver running? pick another port with --port)"
        ) from None
    except Exception as exc:  # DuckDB refusing the file, typically a lock held elsewhere
        raise CommandError(f"cannot open {db_path}: {_first_line(exc)}") from None
    from ..bridge._cli import add_otlp_page_route, add_otlp_routes, open_otlp_ports, serve_bridge

    # One bridge behind the OTLP routes and the standard ports, stopped after both.
    api_key = (args.api_keys or ["local"])[0]
    bridge = serve_bridge(receiver, api_key)
    stop_otlp = None if bridge is None else add_otlp_routes(receiver, api_key, bridge)
    otlp_ports = open_otlp_ports(receiver, api_key, args, bridge)
    add_otlp_page_route(receiver, otlp_ports, stop_otlp is not None)

    stop = threading.Event()
    previous = _install_stop_handlers(stop)
    package_logger, handler, level = _log_to_stderr()
    try:
        keys = (
            "any non-empty key" if receiver.api_keys is None else f"{len(receiver.api_keys)} key(s)"
        )
        print(f"Altertable receiver listening on {receiver.bound_address}", flush=True)
        if receiver.bound_address != receiver.endpoint:
            print(f"  from here:    {receiver.endpoint}", flush=True)
        print(f"  database:     {db_path or 'in memory (nothing is kept)'}", flush=True)
        print(f"  environments: {', '.join(sorted(receiver.environments or ()))}", flush=True)
        print(f"  API keys:     {keys}", flush=True)
        queries = "any user and password" if query_user is None else "the configured pair"
        print(f"  /query auth:  {queries} (HTTP Basic, read-only)", flush=True)
        print(f"  page:         open {receiver.page_url} in a browser", flush=True)
        otlp = (
            f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint} (any SDK, /v1/traces and /v1/logs)"
            if stop_otlp is not None
            else "install the otlp extra to accept OTLP here too"
        )
        print(f"  OTLP:         {otlp}", flush=True)
        for line in otlp_ports.lines:
            print(line, flush=True)
        print(
            f"  export with:  {ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT}={receiver.endpoint}\n"
            f"  query with:   {_query_hint(receiver.endpoint, receiver.api_keys is not None)}\n"
            "  Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        otlp_ports.stop()  # finishes the OTLP calls in hand while the receiver still takes them
        receiver.stop()  # before restoring the handlers: a second Ctrl-C cannot cut it short
        if stop_otlp is not None:
            stop_otlp()
        _restore_handlers(previous)
        package_logger.removeHandler(handler)
        package_logger.setLevel(level)
    print("Receiver stopped.", flush=True)
    return 0


def _query_hint(endpoint: str, keyed: bool) -> str:
    """The ``query`` command that reaches this receiver (options only where not the default)."""
    options = "" if endpoint == DEFAULT_ENDPOINT else f" --endpoint {endpoint}"
    if keyed:
        options += " --api-key KEY"
    return f'{PROG} query{options} "SELECT * FROM altertable.analytics.events"'


def _log_to_stderr() -> tuple[logging.Logger, logging.Handler, int]:
    """Show the package's INFO lines (one per request) on stderr, for this command only."""
    package_logger = logging.getLogger("opentelemetry_exporter_altertable")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    return package_logger, handler, level


def _install_stop_handlers(stop: threading.Event) -> dict[int, Any]:
    """SIGINT and SIGTERM end ``serve`` cleanly (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


# -- query ---------------------------------------------------------------------------------


def add_query(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "query",
        help="run SQL against a local receiver or its database file",
        description=(
            "Run SQL (DuckDB dialect) against altertable.analytics.events / .identities, "
            "asking a running receiver's POST /query as Altertable's Lakehouse API is asked "
            "(HTTP Basic auth, NDJSON rows), or opening its database file with --db when none "
            "runs (DuckDB lets only one process open a file). Rows stream: a large result "
            "never sits whole in memory."
        ),
    )
    parser.add_argument(
        "sql", help='e.g. "SELECT event, count(*) FROM altertable.analytics.events GROUP BY ALL"'
    )
    parser.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help="a running receiver's URL (default: %(default)s)",
    )
    parser.add_argument(
        "--user",
        default=None,
        help=f"query user (default: ${_USER_VARIABLES[0]}, then ${_USER_VARIABLES[1]}, "
        f"then {LOCAL_QUERY_USER!r})",
    )
    parser.add_argument(
        "--password",
        default=None,
        type=secret_argument,
        help=f"query password, or @FILE holding it (default: ${_PASSWORD_VARIABLES[0]}, then "
        f"${_PASSWORD_VARIABLES[1]}, then a placeholder)",
    )
    parser.add_argument(
        "--db", metavar="PATH", help="open this DuckDB file instead of asking a receiver"
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"columns": [...], "rows": [...]}'
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--max-width",
        type=int,
        default=72,
        metavar="N",
        help="cut table cells longer than N characters; 0 keeps them whole (default: %(default)s)",
    )
    parser.set_defaults(run=_query)


def _query(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if args.db:
            columns, rows = stack.enter_context(_query_file(args.db, args.sql))
        else:
            credentials = _query_credentials(args.user, args.password)
            columns, rows = stack.enter_context(
                _query_endpoint(args.endpoint, credentials, args.sql, args.timeout)
            )
        if args.json:
            _print_json(columns, rows, sys.stdout)
        else:
            _print_table(columns, rows, sys.stdout, max(0, args.max_width))
    return 0


def _query_credentials(user: str | None, password: str | None) -> tuple[str, str]:
    """Flags, else the variables the Lakehouse tools read, else a placeholder pair."""

    def first(explicit: str | None, names: Sequence[str], default: str) -> str:
        if explicit:
            return explicit
        for name in names:
            value = os.environ.get(name, "").strip()
            if value:
                return value
        return default

    return (
        first(user, _USER_VARIABLES, LOCAL_QUERY_USER),
        first(password, _PASSWORD_VARIABLES, LOCAL_QUERY_PASSWORD),
    )


@contextlib.contextmanager
def _query_endpoint(
    endpoint: str, credentials: tuple[str, str], sql: str, timeout: float
) -> Iterator[tuple[list[str], Iterator[list[Any]]]]:
    """POST /query as the Lakehouse client does; the rows are read from the stream lazily."""
    import requests

    url = endpoint.rstrip("/") + "/query"
    try:
        response = requests.post(
            url,
            json={"statement": sql},
            auth=credentials,
            headers={"Accept": "application/x-ndjson", "User-Agent": f"{PROG}/{__version__}"},
            timeout=timeout,
            stream=True,
        )
    except requests.ConnectionError:
        raise CommandError(
            f"no receiver answers at {endpoint}; start one with `{PROG} serve`, "
            "or read a database file with --db PATH"
        ) from None
    except requests.RequestException as exc:
        raise CommandError(f"request to {url} failed: {exc}") from None
    with response:
        _check_query_answer(endpoint, url, response)
        lines = (json.loads(line) for line in response.iter_lines() if line.strip())
        try:
            next(lines)  # metadata
            columns = [c["name"] if isinstance(c, dict) else str(c) for c in next(lines, [])]
        except (ValueError, TypeError, KeyError):
            raise CommandError(f"unexpected answer from {url}: not Lakehouse NDJSON") from None

        def rows() -> Iterator[list[Any]]:
            try:
                for item in lines:
                    if isinstance(item, dict) and "error" in item:
                        raise CommandError(f"query failed: {item['error']}")
                    yield item
            except requests.RequestException as exc:
                raise CommandError(f"the answer from {url} broke off: {exc}") from None

        yield columns, rows()


def _check_query_answer(endpoint: str, url: str, response: Any) -> None:
    status = response.status_code
    if status == 200:
        return
    if status == 401:
        raise CommandError(
            f"the receiver at {endpoint} refused the query credentials; pass the ones it was "
            f"started with (serve --query-user/--query-password) as --user/--password or "
            f"${_USER_VARIABLES[0]}/${_PASSWORD_VARIABLES[0]}"
        )
    if status in (404, 405):
        raise CommandError(
            f"{endpoint} has no POST /query: is it a receiver started with `{PROG} serve`?"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        raise CommandError(f"query failed: {body['error']}")
    raise CommandError(f"unexpected answer from {url}: HTTP {status}")


@contextlib.contextmanager
def _query_file(path: str, sql: str) -> Iterator[tuple[list[str], Iterator[list[Any]]]]:
    from ._store import import_duckdb, sql_string, to_jsonable

    if not os.path.exists(path):
        raise CommandError(f"no database file at {path}")
    try:
        duckdb = import_duckdb()
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET TimeZone = 'UTC'")
        try:
            conn.execute(f"ATTACH {sql_string(path)} AS altertable (READ_ONLY)")
        except Exception as exc:
            message = _first_line(exc)
            if "lock" in message.lower():
                raise CommandError(
                    f"{path} is in use by a running receiver; ask it instead: "
                    f'{PROG} query "..." (without --db)'
                ) from None
            raise CommandError(f"cannot open {path}: {message}") from None
        try:
            cursor = conn.execute(sql)
        except Exception as exc:
            raise CommandError(f"query failed: {exc}") from None
        columns = [d[0] for d in cursor.description or ()]

        def rows() -> Iterator[list[Any]]:
            if not columns:
                return
            while batch := cursor.fetchmany(1024):
                yield from (to_jsonable(list(row)) for row in batch)

        yield columns, rows()
    finally:
        conn.close()


def _print_json(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO) -> None:
    """``{"columns": [...], "rows": [...]}``, written row by row."""
    out.write('{"columns": ' + json.dumps(list(columns), ensure_ascii=False) + ', "rows": [')
    for index, row in enumerate(rows):
        out.write((", " if index else "") + json.dumps(row, ensure_ascii=False))
    out.write("]}\n")


def _cell(value: Any, max_width: int = 0) -> str:
    if value is None:
        return "NULL"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    if max_width and len(text) > max_width:
        return text[: max_width - 1] + "…"
    return text


def _print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO, max_width: int = 0
) -> None:
    """Aligned plain text: numbers to the right, everything else to the left.

    Widths come from the first 1,000 rows, so a long result prints as it streams. Cells
    longer than ``max_width`` are cut with an ellipsis (``--json`` never cuts).
    """
    if not columns:
        print("OK", file=out)
        return
    iterator = iter(rows)
    head = list(itertools.islice(iterator, _TABLE_SAMPLE_ROWS))
    cells = [[_cell(v, max_width) for v in row] for row in head]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [
        bool(head) and all(r[i] is None or _is_number(r[i]) for r in head)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(list(columns)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row_cells in cells:
        print(line(row_cells), file=out)
    count = len(cells)
    for row in iterator:
        print(line([_cell(v, max_width) for v in row]), file=out)
        count += 1
    print(f"({count} row{'' if count == 1 else 's'})", file=out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
