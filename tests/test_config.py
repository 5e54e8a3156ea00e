"""Settings: argument, then ``OTEL_EXPORTER_ALTERTABLE_*``, then the default; entry points.

Every exporter here is built the way users build it (``AltertableSpanExporter(...)`` or from the
environment alone); what reaches a server is checked over real loopback sockets.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, unauthorized
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExportResult
from otel_builders import emitted_log_record, finished_span, finished_spans

import opentelemetry_exporter_altertable
from opentelemetry_exporter_altertable import (
    AltertableLogExporter,
    AltertableSpanExporter,
    environment_variables,
)
from opentelemetry_exporter_altertable.receiver import LocalReceiver

PREFIX = "OTEL_EXPORTER_ALTERTABLE_"
API_KEY = f"{PREFIX}API_KEY"
ENDPOINT = f"{PREFIX}ENDPOINT"
ENVIRONMENT = f"{PREFIX}ENVIRONMENT"
TIMEOUT = f"{PREFIX}TIMEOUT"
MAX_BATCH_SIZE = f"{PREFIX}MAX_BATCH_SIZE"
SYNC = f"{PREFIX}SYNC"
COMPRESSION = f"{PREFIX}COMPRESSION"
SPOOL_DIR = f"{PREFIX}SPOOL_DIR"
SPOOL_MAX_BYTES = f"{PREFIX}SPOOL_MAX_BYTES"
OUR_VARIABLES = {
    API_KEY,
    "ALTERTABLE_API_KEY",
    ENDPOINT,
    ENVIRONMENT,
    TIMEOUT,
    MAX_BATCH_SIZE,
    SYNC,
    COMPRESSION,
    SPOOL_DIR,
    SPOOL_MAX_BYTES,
    "OTEL_EXPORTER_ALTERTABLE_PAGEVIEWS",
    "OTEL_EXPORTER_ALTERTABLE_PROPERTIES_EXCLUDE",
}

DEFAULT_ENDPOINT = "https://api.altertable.ai"
DEFAULTS: dict[str, Any] = {
    "api_key": None,
    "endpoint": DEFAULT_ENDPOINT,
    "environment": None,
    "timeout": 10.0,
    "max_batch_size": 100,
    "sync": False,
    "compression": None,
    "spool_dir": None,
    "spool_max_bytes": 64 * 1024 * 1024,
}
EXPORTERS = [AltertableSpanExporter, AltertableLogExporter]
Exporter = AltertableSpanExporter | AltertableLogExporter


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting may leak in from the shell that runs the tests."""
    for name in OUR_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def _tagged_span(name: str = "Signed Up", **resource: Any) -> Any:
    return finished_span(name, {"analytics.event": True, "user.id": "u-1"}, resource=resource)


def _warnings_naming(caplog: pytest.LogCaptureFixture, variable: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and variable in r.getMessage()
    ]


# ---------------------------------------------------------------------------- precedence

@dataclass(frozen=True)
class Setting:
    """One keyword: an argument and what it resolves to, an env value and what it resolves to."""

    keyword: str
    variable: str
    arg: Any
    from_arg: Any
    raw: str
    from_env: Any

    def filled(self, value: Any, tmp_path: Path) -> Any:
        if isinstance(value, str) and "{tmp}" in value:
            return value.format(tmp=tmp_path)
        return value


SETTINGS = [
    Setting("api_key", API_KEY, "pk_test_arg", "pk_test_arg", "pk_test_env", "pk_test_env"),
    Setting(
        "endpoint",
        ENDPOINT,
        "http://127.0.0.1:9/arg/",
        "http://127.0.0.1:9/arg",
        "http://127.0.0.1:9/env/",
        "http://127.0.0.1:9/env",
    ),
    Setting("environment", ENVIRONMENT, "staging", "staging", "development", "development"),
    Setting("timeout", TIMEOUT, 2.5, 2.5, "3.5", 3.5),
    Setting("max_batch_size", MAX_BATCH_SIZE, 7, 7, "9", 9),
    Setting("sync", SYNC, False, False, "true", True),  # a falsy argument still wins
    Setting("compression", COMPRESSION, "none", None, "gzip", "gzip"),
    Setting("spool_dir", SPOOL_DIR, "{tmp}/arg", "{tmp}/arg", "{tmp}/env", "{tmp}/env"),
    Setting("spool_max_bytes", SPOOL_MAX_BYTES, 4096, 4096, "8192", 8192),
]
SETTING_IDS = [s.keyword for s in SETTINGS]


