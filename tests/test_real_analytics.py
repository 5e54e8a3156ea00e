"""What real services need besides the web context: sampling, before_send, exclusions, page
views, queue drops, and the warnings for records that silently did nothing.

Spans come from a real ``TracerProvider``; exporters post to a real local receiver.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk._configuration import _import_sampler
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind
from otel_builders import emitted_log_record, finished_span

from opentelemetry_exporter_altertable import (
    AltertableSampler,
    AltertableSpanExporter,
    AltertableSpanProcessor,
)
from opentelemetry_exporter_altertable._mapping import MappingOptions, Record, map_records
from opentelemetry_exporter_altertable._web import ExcludeMatcher
from opentelemetry_exporter_altertable.exporters import AltertableLogExporter
from opentelemetry_exporter_altertable.receiver import LocalReceiver
from opentelemetry_exporter_altertable.sampling import sampler_factory

KEY = "pk_test_real_analytics"


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as r:
        yield r


def exporter_for(receiver: LocalReceiver, **kwargs: Any) -> AltertableSpanExporter:
    return AltertableSpanExporter(api_key=KEY, endpoint=receiver.endpoint, **kwargs)


def stored(receiver: LocalReceiver) -> list[tuple[str, str | None, dict[str, Any]]]:
    rows = receiver.query(
        "SELECT event, distinct_id, properties FROM altertable.analytics.events ORDER BY event"
    )
    return [(event, distinct_id, json.loads(props)) for event, distinct_id, props in rows]


# ------------------------------------------------------------------ sampler


def test_sampler_keeps_every_tagged_span_at_one_percent(receiver: LocalReceiver) -> None:
    exporter = exporter_for(receiver)
    provider = TracerProvider(
        sampler=AltertableSampler(ParentBased(TraceIdRatioBased(0.01))), shutdown_on_exit=False
    )
    processor = BatchSpanProcessor(exporter, max_queue_size=20_000)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("sampler-test")
    sampled_untagged = 0
    for i in range(10_000):
        if i % 100 == 0:
            attributes = {"analytics.event": "Order Placed", "user.id": f"u{i}", "seq": i}
        else:
            attributes = {"seq": i, "http.route": "/health"}
        with tracer.start_as_current_span("request", attributes=attributes) as span:
            if "analytics.event" not in attributes and span.get_span_context().trace_flags.sampled:
                sampled_untagged += 1
    provider.shutdown()
    rows = receiver.query(
        "SELECT count(*), count(DISTINCT distinct_id) FROM altertable.analytics.events"
    )
    assert rows == [(100, 100)]
    assert sampled_untagged < 500  # the delegate still samples about 1% of the rest
    assert exporter.stats()["records_seen"] == 100 + sampled_untagged


def test_sampler_decisions() -> None:
    sampler = AltertableSampler(ALWAYS_OFF)
    for attributes in (
        {"analytics.event": "Signed Up"},
        {"analytics.event": True},
        {"analytics.alias": "u-new"},
        {"user.email": "a@example.com"},
        {"analytics.traits.plan": "pro"},
    ):
        result = sampler.should_sample(None, 1, "span", attributes=attributes)
        assert result.decision is Decision.RECORD_AND_SAMPLE, attributes
        assert dict(result.attributes or {}) == attributes
    for attributes in ({}, None, {"user.id": "u1"}, {"http.route": "/"}):
        result = sampler.should_sample(None, 1, "span", attributes=attributes)
        assert result.decision is Decision.DROP, attributes
    assert AltertableSampler().get_description() == (
        "AltertableSampler{ParentBased{root:AlwaysOnSampler,remoteParentSampled:AlwaysOnSampler,"
        "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
        "localParentNotSampled:AlwaysOffSampler}}"
    )


def test_attributes_set_after_start_cannot_rescue_a_dropped_span(
    receiver: LocalReceiver,
) -> None:
    provider = TracerProvider(sampler=AltertableSampler(ALWAYS_OFF), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter_for(receiver)))
    tracer = provider.get_tracer("late")
    with tracer.start_as_current_span("late") as span:
        span.set_attribute("analytics.event", "Too Late")  # the sampler has already decided
    with tracer.start_as_current_span("early", attributes={"analytics.event": "In Time"}):
        pass
    provider.shutdown()
    assert [row[0] for row in stored(receiver)] == ["In Time"]


def test_sampler_entry_point_wraps_parent_based_ratio(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    sampler = _import_sampler("altertable")
    assert isinstance(sampler, AltertableSampler)
    delegate = sampler.delegate
    assert isinstance(delegate, ParentBased)
    assert "TraceIdRatioBased{0.25}" in delegate.get_description()
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG")
    assert "root:AlwaysOnSampler" in sampler_factory(None).get_description()
    with caplog.at_level(logging.WARNING):
        assert "root:AlwaysOnSampler" in sampler_factory("lots").get_description()
        assert "root:AlwaysOnSampler" in sampler_factory("2").get_description()
    assert len([r for r in caplog.records if "not a ratio" in r.getMessage()]) == 2


# ------------------------------------------------------------------ before_send


def test_before_send_scrubs_drops_and_survives_a_broken_hook(
    receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def hook(endpoint: str, payload: dict[str, Any]) -> Any:
        seen.append(endpoint)
        if endpoint == "identify":
            payload["traits"].pop("email", None)  # scrub personal data
            return payload
        if endpoint == "alias":
            return payload
        event = payload["event"]
        if event == "Internal Ping":
            return None
        if event == "Boom":
            raise RuntimeError("hook bug")
        if event == "Garbage":
            return ["not", "a", "payload"]
        payload["properties"].pop("card", None)
        payload["properties"]["scrubbed"] = True
        return payload

    exporter = exporter_for(receiver, before_send=hook)
    spans = [
        finished_span("a", {"analytics.event": "Order Placed", "user.id": "u1", "card": "4242",
                            "user.email": "a@example.com", "user.name": "ada"}),
        finished_span("b", {"analytics.event": "Internal Ping", "user.id": "u1"}),
        finished_span("c", {"analytics.event": "Boom", "user.id": "u1"}),
        finished_span("d", {"analytics.event": "Garbage", "user.id": "u1"}),
        finished_span("e", {"analytics.event": "Boom", "user.id": "u1"}),
        finished_span("f", {"analytics.alias": "u1-new", "user.id": "u1"}),
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert exporter.export(spans).name == "SUCCESS"
    exporter.shutdown()
    assert sorted(seen) == ["alias", "identify"] + ["track"] * 5
    rows = stored(receiver)
    assert [(e, d) for e, d, _ in rows] == [("Order Placed", "u1")]
    assert rows[0][2]["scrubbed"] is True and "card" not in rows[0][2]
    [(traits,)] = receiver.query("SELECT traits FROM altertable.analytics.identities")
    assert json.loads(traits) == {"username": "ada"}
    stats = exporter.stats()
    assert stats["dropped_by_reason"] == {"before-send": 1, "before-send-error": 3}
    assert stats["calls_built"] == 7
    hook_lines = [r for r in caplog.records if "before_send" in r.getMessage()]
    assert len(hook_lines) == 1, hook_lines  # logged once


class Unprintable(Exception):
    """An exception whose message cannot be built: ``str()`` of it raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


