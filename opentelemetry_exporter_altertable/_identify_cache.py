"""The identifies already accepted, so the same one is not sent again.

One job: an application that identifies its user on every request would otherwise send the
same identify on every export. A payload is remembered by its environment, ids and traits once
the API accepted it, and an identical one is dropped before sending. Bounded (least recently
used first out) and thread-safe; after a fork the child keeps what the parent remembered.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from ._mapping import Payload, _freeze

__all__ = ["IdentifyCache"]


class IdentifyCache:
    """Remembers identifies already accepted (LRU-bounded to ``max_entries``)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[Any, None] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    @staticmethod
    def key(payload: Payload) -> Any:
        return (
            payload.get("environment"),
            payload.get("distinct_id"),
            payload.get("anonymous_id"),
            _freeze(payload.get("traits")),
        )

    def unseen(self, payloads: list[Payload]) -> list[Payload]:
        with self._lock:
            entries = self._entries
            return [p for p in payloads if self.key(p) not in entries]

    def remember(self, payloads: list[Payload]) -> None:
        with self._lock:
            for payload in payloads:
                key = self.key(payload)
                self._entries[key] = None
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
