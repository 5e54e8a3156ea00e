"""The ``altertable-otel`` command.

``serve`` and ``query`` (the local receiver's, in ``receiver._cli``), ``bridge`` (in
``bridge._cli``), ``replay`` (in ``_replay``) and ``check``, which sends one test event with
the exporters' settings and explains the answer. Each subcommand is one
``add_<name>(subparsers)`` function that registers its arguments and its ``run`` function;
``main`` only dispatches. Subcommands' modules are imported when the parser is built, not
when this module is: and the receiver package loads its server, store and query engine only
when ``serve`` or ``query`` runs, not for every command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import environment_variables as ev
from ._command import PROG, CommandError
from .version import __version__

__all__ = ["PROG", "CommandError", "build_parser", "main"]

# -- check ---------------------------------------------------------------------------------


def _add_check(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="send one test event with your exporter settings and explain the answer",
        description=(
            f"Uses the exporters' settings ({ev.OTEL_EXPORTER_ALTERTABLE_API_KEY}, _ENDPOINT, "
            "_ENVIRONMENT, _TIMEOUT...; options override them), sends one event with "
            "sync=true and says what the answer means: OK, wrong key, unknown environment, "
            "unreachable endpoint, TLS error."
        ),
    )
    parser.add_argument("--endpoint", help="API base URL (default: the exporters' setting)")
    parser.add_argument("--api-key", help="ingestion key (default: the exporters' setting)")
    parser.add_argument("--environment", help="environment (default: the exporters' setting)")
    parser.add_argument("--timeout", type=float, help="seconds (default: the exporters' setting)")
    parser.set_defaults(run=_check)


def _check(args: argparse.Namespace) -> int:
    import time

    from ._check import run_check
    from ._config import resolve_config

    try:
        config = resolve_config(
            api_key=args.api_key,
            endpoint=args.endpoint,
            environment=args.environment,
            timeout=args.timeout,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    result = run_check(config, time.time_ns())
    out = sys.stdout if result.ok else sys.stderr
    print(("OK  " if result.ok else "FAIL ") + result.summary, file=out)
    if result.detail:
        print(f"     {result.detail}", file=out)
    return 0 if result.ok else 1


# -- bridge --------------------------------------------------------------------------------


def _add_bridge(subparsers: Any) -> None:
    from .bridge._cli import add_parser, run_bridge

    add_parser(subparsers, lambda args: run_bridge(args, CommandError))


# -- replay --------------------------------------------------------------------------------


def _add_replay(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="deliver what ended processes left in a spool directory (journals and spool)",
        description=(
            "Recovers the journals of processes that are gone, re-sends the spool with the "
            f"exporters' settings ({ev.OTEL_EXPORTER_ALTERTABLE_API_KEY}, _ENDPOINT, ...), "
            "prints what it delivered and what remains; exits 1 when anything remains."
        ),
    )
    parser.add_argument(
        "--spool-dir", help=f"directory (default: {ev.OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR})"
    )
    parser.set_defaults(run=lambda args: _replay(args.spool_dir))


def _replay(spool_dir: str | None) -> int:
    from ._replay import run_replay

    return run_replay(spool_dir, sys.stdout, sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools for the OpenTelemetry exporter for Altertable product analytics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    from .receiver._cli import add_query, add_serve  # here, not at import: see the module doc

    for add in (add_serve, add_query, _add_check, _add_bridge, _add_replay):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(run(args))
    except CommandError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
