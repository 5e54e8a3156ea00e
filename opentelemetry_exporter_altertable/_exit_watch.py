"""The interpreter-exit watcher: a callback that runs before the SDK's own exit shutdown.

One job: at interpreter exit, give an exporter the chance to bound what is left (stop backoff
waits, cut a request stuck on a hung server short) before the SDK joins its workers.

The SDK's providers register ``atexit`` handlers when they are built, and ``atexit`` runs the
last registered first; an exporter is often built before its provider, so its own ``atexit``
handler would run too late. ``threading._register_atexit`` (Python 3.9 to 3.13 and later) runs
its callbacks when the main thread ends, before any ``atexit`` handler: the watcher registers
the ``atexit`` handler only then, so it is the last registered and runs first, after the
program's non-daemon threads have finished (a program whose main thread ends early keeps
exporting normally). Where that hook is missing, ``atexit`` alone is used. Only a weak
reference is held, so the watched object can still be collected.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Protocol

__all__ = ["ExitAware", "watch_interpreter_exit"]


class ExitAware(Protocol):
    def interpreter_exiting(self) -> None:
        """The interpreter is exiting: end what is left within a bound."""


def watch_interpreter_exit(target: ExitAware) -> None:
    """Call ``target.interpreter_exiting()`` when the interpreter exits, before the SDK's
    own exit shutdown runs (see the module docstring)."""
    ref = weakref.ref(target)

    def at_exit() -> None:
        watched = ref()
        if watched is not None:
            watched.interpreter_exiting()

    def when_main_thread_ends() -> None:
        if ref() is not None:
            atexit.register(at_exit)

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(when_main_thread_ends)
            return
        except RuntimeError:  # already shutting down
            pass
    atexit.register(at_exit)