@pytest.mark.parametrize("exporter_class", EXPORTERS)
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_argument_wins_over_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    exporter_class: type[Exporter],
    setting: Setting,
) -> None:
    monkeypatch.setenv(setting.variable, setting.filled(setting.raw, tmp_path))
    kwargs = {"api_key": "pk_test_k", setting.keyword: setting.filled(setting.arg, tmp_path)}
    exporter = exporter_class(**kwargs)
    try:
        expected = setting.filled(setting.from_arg, tmp_path)
        assert getattr(exporter.config, setting.keyword) == expected
        assert expected != setting.filled(setting.from_env, tmp_path)  # tells them apart
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("exporter_class", EXPORTERS)
@pytest.mark.parametrize("setting", SETTINGS, ids=SETTING_IDS)
def test_environment_wins_over_default(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    exporter_class: type[Exporter],
    setting: Setting,
) -> None:
    monkeypatch.setenv(setting.variable, setting.filled(setting.raw, tmp_path))
    exporter = exporter_class()
    try:
        expected = setting.filled(setting.from_env, tmp_path)
        assert getattr(exporter.config, setting.keyword) == expected
        assert expected != DEFAULTS[setting.keyword]  # the case tells env and default apart
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("exporter_class", EXPORTERS)
def test_defaults(exporter_class: type[Exporter]) -> None:
    exporter = exporter_class(api_key="pk_test_k")
    try:
        config = exporter.config
        for keyword, default in DEFAULTS.items():
            if keyword != "api_key":
                assert getattr(config, keyword) == default, keyword
    finally:
        exporter.shutdown()


def test_truthy_arguments_win_over_a_falsy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SYNC, "false")
    monkeypatch.setenv(COMPRESSION, "none")
    exporter = AltertableSpanExporter(api_key="pk_test_k", sync=True, compression="gzip")
    try:
        assert exporter.config.sync is True
        assert exporter.config.compression == "gzip"
    finally:
        exporter.shutdown()


@pytest.mark.parametrize(
    ("raw", "expected"), [("false", False), ("0", False), ("1", True), ("TRUE", True), ("on", True)]
)
def test_sync_environment_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv(SYNC, raw)
    exporter = AltertableSpanExporter(api_key="pk_test_k")
    try:
        assert exporter.config.sync is expected
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("raw", ["none", "NONE", "Gzip"])
def test_compression_environment_spellings(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(COMPRESSION, raw)
    exporter = AltertableSpanExporter(api_key="pk_test_k")
    try:
        assert exporter.config.compression == ("gzip" if raw.lower() == "gzip" else None)
    finally:
        exporter.shutdown()


def test_api_key_falls_back_to_altertable_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTERTABLE_API_KEY", "pk_test_fallback")
    exporter = AltertableSpanExporter()
    try:
        assert exporter.config.api_key == "pk_test_fallback"
    finally:
        exporter.shutdown()
    monkeypatch.setenv(API_KEY, "pk_test_primary")
    exporter = AltertableSpanExporter()
    try:
        assert exporter.config.api_key == "pk_test_primary"
    finally:
        exporter.shutdown()


def test_endpoint_loses_every_trailing_slash() -> None:
    exporter = AltertableSpanExporter(api_key="pk_test_k", endpoint="http://127.0.0.1:9/base//")
    try:
        assert exporter.config.endpoint == "http://127.0.0.1:9/base"
    finally:
        exporter.shutdown()


# ---------------------------------------------------------------------------- bad values

BAD_ENVIRONMENT = [
    (TIMEOUT, "soon", "timeout"),
    (TIMEOUT, "0", "timeout"),
    (TIMEOUT, "-3", "timeout"),
    (TIMEOUT, "nan", "timeout"),
    (TIMEOUT, "inf", "timeout"),
    (MAX_BATCH_SIZE, "lots", "max_batch_size"),
    (MAX_BATCH_SIZE, "0", "max_batch_size"),
    (MAX_BATCH_SIZE, "2.5", "max_batch_size"),
    (SYNC, "maybe", "sync"),
    (COMPRESSION, "brotli", "compression"),
    (SPOOL_MAX_BYTES, "big", "spool_max_bytes"),
    (SPOOL_MAX_BYTES, "-1", "spool_max_bytes"),
]


@pytest.mark.parametrize(("variable", "raw", "keyword"), BAD_ENVIRONMENT)
def test_bad_environment_value_warns_and_uses_default(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    raw: str,
    keyword: str,
) -> None:
    monkeypatch.setenv(variable, raw)
    caplog.set_level(logging.WARNING)
    exporter = AltertableSpanExporter(api_key="pk_test_k")
    try:
        assert getattr(exporter.config, keyword) == DEFAULTS[keyword]
    finally:
        exporter.shutdown()
    assert len(_warnings_naming(caplog, variable)) == 1, caplog.text


BAD_ARGUMENTS: list[tuple[str, Any]] = [
    ("timeout", 0),
    ("timeout", -1.0),
    ("timeout", math.nan),
    ("timeout", math.inf),
    ("max_batch_size", 0),
    ("max_batch_size", -5),
    ("spool_max_bytes", 0),
    ("compression", "brotli"),
    ("endpoint", "ftp://127.0.0.1/"),
    ("endpoint", "127.0.0.1:15001"),
    ("endpoint", "http://"),
    ("endpoint", "https:///track"),
    ("endpoint", "http://127.0.0.1:port"),
]


@pytest.mark.parametrize("exporter_class", EXPORTERS)
@pytest.mark.parametrize(("keyword", "value"), BAD_ARGUMENTS)
def test_bad_argument_raises(exporter_class: type[Exporter], keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=keyword):
        exporter_class(api_key="pk_test_k", **{keyword: value})


@pytest.mark.parametrize(
    "raw", ["127.0.0.1:{port}", "ftp://127.0.0.1:{port}/", "http://", "https:///track"]
)
def test_an_unusable_endpoint_never_falls_back_to_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raw: str
) -> None:
    """A typo in the variable must not send development data and the key to production.

    The loopback server stands in for the way to production: it is the HTTPS proxy, so a
    fallback to https://api.altertable.ai would reach it as a CONNECT.
    """
    with FaultServer() as server:
        monkeypatch.setenv(ENDPOINT, raw.format(port=server.port))
        monkeypatch.setenv("HTTPS_PROXY", server.endpoint)
        monkeypatch.setenv("https_proxy", server.endpoint)
        caplog.set_level(logging.WARNING)
        exporter = AltertableSpanExporter(api_key="pk_test_k", timeout=2)
        try:
            assert exporter.config.endpoint != DEFAULT_ENDPOINT
            assert exporter.export([_tagged_span()]) is SpanExportResult.FAILURE
            stats = exporter.stats()
        finally:
            exporter.shutdown()
        assert server.requests == []
    assert stats["calls_dropped"] == 1
    assert stats["dropped_by_reason"] == {"bad-endpoint": 1}
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and ENDPOINT in r.getMessage()
    ]
    assert len(errors) == 1, caplog.text
    assert "unusable" in errors[0]