def test_a_hook_exception_that_cannot_be_printed_drops_only_its_call(
    receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(endpoint: str, payload: dict[str, Any]) -> Any:
        if endpoint == "track" and payload["event"] == "Boom":
            raise Unprintable
        return payload

    exporter = exporter_for(receiver, before_send=hook)
    spans = [
        finished_span("a", {"analytics.event": "Order Placed", "user.id": "u1"}),
        finished_span("b", {"analytics.event": "Boom", "user.id": "u1"}),
        finished_span("c", {"analytics.event": "Order Shipped", "user.id": "u1"}),
    ]
    with caplog.at_level(logging.WARNING):
        assert exporter.export(spans).name == "SUCCESS"
    exporter.shutdown()
    assert [e for e, _, _ in stored(receiver)] == ["Order Placed", "Order Shipped"]
    assert exporter.stats()["dropped_by_reason"] == {"before-send-error": 1}
    [line] = [r.getMessage() for r in caplog.records if "before_send" in r.getMessage()]
    assert "Unprintable" in line


def test_before_send_is_argument_only_and_must_be_callable() -> None:
    with pytest.raises(ValueError, match="before_send"):
        AltertableSpanExporter(api_key=KEY, before_send="not callable")  # type: ignore[arg-type]


# ------------------------------------------------------------------ properties_exclude


def _props(receiver: LocalReceiver, **kwargs: Any) -> dict[str, Any]:
    exporter = exporter_for(receiver, **kwargs)
    span = finished_span(
        "x",
        {
            "analytics.event": "Viewed",
            "code.file.path": "/srv/app/views.py",
            "thread.name": "worker-1",
            "network.peer.port": 51234,
            "net.peer.port": 51234,
            "secret.token": "t",
            "plan": "pro",
            "analytics.properties.code.version": "v2",
        },
    )
    assert exporter.export([span]).name == "SUCCESS"
    exporter.shutdown()
    [(_, _, props)] = stored(receiver)
    return {k: v for k, v in props.items() if not k.startswith(("$", "otel.", "service."))}


def test_default_exclusions_keep_code_thread_and_socket_noise_out(
    receiver: LocalReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_ALTERTABLE_PROPERTIES_EXCLUDE", raising=False)
    assert _props(receiver) == {"secret.token": "t", "plan": "pro", "code.version": "v2"}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"env": "secret.*"}, {"code.file.path", "thread.name", "network.peer.port",
                               "net.peer.port", "plan", "code.version"}),
        ({"env": ""}, {"code.file.path", "thread.name", "network.peer.port", "net.peer.port",
                       "secret.token", "plan", "code.version"}),
        ({"arg": ["*"]}, {"code.version"}),  # analytics.properties.* is never excluded
        ({"arg": "plan, code.*", "env": "*"}, {"thread.name", "network.peer.port",
                                              "net.peer.port", "secret.token", "code.version"}),
    ],
)  # fmt: skip
def test_properties_exclude_setting(
    receiver: LocalReceiver,
    monkeypatch: pytest.MonkeyPatch,
    setting: dict[str, Any],
    expected: set[str],
) -> None:
    if "env" in setting:
        monkeypatch.setenv("OTEL_EXPORTER_ALTERTABLE_PROPERTIES_EXCLUDE", setting["env"])
    kwargs = {"properties_exclude": setting["arg"]} if "arg" in setting else {}
    assert set(_props(receiver, **kwargs)) == expected


