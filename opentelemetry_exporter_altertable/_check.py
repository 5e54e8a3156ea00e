"""``altertable-otel check``: one test event, and its answer explained in words.

The same settings as the exporters (arguments, then ``OTEL_EXPORTER_ALTERTABLE_*``), so what
``check`` says is what the exporter will meet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import requests

from . import environment_variables as ev
from ._answers import read_answer
from ._api import LIB_NAME, LIB_VERSION
from ._config import ExporterConfig
from ._mapping import format_timestamp
from ._pool import new_session
from ._transport import endpoint_url, request_headers


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    summary: str
    """One line: OK, wrong key, unknown environment, unreachable, TLS error..."""
    detail: str = ""
    """What to do about it."""


def check_event(config: ExporterConfig, now_ns: int) -> dict[str, object]:
    return {
        "environment": config.environment or "production",
        "event": "altertable-otel check",
        "properties": {"$lib": LIB_NAME, "$lib_version": LIB_VERSION},
        "distinct_id": "altertable-otel-check",
        "timestamp": format_timestamp(now_ns),
    }


def run_check(  # noqa: PLR0911  # one answer per diagnosis, each a return
    config: ExporterConfig, now_ns: int, session: requests.Session | None = None
) -> CheckResult:
    """Send one event with ``sync=true`` and explain the answer."""
    if not config.api_key:
        return CheckResult(
            False,
            "no API key",
            f"Set {ev.OTEL_EXPORTER_ALTERTABLE_API_KEY} (or {ev.ALTERTABLE_API_KEY}) to your "
            "Altertable ingestion key (pk_live_... or pk_test_...).",
        )
    environment = config.environment or "production"
    url = endpoint_url(config, "track", sync=True)
    body = json.dumps([check_event(config, now_ns)]).encode()
    headers = {**request_headers(config)}
    headers.pop("Content-Encoding", None)
    own = session is None
    http = session if session is not None else new_session(config.endpoint, pool_size=1)
    try:
        response = http.post(url, data=body, headers=headers, timeout=config.timeout)
    except requests.exceptions.SSLError as exc:
        return CheckResult(
            False,
            f"TLS error talking to {config.endpoint}",
            f"The certificate could not be verified ({type(exc).__name__}). Behind a "
            "TLS-intercepting proxy, point REQUESTS_CA_BUNDLE at its CA certificate.",
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        return CheckResult(
            False,
            f"{config.endpoint} is unreachable",
            f"{type(exc).__name__}: check {ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT}, your network "
            "and HTTPS_PROXY / NO_PROXY.",
        )
    finally:
        if own:
            http.close()
    answer = read_answer(response.status_code, response.content)
    code = answer.code
    status = answer.status
    if answer.setting_error == "auth":
        return CheckResult(
            False,
            f"wrong API key (HTTP {status})",
            f"Altertable refused the key: set {ev.OTEL_EXPORTER_ALTERTABLE_API_KEY} to a valid "
            "ingestion key from your project settings.",
        )
    if answer.setting_error == "environment-not-found":
        return CheckResult(
            False,
            f"unknown environment {environment!r}",
            f"Create it in Altertable, or set {ev.OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT} to an "
            "existing one (e.g. production).",
        )
    if answer.accepted:
        task = answer.data.get("task_id") if answer.data is not None else None
        return CheckResult(
            True,
            f"OK: {config.endpoint} accepted a test event in environment {environment!r}",
            f"task {task}" if task else "",
        )
    return CheckResult(
        False,
        f"HTTP {status} from {url}" + (f" ({code})" if code else ""),
        f"Is {ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT} the API's base URL?" if status == 404 else "",
    )
