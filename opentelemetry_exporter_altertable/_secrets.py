"""Keys and tokens given to the commands without showing them to every user of the machine.

A flag's value is readable by anyone who can list processes (``ps``, ``/proc/PID/cmdline``),
so every flag that takes a secret also takes ``@PATH``: the secret is then the first line of
that file (kept readable by its owner only), and each such flag falls back to an environment
variable (the process's environment is private to its user). The value never reaches a log.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["secret_argument"]


def secret_argument(value: str) -> str:
    """An ``argparse`` type: ``@PATH`` reads the secret from a file, anything else is itself.

    ``@@text`` stands for the literal ``@text``. An unreadable or empty file is refused with
    a message that names the file, never its content.
    """
    if not value.startswith("@"):
        return value
    if value.startswith("@@"):
        return value[1:]
    path = Path(value[1:]).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read the secret in {path}: {exc}") from None
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise argparse.ArgumentTypeError(f"{path} holds no secret on its first line")
    return secret