# ------------------------------------------------------------------ mapping rules (records)


def _track(record: Record, **options: Any) -> list[dict[str, Any]]:
    return map_records([record], MappingOptions(**options)).tracks


PAGE = {
    "http.request.method": "GET",
    "http.response.status_code": 200,
    "http.response.header.content-type": ("text/html; charset=utf-8",),
    "url.scheme": "https",
    "server.address": "shop.example",
    "url.path": "/pricing",
    "url.query": "utm_source=ads&session=abc",
    "http.route": "/pricing",
}


def test_page_views_only_when_enabled_and_only_for_untagged_server_spans() -> None:
    server = Record("GET /pricing", PAGE, {}, 1, span_kind="server")
    assert _track(server) == []
    [track] = _track(server, pageviews=True)
    assert track["event"] == "$pageview"
    assert track["properties"]["$url"] == "https://shop.example/pricing"
    assert track["properties"]["$utm_source"] == "ads"
    assert "session" not in json.dumps(track["properties"])
    assert _track(Record("GET", PAGE, {}, 1, span_kind="client"), pageviews=True) == []
    event = Record("e", {"x": 1}, {}, 1, parent=PAGE, span_kind="server")
    assert _track(event, pageviews=True) == []
    tagged = Record("GET", {**PAGE, "analytics.event": "Pricing Seen"}, {}, 1, span_kind="server")
    assert [t["event"] for t in _track(tagged, pageviews=True)] == ["Pricing Seen"]


def test_client_spans_never_take_the_user_from_old_names() -> None:
    attrs = {"analytics.event": "Called", "net.peer.ip": "10.1.2.3", "http.user_agent": "lib/1",
             "http.url": "https://api.example/v1?key=k"}  # fmt: skip
    [client] = _track(Record("c", attrs, {}, 1, span_kind="client"))
    assert client["properties"]["$ip"] == 0
    assert "$user_agent" not in client["properties"]
    assert client["properties"]["http.user_agent"] == "lib/1"  # an ordinary property here
    assert "net.peer.ip" not in client["properties"]  # excluded by default
    [server] = _track(Record("s", attrs, {}, 1, span_kind="server"))
    assert server["properties"]["$ip"] == "10.1.2.3"
    assert server["properties"]["$user_agent"] == "lib/1"
    assert server["properties"]["$url"] == "https://api.example/v1"
    assert "http.url" not in server["properties"]


