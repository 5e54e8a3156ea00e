"""Reading one API answer: its status and body become one verdict.

The transport (to decide what to do with a chunk) and ``altertable-otel check`` (to explain the
answer in words) both read answers here, so they can never disagree about what the API said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import _api

#: Why the rest of an export was not sent: the key is wrong, the environment is unknown, or
#: the endpoint does not exist. An operator can fix these; until then the calls are owed.
CONFIG_ERRORS = frozenset({"auth", _api.ENVIRONMENT_NOT_FOUND, "endpoint-not-found"})


@dataclass(frozen=True)
class Answer:
    """What one answer says, independent of how it was fetched."""

    status: int
    data: dict[str, Any] | None
    """The body when it is a JSON object, else ``None``."""

    @property
    def code(self) -> str | None:
        """The body's ``error_code``, falling back to ``error`` (the API family uses both)."""
        if self.data is None:
            return None
        raw = self.data.get("error_code") or self.data.get("error")
        return str(raw) if raw else None

    @property
    def accepted(self) -> bool:
        """A 2xx whose body does not say ``"ok": false``."""
        return 200 <= self.status < 300 and not (
            self.data is not None and self.data.get("ok") is False
        )

    @property
    def error_code(self) -> str | None:
        """The refusal's code, or ``None`` for an acceptance (``ok-false``, ``http-<status>``
        when the body names none)."""
        if self.accepted:
            return None
        if 200 <= self.status < 300:
            return self.code or "ok-false"
        return self.code or f"http-{self.status}"

    @property
    def setting_error(self) -> str | None:
        """Which setting is wrong (one of :data:`CONFIG_ERRORS`), if the answer says one is."""
        return config_error(self.status, self.error_code)


def config_error(status: int, error_code: str | None) -> str | None:
    """Which setting is wrong, if an answer with this status and code says one is."""
    if status in (401, 403):
        return "auth"
    if error_code == _api.ENVIRONMENT_NOT_FOUND:
        return _api.ENVIRONMENT_NOT_FOUND
    if status in (404, 405) or 300 <= status < 400:
        return "endpoint-not-found"
    return None


def read_answer(status: int, body: bytes) -> Answer:
    """The verdict on ``status`` with ``body`` (already decoded from its Content-Encoding)."""
    data: Any = None
    if body:
        try:
            data = json.loads(body)
        except ValueError:  # not JSON, or not UTF-8
            data = None
    return Answer(status, data if isinstance(data, dict) else None)
