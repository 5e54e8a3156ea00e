"""Saying a problem once: the first time at its level, after that quietly or not at all.

One job: keep the log readable when the same thing goes wrong on every export. Each problem
has a key; the first time a key comes up its message is logged at ``level``, later only at
``repeat`` (or not at all when ``repeat`` is ``None``). The keys remembered are bounded: once
``max_keys`` are held the set starts over, so data that makes a new key each time (hostile
event names, exception types) cannot grow memory; it can only make a problem said again.
Thread-safe. After a fork the child keeps what the parent said, with a lock of its own.
"""

from __future__ import annotations

import logging
import threading

from ._text import LIMIT, clip

__all__ = ["WarnOnce"]


class WarnOnce:
    """Logs each key's message once to ``logger`` (see the module docstring)."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        repeat: int | None = None,
        max_keys: int = 1024,
    ) -> None:
        self._logger = logger
        self._level = level
        self._repeat = repeat
        self._max = max_keys
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _first(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) >= self._max:
                self._seen.clear()
            self._seen.add(key)
            return True

    def __call__(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log ``message % args`` at ``level`` the first time ``key`` comes up."""
        if self._first(key):
            self._logger.log(self._level, message, *args, exc_info=exc_info, stacklevel=2)
        elif self._repeat is not None:
            self._logger.log(self._repeat, message, *args, stacklevel=2)

    def on_warning(self, key: str, message: str) -> None:
        """The hook of the mapping and ``before_send``: a key and a finished message, both
        built from data, so both are cut first (a hostile value must not grow memory)."""
        self(clip(key, LIMIT), "%s", clip(message, 3 * LIMIT))

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