def test_span_event_takes_its_server_span_context() -> None:
    span_attrs = {"http.scheme": "http", "http.host": "shop.example:8080",
                  "http.target": "/cart?utm_medium=cpc", "http.user_agent": "UA"}  # fmt: skip
    record = Record("Added", {"analytics.event": True}, {}, 1, parent=span_attrs,
                    span_kind="server")  # fmt: skip
    [track] = _track(record)
    assert track["event"] == "Added"
    props = track["properties"]
    assert props["$url"] == "http://shop.example:8080/cart"
    assert props["$utm_medium"] == "cpc"
    assert props["$user_agent"] == "UA"


def test_explicit_properties_win_over_web_context() -> None:
    attrs = {**PAGE, "analytics.event": "X", "analytics.properties.$url": "https://override/"}
    [track] = _track(Record("x", attrs, {}, 1, span_kind="server"))
    assert track["properties"]["$url"] == "https://override/"


def test_exclusion_matcher_in_options() -> None:
    record = Record("x", {"analytics.event": "X", "a.b": 1, "c": 2}, {}, 1)
    [track] = _track(record, properties_exclude=ExcludeMatcher(["a.*"]))
    assert "a.b" not in track["properties"] and track["properties"]["c"] == 2


# ------------------------------------------------------------------ warnings


def test_unnamed_log_record_with_event_true_warns_once(
    receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = AltertableLogExporter(api_key=KEY, endpoint=receiver.endpoint)
    records = [emitted_log_record(attributes={"analytics.event": True, "n": i}) for i in range(3)]
    with caplog.at_level(logging.WARNING):
        exporter.export(records)
        exporter.export(records)
    exporter.shutdown()
    assert stored(receiver) == []
    warned = [r for r in caplog.records if "event_name" in r.getMessage()]
    assert len(warned) == 1


def test_truncated_span_with_analytics_keys_warns_once(
    receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = exporter_for(receiver)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("crowded")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            with tracer.start_as_current_span("crowded") as span:
                span.set_attribute("analytics.event", "Evicted")  # set first: evicted first
                for i in range(128):
                    span.set_attribute(f"attr.{i}", i)
                span.set_attribute("user.id", "u-crowded")
        with tracer.start_as_current_span("fine") as span:
            for i in range(126):
                span.set_attribute(f"attr.{i}", i)
            span.set_attribute("analytics.event", "Kept")
    provider.shutdown()
    assert [row[0] for row in stored(receiver)] == ["Kept"]
    warned = [r for r in caplog.records if "attribute count limit" in r.getMessage()]
    assert len(warned) == 1, warned


# ------------------------------------------------------------------ queue drops


class _GatedExporter(AltertableSpanExporter):
    """Holds its first export until released: a queue that cannot drain."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        self.entered.set()
        assert self.release.wait(30)
        return super().export(spans)


def test_queue_drops_are_counted_and_warned_about(
    receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = _GatedExporter(api_key=KEY, endpoint=receiver.endpoint)
    processor = AltertableSpanProcessor(exporter, max_queue_size=10, max_export_batch_size=1)
    provider = TracerProvider(resource=Resource.create({}), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("burst")

    def tagged(seq: int) -> None:
        with tracer.start_as_current_span(
            "s", kind=SpanKind.SERVER, attributes={"analytics.event": "Burst", "seq": seq}
        ):
            pass

    with caplog.at_level(logging.WARNING, logger="opentelemetry_exporter_altertable"):
        tagged(0)
        assert exporter.entered.wait(10)  # the worker holds span 0; the queue is empty
        for seq in range(1, 11 + 25):  # 10 fit in the queue, 25 are dropped
            tagged(seq)
        for _ in range(3):  # untagged spans never reach the queue, so never count
            with tracer.start_as_current_span("health"):
                pass
        exporter.release.set()
        provider.shutdown()
    assert exporter.stats()["queue_dropped"] == 25
    assert receiver.query("SELECT count(*) FROM altertable.analytics.events") == [(11,)]
    warned = [r.getMessage() for r in caplog.records if "queue was full" in r.getMessage()]
    # The first drop warns at once; the rest of the minute's drops are told at shutdown.
    assert len(warned) == 2, warned
    assert "1 tagged span(s) dropped (1 in all)" in warned[0]
    assert "24 tagged span(s) dropped (25 in all)" in warned[1]
