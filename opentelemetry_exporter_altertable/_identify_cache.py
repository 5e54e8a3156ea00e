"""The identifies already accepted, so the same one is not sent again.

One job: an application that identifies its user on every request would otherwise send the
same identify on every export. A payload is remembered by its key (:func:`identify_key`: its
environment, ids and traits, whatever a ``before_send`` hook put in them) once the API accepted
it, and an identical one is dropped before sending. Bounded (least recently used first out)
and thread-safe; after a fork the child keeps what the parent remembered.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from ._mapping import Payload, identify_key

__all__ = ["IdentifyCache"]


class IdentifyCache:
    """Remembers identifies already accepted (LRU-bounded to ``max_entries``)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, None] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def unseen(self, payloads: list[Payload]) -> tuple[list[Payload], list[str]]:
        """The payloads not accepted yet, and their keys: hand those to :meth:`remember`
        once the API accepted them, so each payload's key is computed once."""
        keyed = [(identify_key(p), p) for p in payloads]
        with self._lock:
            entries = self._entries
            fresh = [(key, p) for key, p in keyed if key not in entries]
        return [p for _, p in fresh], [key for key, _ in fresh]

    def remember(self, keys: Iterable[str]) -> None:
        """Remember identifies the API accepted, by key (see :meth:`unseen`)."""
        with self._lock:
            for key in keys:
                self._entries[key] = None
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