def test_bad_argument_wins_even_over_a_good_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT, "5")
    with pytest.raises(ValueError, match="timeout"):
        AltertableSpanExporter(api_key="pk_test_k", timeout=-1)


# ---------------------------------------------------------------------------- zero arguments


def test_both_exporters_build_from_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch, server: FaultServer
) -> None:
    """No arguments at all: what the ``altertable`` entry points do under zero-code setup."""
    monkeypatch.setenv(API_KEY, "pk_test_from_env")
    monkeypatch.setenv(ENDPOINT, server.endpoint + "/")
    monkeypatch.setenv(ENVIRONMENT, "staging")
    monkeypatch.setenv(MAX_BATCH_SIZE, "2")
    monkeypatch.setenv(SYNC, "true")
    monkeypatch.setenv(COMPRESSION, "gzip")
    spans = AltertableSpanExporter()
    logs = AltertableLogExporter()
    try:
        batch = finished_spans(
            [(f"ev-{i}", {"analytics.event": True}, (), 0, 1_000_000) for i in range(5)]
        )
        assert spans.export(batch) is SpanExportResult.SUCCESS
        record = emitted_log_record(attributes={"analytics.event": "From Log"})
        assert logs.export([record]) is LogRecordExportResult.SUCCESS
    finally:
        spans.shutdown()
        logs.shutdown()
    requests = server.requests_to("/track")
    assert [len(r.items) for r in requests] == [2, 2, 1, 1]  # max_batch_size from the env
    for request in requests:
        assert request.headers["x-api-key"] == "pk_test_from_env"
        assert request.headers.get("content-encoding") == "gzip"
        assert request.query == {"sync": ["true"]}
    items = server.items("/track")
    assert sorted(i["event"] for i in items) == ["From Log", "ev-0", "ev-1", "ev-2", "ev-3", "ev-4"]
    assert {i["environment"] for i in items} == {"staging"}


# ---------------------------------------------------------------------------- the API key


@pytest.mark.parametrize("exporter_class", EXPORTERS)
def test_missing_api_key_logs_one_error_and_sends_nothing(
    caplog: pytest.LogCaptureFixture, server: FaultServer, exporter_class: type[Exporter]
) -> None:
    caplog.set_level(logging.DEBUG)
    exporter = exporter_class(endpoint=server.endpoint)
    try:
        for _ in range(3):
            if isinstance(exporter, AltertableSpanExporter):
                assert exporter.export([_tagged_span()]) is SpanExportResult.FAILURE
            else:
                record = emitted_log_record(attributes={"analytics.event": "E", "user.id": "u"})
                assert exporter.export([record]) is LogRecordExportResult.FAILURE
    finally:
        exporter.shutdown()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert API_KEY in errors[0].getMessage()
    assert server.requests == []


