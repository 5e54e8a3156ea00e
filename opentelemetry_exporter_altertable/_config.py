"""One frozen settings object: the argument, else the environment variable, else the default.

Arguments are the programmer's: a bad one raises ``ValueError`` at construction. Environment
variables are the operator's: a bad one logs a warning naming the variable and falls back to the
default, so a typo in a deployment never takes the host application down.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from . import environment_variables as ev
from ._retry import RetryPolicy
from ._text import clip_repr
from ._web import DEFAULT_PROPERTIES_EXCLUDE, parse_patterns

_logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.altertable.ai"
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BATCH_SIZE = 100
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024

#: ``(endpoint, payload) -> payload | None``, applied to every call before it is batched.
BeforeSend = Callable[[str, dict[str, Any]], "dict[str, Any] | None"]

Compression = Literal["gzip"] | None
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class ExporterConfig:
    """Everything an exporter needs, resolved once at construction."""

    api_key: str | None
    endpoint: str = DEFAULT_ENDPOINT
    environment: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    sync: bool = False
    compression: Compression = None
    spool_dir: str | None = None
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    endpoint_error: str | None = None
    """Why ``endpoint`` (from the environment) is unusable; the exporter then sends nothing."""
    pageviews: bool = False
    properties_exclude: tuple[str, ...] = DEFAULT_PROPERTIES_EXCLUDE
    before_send: BeforeSend | None = None

    def __repr__(self) -> str:  # never print the key
        key = "set" if self.api_key else "missing"
        return (
            f"ExporterConfig(api_key=<{key}>, endpoint={self.endpoint!r}, "
            f"environment={self.environment!r}, timeout={self.timeout}, "
            f"max_batch_size={self.max_batch_size}, sync={self.sync}, "
            f"compression={self.compression!r}, spool_dir={self.spool_dir!r}, "
            f"pageviews={self.pageviews}, "
            f"properties_exclude={','.join(self.properties_exclude)!r}, "
            f"before_send={'set' if self.before_send else None})"
        )


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _env_number(
    environ: Mapping[str, str], name: str, kind: type[float] | type[int]
) -> float | None:
    raw = _env(environ, name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        _logger.warning("%s=%s is not a valid number; using the default", name, clip_repr(raw))
        return None
    if not (math.isfinite(value) and value > 0):
        _logger.warning(
            "%s=%s must be a positive finite number; using the default", name, clip_repr(raw)
        )
        return None
    return value


def _env_bool(environ: Mapping[str, str], name: str) -> bool | None:
    raw = environ.get(name)
    if raw is None:
        return None
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    _logger.warning(
        "%s=%s is not a boolean (use true or false); using the default", name, clip_repr(raw)
    )
    return None


def _compression(value: str | None, source: str) -> Compression:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered == "gzip":
        return "gzip"
    if lowered in ("", "none"):
        return None
    if source == "argument":
        raise ValueError(f"compression must be 'gzip' or None, not {value!r}")
    _logger.warning(
        "%s=%s is not supported (use gzip or none); sending uncompressed",
        source,
        clip_repr(value),
    )
    return None


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, not {value!r}")


def resolve_config(
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    environment: str | None = None,
    timeout: float | None = None,
    max_batch_size: int | None = None,
    sync: bool | None = None,
    compression: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    spool_max_bytes: int | None = None,
    retry: RetryPolicy | None = None,
    pageviews: bool | None = None,
    properties_exclude: str | Iterable[str] | None = None,
    before_send: BeforeSend | None = None,
    environ: Mapping[str, str] | None = None,
) -> ExporterConfig:
    """Resolve every setting: argument, then ``OTEL_EXPORTER_ALTERTABLE_*``, then default."""
    env = os.environ if environ is None else environ
    if timeout is not None:
        _positive("timeout", timeout)
    if max_batch_size is not None:
        _positive("max_batch_size", max_batch_size)
    if spool_max_bytes is not None:
        _positive("spool_max_bytes", spool_max_bytes)

    resolved_endpoint = (
        endpoint or _env(env, ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT) or DEFAULT_ENDPOINT
    )
    endpoint_error = endpoint_problem(resolved_endpoint)
    if endpoint_error is not None:
        if endpoint is not None:
            raise ValueError(f"endpoint {clip_repr(endpoint)} is unusable: {endpoint_error}")
        # Never the default instead: a typo must not send development data and the key to
        # production.
        _logger.error(
            "%s=%s is unusable (%s): nothing will be exported until it is fixed "
            "(e.g. http://127.0.0.1:15001 or https://api.altertable.ai)",
            ev.OTEL_EXPORTER_ALTERTABLE_ENDPOINT,
            clip_repr(resolved_endpoint),
            endpoint_error,
        )

    if compression is not None:
        resolved_compression = _compression(compression, "argument")
    else:
        resolved_compression = _compression(
            _env(env, ev.OTEL_EXPORTER_ALTERTABLE_COMPRESSION),
            ev.OTEL_EXPORTER_ALTERTABLE_COMPRESSION,
        )

    resolved_spool = (
        spool_dir if spool_dir is not None else _env(env, ev.OTEL_EXPORTER_ALTERTABLE_SPOOL_DIR)
    )
    env_timeout = _env_number(env, ev.OTEL_EXPORTER_ALTERTABLE_TIMEOUT, float)
    env_batch = _env_number(env, ev.OTEL_EXPORTER_ALTERTABLE_MAX_BATCH_SIZE, int)
    env_spool_bytes = _env_number(env, ev.OTEL_EXPORTER_ALTERTABLE_SPOOL_MAX_BYTES, int)
    env_sync = _env_bool(env, ev.OTEL_EXPORTER_ALTERTABLE_SYNC)
    env_pageviews = _env_bool(env, ev.OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS)
    if before_send is not None and not callable(before_send):
        raise ValueError(f"before_send must be callable, not {before_send!r}")
    if properties_exclude is not None:
        if not isinstance(properties_exclude, str) and not isinstance(properties_exclude, Iterable):
            raise ValueError(
                "properties_exclude must be a comma-separated string or a sequence of "
                f"patterns, not {properties_exclude!r}"
            )
        try:
            exclude = parse_patterns(properties_exclude)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    else:
        raw_exclude = env.get(ev.OTEL_EXPORTER_ALTERTABLE_PROPERTIES_EXCLUDE)
        # Set but empty means "exclude nothing"; unset means the default.
        exclude = (
            DEFAULT_PROPERTIES_EXCLUDE if raw_exclude is None else parse_patterns(raw_exclude)
        )

    return ExporterConfig(
        api_key=api_key
        or _env(env, ev.OTEL_EXPORTER_ALTERTABLE_API_KEY)
        or _env(env, ev.ALTERTABLE_API_KEY),
        endpoint=resolved_endpoint.rstrip("/"),
        environment=environment or _env(env, ev.OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT),
        timeout=float(timeout if timeout is not None else env_timeout or DEFAULT_TIMEOUT),
        max_batch_size=int(
            max_batch_size if max_batch_size is not None else env_batch or DEFAULT_MAX_BATCH_SIZE
        ),
        sync=sync if sync is not None else bool(env_sync),
        compression=resolved_compression,
        spool_dir=os.fspath(resolved_spool) if resolved_spool is not None else None,
        spool_max_bytes=int(
            spool_max_bytes
            if spool_max_bytes is not None
            else env_spool_bytes or DEFAULT_SPOOL_MAX_BYTES
        ),
        retry=retry if retry is not None else RetryPolicy(),
        endpoint_error=endpoint_error,
        pageviews=bool(pageviews) if pageviews is not None else bool(env_pageviews),
        properties_exclude=exclude,
        before_send=before_send,
    )


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` cannot be the API's base URL, or ``None`` when it can."""
    if not url.lower().startswith(("http://", "https://")):
        return "it must start with http:// or https://"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    if not host:
        return "it names no host"
    return None