def test_config_repr_never_shows_the_key() -> None:
    key = "pk_live_0123456789abcdef"
    exporter = AltertableSpanExporter(api_key=key)
    try:
        assert key not in repr(exporter.config)
        assert key not in str(exporter.config)
        assert key not in repr(exporter)
        assert "api_key" in repr(exporter.config)  # still says whether one is set
    finally:
        exporter.shutdown()


def test_refused_key_error_names_the_variable_not_the_key(
    caplog: pytest.LogCaptureFixture, server: FaultServer
) -> None:
    key = "pk_live_refused_0123456789"
    server.set_default(unauthorized())
    caplog.set_level(logging.DEBUG)
    exporter = AltertableSpanExporter(api_key=key, endpoint=server.endpoint)
    try:
        assert exporter.export([_tagged_span()]) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert server.requests, "the request must have been made"
    assert key not in caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(API_KEY in message for message in errors), caplog.text


# ---------------------------------------------------------------------------- environment


@pytest.fixture(scope="module")
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver(environments=None) as r:
        yield r


@dataclass(frozen=True)
class EnvironmentCase:
    name: str
    argument: str | None
    variable: str | None
    resource: dict[str, str]
    expected: str
    """The environment that must reach the server."""


ENVIRONMENT_CASES = [
    EnvironmentCase(
        "argument", "arg-env", "var-env", {"deployment.environment.name": "res-env"}, "arg-env"
    ),
    EnvironmentCase(
        "variable", None, "var-env", {"deployment.environment.name": "res-env"}, "var-env"
    ),
    EnvironmentCase(
        "resource",
        None,
        None,
        {"deployment.environment.name": "res-env", "deployment.environment": "old-env"},
        "res-env",
    ),
    EnvironmentCase("deprecated", None, None, {"deployment.environment": "old-env"}, "old-env"),
    EnvironmentCase("default", None, None, {}, "production"),
]


@pytest.mark.parametrize("kind", ["span", "log"])
@pytest.mark.parametrize("case", ENVIRONMENT_CASES, ids=[c.name for c in ENVIRONMENT_CASES])
def test_environment_resolution_reaches_the_server(
    monkeypatch: pytest.MonkeyPatch, receiver: LocalReceiver, kind: str, case: EnvironmentCase
) -> None:
    if case.variable is not None:
        monkeypatch.setenv(ENVIRONMENT, case.variable)
    event = f"env-{kind}-{case.name}"
    attributes = {"analytics.event": event, "user.id": "u-env"}
    exporter: Exporter
    if kind == "span":
        exporter = AltertableSpanExporter(
            api_key="pk_test_k", endpoint=receiver.endpoint, environment=case.argument
        )
        span = finished_span("op", attributes, resource=case.resource)
        assert exporter.export([span]) is SpanExportResult.SUCCESS
    else:
        exporter = AltertableLogExporter(
            api_key="pk_test_k", endpoint=receiver.endpoint, environment=case.argument
        )
        record = emitted_log_record(attributes=attributes, resource=case.resource)
        assert exporter.export([record]) is LogRecordExportResult.SUCCESS
    exporter.shutdown()
    rows = receiver.query(
        f"SELECT environment FROM altertable.analytics.events WHERE event = '{event}'"
    )
    assert rows == [(case.expected,)]


# ---------------------------------------------------------------------------- entry points


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("opentelemetry_traces_exporter", AltertableSpanExporter),
        ("opentelemetry_logs_exporter", AltertableLogExporter),
    ],
)
def test_exporter_entry_points_load_our_classes(group: str, expected: type) -> None:
    found = [ep for ep in entry_points(group=group) if ep.name == "altertable"]
    assert len(found) == 1
    assert found[0].load() is expected


def test_environment_variables_entry_point_lists_our_variables() -> None:
    found = [
        ep for ep in entry_points(group="opentelemetry_environment_variables")
        if ep.name == "altertable"
    ]
    assert len(found) == 1
    module = found[0].load()
    assert module is environment_variables
    registered = {
        name: getattr(module, name) for name in dir(module) if name.isupper()
    }
    assert set(registered) == OUR_VARIABLES
    assert all(name == value for name, value in registered.items())


def test_every_variable_the_package_reads_is_registered() -> None:
    """A variable named anywhere in the package source must be in the registered module."""
    package_dir = Path(opentelemetry_exporter_altertable.__file__).parent
    mentioned: set[str] = set()
    for path in package_dir.rglob("*.py"):
        mentioned.update(re.findall(r"\bOTEL_EXPORTER_ALTERTABLE_[A-Z_]*[A-Z]\b", path.read_text()))
    assert mentioned, "the scan found nothing: the pattern is wrong"
    assert mentioned <= OUR_VARIABLES
