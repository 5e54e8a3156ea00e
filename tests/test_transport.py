"""The transport on its own, over real loopback HTTP: what each call became, and what was said.

Every delivery test checks the whole report (accepted, refused with its reason, owed with its
reason), the requests the server received, and the exact text of the log lines a user reads to
fix a setting: those messages name the fix, so they are part of the contract.
"""

from __future__ import annotations

import gzip
import json
import logging
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from faultserver import (
    Answer,
    FaultServer,
    Request,
    bad_request,
    env_not_found_400,
    hang,
    reject_items,
    retry_later,
    tls_context,
    tls_files,
    unauthorized,
)
from support import FAKE_API_KEY, fast_retry, refusing_endpoint

from opentelemetry_exporter_altertable import RetryPolicy
from opentelemetry_exporter_altertable._answers import ACCEPT_ENCODING, read_stream
from opentelemetry_exporter_altertable._api import USER_AGENT
from opentelemetry_exporter_altertable._config import ExporterConfig, resolve_config
from opentelemetry_exporter_altertable._pool import (
    GivenSession,
    OwnPool,
    OwnSession,
    _TrackingAdapter,
    new_session,
)
from opentelemetry_exporter_altertable._retry import AnswerTimeout
from opentelemetry_exporter_altertable._transport import (
    DeliveryReport,
    Transport,
    _request_target,
    encode_json,
    endpoint_url,
    fast_encoder,
    request_headers,
)

LOGGER = "opentelemetry_exporter_altertable._transport"


def far() -> float:
    """A deadline no test reaches (30 s away): the delivery ends by the server's answers."""
    return time.monotonic() + 30


MakeTransport = Callable[..., Transport]


def config_for(endpoint: str, **settings: Any) -> ExporterConfig:
    base: dict[str, Any] = {
        "api_key": FAKE_API_KEY,
        "endpoint": endpoint,
        "timeout": 2.0,
        "retry": fast_retry(),
    }
    base.update(settings)
    return resolve_config(environ={}, **base)


@pytest.fixture
def make_transport(server: FaultServer) -> Iterator[MakeTransport]:
    built: list[Transport] = []

    def make(session: requests.Session | None = None, **settings: Any) -> Transport:
        transport = Transport(config_for(server.endpoint, **settings), session)
        built.append(transport)
        return transport

    yield make
    for transport in built:
        transport.close()
        transport.release()


def said(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[tuple[int, str]]:
    """(level, message) of every transport log record, at ``level`` only when given."""
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == LOGGER and (level is None or r.levelno == level)
    ]


def items(count: int, start: int = 0, **fields: Any) -> list[dict[str, Any]]:
    return [{"event": f"e{i}", "distinct_id": "u", **fields} for i in range(start, start + count)]


def sizes(requests_seen: list[Request]) -> list[int]:
    return [len(r.items) for r in requests_seen]


def events(requests_seen: list[Request]) -> list[list[str]]:
    return [[item["event"] for item in r.items] for r in requests_seen]


# ---------------------------------------------------------------------------- pure helpers


def test_request_headers_name_the_key_the_package_and_json_exactly() -> None:
    config = config_for("http://127.0.0.1:1", compression="gzip")
    assert request_headers(config) == {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept-Encoding": ACCEPT_ENCODING,
        "X-API-Key": FAKE_API_KEY,
        "Content-Encoding": "gzip",
    }
    plain = resolve_config(endpoint="http://127.0.0.1:1", environ={}, compression="none")
    assert request_headers(plain) == {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept-Encoding": ACCEPT_ENCODING,
    }


def test_endpoint_url_adds_sync_from_the_argument_else_the_setting() -> None:
    unsynced = config_for("http://h:1")
    synced = config_for("http://h:1", sync=True)
    assert endpoint_url(unsynced, "track") == "http://h:1/track"
    assert endpoint_url(unsynced, "track", sync=True) == "http://h:1/track?sync=true"
    assert endpoint_url(synced, "identify") == "http://h:1/identify?sync=true"
    assert endpoint_url(synced, "alias", sync=False) == "http://h:1/alias"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://h:1/track", "/track"),
        ("http://h:1/base/track?sync=true", "/base/track?sync=true"),
        ("http://h:1", "/"),
        ("http://h:1?sync=true", "/?sync=true"),
    ],
)
def test_the_request_target_is_the_path_and_query(url: str, target: str) -> None:
    assert _request_target(url) == target


def test_encode_json_is_compact_utf8_and_refuses_nan() -> None:
    assert encode_json([{"a": "é", "b": [1, 2.5]}, {}]) == '[{"a":"é","b":[1,2.5]},{}]'.encode()
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_json([{"x": float("nan")}])


def test_the_fast_encoder_sends_the_same_bytes_and_falls_back_past_64_bits() -> None:
    encode = fast_encoder()
    assert encode is not None  # orjson is in the dev extra
    payload = [{"a": "é", "b": [1, 2.5], "c": None}]
    assert encode(payload) == encode_json(payload)
    huge = [{"n": 2**70}]
    assert encode(huge) == b'[{"n":1180591620717411303424}]'
    with pytest.raises(TypeError):
        encode([{"s": {1}}])  # neither encoder knows a set: refused, not guessed


def test_owed_items_keep_a_setting_error_over_a_retryable_one() -> None:
    report = DeliveryReport()
    report.owe("track", [{"a": 1}], "retryable")
    assert report.pending_reason == "retryable"
    report.owe("track", [{"b": 2}], "auth")
    assert report.pending_reason == "auth"
    report.owe("identify", [{"c": 3}], "retryable")
    assert report.pending_reason == "auth"
    report.owe("identify", [{"d": 4}], "tls")
    assert report.pending_reason == "tls"
    assert report.pending == {"track": [{"a": 1}, {"b": 2}], "identify": [{"c": 3}, {"d": 4}]}


# ---------------------------------------------------------------------------- new_session


def test_new_session_reads_proxies_and_the_ca_bundle_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("no_proxy")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "a.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "b.pem"))
    session = new_session("https://api.example.invalid", pool_size=5)
    try:
        assert session.proxies == {"https": "http://proxy.invalid:3128"}
        assert session.verify == str(tmp_path / "a.pem")
        assert session.trust_env is False
        for prefix in ("https://", "http://"):
            adapter = session.adapters[prefix]
            assert isinstance(adapter, _TrackingAdapter)
            assert adapter.max_retries.total == 0
            assert adapter._pool_maxsize == 5  # type: ignore[attr-defined]
            assert adapter._pool_connections == 2  # type: ignore[attr-defined]
        assert session.adapters["https://"] is session.adapters["http://"]
    finally:
        session.close()


def test_new_session_falls_back_to_curl_ca_bundle_then_to_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "b.pem"))
    with new_session("https://api.example.invalid") as session:
        assert session.verify == str(tmp_path / "b.pem")
        assert session.adapters["https://"]._pool_maxsize == 16  # type: ignore[attr-defined]
    monkeypatch.delenv("CURL_CA_BUNDLE")
    with new_session("https://api.example.invalid") as session:
        assert session.verify is True
        assert session.proxies == {"no": "127.0.0.1,localhost"}  # as requests reads it


def _abort_a_read_under_way(
    server: FaultServer, session: requests.Session, scheme: str, endpoint: str
) -> BaseException | None:
    """POST to ``server`` (which hangs) from a thread, abort the session's tracked adapter once
    the request has arrived, and return what ended the POST (``None``: it returned)."""
    adapter = session.adapters[f"{scheme}://"]
    assert isinstance(adapter, _TrackingAdapter)
    server.set_default(hang())
    outcome: list[BaseException | None] = []

    def post() -> None:
        try:
            session.post(f"{endpoint}/track", data=b"[]", timeout=30)
            outcome.append(None)
        except BaseException as exc:  # what ended the read is the outcome
            outcome.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    try:
        assert server.wait_for_requests(1)
        adapter.abort()
        thread.join(10)  # a bound for a loaded machine; the abort ends the read at once
        assert not thread.is_alive()
    finally:
        server.stop()
        thread.join()
        session.close()
    assert len(outcome) == 1
    return outcome[0]


def test_abort_ends_a_read_under_way_on_a_tracked_connection(server: FaultServer) -> None:
    session = new_session(server.endpoint)
    ended = _abort_a_read_under_way(server, session, "http", server.endpoint)
    assert isinstance(ended, requests.ConnectionError)


# ---------------------------------------------------------------------------- delivery outcomes


def test_every_chunk_is_accepted_and_counted(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    transport = make_transport(max_batch_size=2)
    calls = {"identify": items(1), "track": items(5)}

    report = transport.deliver(calls, far())

    assert report.accepted == {"identify": 1, "track": 5}
    assert report.rejected == Counter()
    assert report.pending == {}
    assert report.pending_reason is None
    assert [r.path for r in server.requests] == ["/identify", "/track", "/track", "/track"]
    assert events(server.requests_to("/track")) == [["e0", "e1"], ["e2", "e3"], ["e4"]]
    stats = transport._stats.snapshot()
    assert stats["calls_exported"] == 6
    assert stats["requests"] == 4


def test_the_body_is_gzipped_when_asked(server: FaultServer, make_transport: MakeTransport) -> None:
    transport = make_transport(compression="gzip")
    report = transport.deliver({"track": items(2)}, far())
    assert report.accepted == {"track": 2}
    (request,) = server.requests
    assert request.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(request.raw_body)) == items(2)
    # Byte for byte (but the header's mtime) what level 5 makes: the speed/size trade chosen.
    # Fifty varied items: small bodies compress alike at every level.
    many = [
        {"event": f"e{i}", "distinct_id": f"user-{i * 7919 % 1000}", "n": i * i} for i in range(50)
    ]
    assert transport.deliver({"track": many}, far()).accepted == {"track": 50}
    raw = server.requests[1].raw_body
    expected = gzip.compress(encode_json(many), compresslevel=5)
    assert raw[:4] + raw[8:] == expected[:4] + expected[8:]


def test_a_closed_transport_sends_nothing_and_owes_everything(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    transport = make_transport(max_batch_size=2)
    transport.close()
    assert transport.closed
    calls = {"identify": items(1), "track": items(3)}

    report = transport.deliver(calls, far())

    assert server.requests == []
    assert report.pending == calls
    assert report.pending_reason == "retryable"
    assert report.accepted == {}


def test_past_the_exit_deadline_nothing_is_sent(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    assert not transport.exiting
    transport.begin_exit(0.0)  # long past on the monotonic clock
    assert transport.exiting

    report = transport.deliver({"track": items(2)}, far())

    assert server.requests == []
    assert report.pending == {"track": items(2)}
    assert report.pending_reason == "retryable"


def test_while_exiting_a_retryable_answer_is_not_retried(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    server.set_default(retry_later(503, retry_after="0"))
    transport = make_transport()
    transport.begin_exit(far())

    report = transport.deliver({"track": items(2)}, far())

    assert len(server.requests) == 1
    assert report.pending == {"track": items(2)}
    assert report.pending_reason == "retryable"
    assert said(logs) == [(logging.DEBUG, "interpreter exiting: no retry of track (HTTP 503)")]


def test_retries_exhausted_are_said_once_per_chunk_with_the_attempts(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    server.set_default(retry_later(503, retry_after="0"))
    transport = make_transport(max_batch_size=2)

    report = transport.deliver({"track": items(3)}, far())

    assert len(server.requests) == 4  # total=3 retries: 4 attempts, then the rest is owed
    assert report.pending == {"track": items(3)}
    assert report.pending_reason == "retryable"
    assert said(logs) == [
        (logging.DEBUG, "retrying track in 0.00s after HTTP 503"),
        (logging.DEBUG, "retrying track in 0.00s after HTTP 503"),
        (logging.DEBUG, "retrying track in 0.00s after HTTP 503"),
        (
            logging.WARNING,
            "Altertable track failed after 4 attempt(s) (HTTP 503); the calls are kept for a "
            "later export if a spool is configured",
        ),
    ]
    stats = transport._stats.snapshot()
    assert stats["retries"] == 3
    assert stats["requests"] == 4


def test_the_backoff_delay_is_said_and_waited(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    server.script("/track", [retry_later(503), retry_later(503)])
    policy = RetryPolicy(total=2, backoff_factor=0.01, backoff_max=0.05, jitter=0)
    transport = make_transport(retry=policy)

    thread, reports = _deliver_in_thread(transport, {"track": items(1)})
    thread.join(10)  # two waits of 0.01 s and 0.02 s: a 10 s bound for a loaded machine
    hung = thread.is_alive()
    transport.close()  # ends a wait that never would
    thread.join()
    assert not hung

    (report,) = reports
    assert report.accepted == {"track": 1}
    assert said(logs) == [
        (logging.DEBUG, "retrying track in 0.01s after HTTP 503"),
        (logging.DEBUG, "retrying track in 0.02s after HTTP 503"),
    ]
    first, second, third = server.requests
    assert second.received_at - first.received_at >= 0.01
    assert third.received_at - second.received_at >= 0.02


def test_no_retry_when_the_wait_would_pass_the_deadline(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    server.set_default(retry_later(429, retry_after="5"))
    transport = make_transport()

    report = transport.deliver({"track": items(1)}, time.monotonic() + 2)  # 5 s > 2 s

    assert len(server.requests) == 1
    assert report.pending == {"track": items(1)}
    assert report.pending_reason == "retryable"
    assert said(logs) == [(logging.DEBUG, "no time left for a retry of track (HTTP 429)")]
    assert transport._stats.snapshot()["retries"] == 0


def test_a_past_deadline_sends_nothing(server: FaultServer, make_transport: MakeTransport) -> None:
    transport = make_transport()
    report = transport.deliver({"track": items(1)}, time.monotonic())
    assert server.requests == []
    assert report.pending == {"track": items(1)}
    assert report.pending_reason == "retryable"


# ---------------------------------------------------------------------------- refusals


def test_one_bad_item_is_found_by_halving_and_the_rest_accepted(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.add_rule(reject_items(lambda item: item["event"] == "e2"))
    transport = make_transport()

    report = transport.deliver({"track": items(5)}, far())

    assert events(server.requests) == [
        ["e0", "e1", "e2", "e3", "e4"],
        ["e0", "e1"],
        ["e2", "e3", "e4"],
        ["e2"],
        ["e3", "e4"],
    ]
    assert report.accepted == {"track": 4}
    assert report.rejected == Counter({"invalid-event": 1})
    assert report.detail == "last: track 'e2' refused with HTTP 400 invalid-event"
    assert report.pending == {}
    stats = transport._stats.snapshot()
    assert stats["calls_exported"] == 4
    assert stats["calls_dropped"] == 1
    assert stats["dropped_by_reason"] == {"invalid-event": 1}


def test_a_stop_inside_the_first_half_owes_the_second_and_the_rest(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.script("/track", [bad_request()])
    server.set_default(unauthorized())
    transport = make_transport(max_batch_size=4)
    calls = {"track": items(6), "alias": items(1, start=10)}

    report = transport.deliver(calls, far())

    assert events(server.requests) == [["e0", "e1", "e2", "e3"], ["e0", "e1"]]
    assert report.pending == calls  # in order: the half refused, its other half, the rest
    assert report.pending_reason == "auth"
    assert report.accepted == {}
    assert report.rejected == Counter()


def test_a_stop_inside_the_second_half_owes_only_that_half(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.script("/track", [bad_request(), Answer(200)])
    server.set_default(unauthorized())
    transport = make_transport()

    report = transport.deliver({"track": items(4)}, far())

    assert events(server.requests) == [["e0", "e1", "e2", "e3"], ["e0", "e1"], ["e2", "e3"]]
    assert report.accepted == {"track": 2}
    assert report.pending == {"track": items(2, start=2)}
    assert report.pending_reason == "auth"


@pytest.mark.parametrize(
    ("item", "endpoint", "named"),
    [
        ({"event": "Signed Up", "distinct_id": "u1"}, "track", "'Signed Up'"),
        ({"distinct_id": "u1", "traits": {}}, "identify", "'u1'"),
        ({"new_user_id": "u2"}, "alias", "'alias'"),
    ],
)
def test_the_refusal_detail_names_the_item(
    server: FaultServer,
    make_transport: MakeTransport,
    item: dict[str, Any],
    endpoint: str,
    named: str,
) -> None:
    server.set_default(bad_request("invalid-payload", status=422))
    transport = make_transport()

    report = transport.deliver({endpoint: [item]}, far())

    assert report.rejected == Counter({"invalid-payload": 1})
    assert report.detail == f"last: {endpoint} {named} refused with HTTP 422 invalid-payload"


def test_a_refusal_about_the_request_drops_the_chunk_whole_by_status(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.set_default(Answer(415, body=b""))
    transport = make_transport(max_batch_size=3)

    report = transport.deliver({"track": items(5)}, far())

    assert sizes(server.requests) == [3, 2]
    assert report.rejected == Counter({"http-415": 5})
    assert report.detail == "last: track 2 items, first 'e3' refused with HTTP 415 http-415"
    stats = transport._stats.snapshot()
    assert stats["calls_dropped"] == 5
    assert stats["dropped_by_reason"] == {"http-415": 5}
    report = transport.deliver({"track": items(1, start=7)}, far())
    assert report.detail == "last: track 'e7' refused with HTTP 415 http-415"


def test_a_refusal_about_the_request_is_counted_by_status_whatever_its_code(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.set_default(bad_request("unsupported-type", status=415))
    transport = make_transport()

    report = transport.deliver({"track": items(3)}, far())

    assert sizes(server.requests) == [3]
    assert report.rejected == Counter({"http-415": 3})
    assert report.detail == "last: track 3 items, first 'e0' refused with HTTP 415 unsupported-type"


def test_a_long_error_code_is_cut_for_the_reason_and_the_detail(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    code = "x" * 300
    server.set_default(bad_request(code))
    transport = make_transport()

    report = transport.deliver({"track": items(1)}, far())

    reason = "x" * 64 + "... (300 characters)"
    assert report.rejected == Counter({reason: 1})
    assert (
        report.detail == f"last: track 'e0' refused with HTTP 400 {'x' * 200}... (300 characters)"
    )


def test_ok_false_is_bisected_like_a_400(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.script("/track", [Answer(200, body={"ok": False, "error_code": "insert-failed"})])
    transport = make_transport()

    report = transport.deliver({"track": items(2)}, far())

    assert sizes(server.requests) == [2, 1, 1]
    assert report.accepted == {"track": 2}


def test_413_halves_until_each_part_fits(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.add_rule(lambda request: Answer(413, body=b"") if len(request.items) > 1 else None)
    transport = make_transport()

    report = transport.deliver({"track": items(3)}, far())

    assert sizes(server.requests) == [3, 1, 2, 1, 1]
    assert report.accepted == {"track": 3}
    assert report.rejected == Counter()


def test_unencodable_items_are_dropped_one_by_one_and_the_rest_sent(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    calls: dict[str, list[dict[str, Any]]] = {
        "track": [*items(1), {"event": "bad", "v": {1, 2}}, *items(1, start=2)],
        "alias": [{"new_user_id": {3}}, {"new_user_id": float("nan")}],
        "identify": items(1, start=9),
    }

    report = transport.deliver(calls, far())

    assert [r.path for r in server.requests] == ["/track", "/identify"]
    assert events(server.requests_to("/track")) == [["e0", "e2"]]
    assert report.accepted == {"track": 2, "identify": 1}
    assert report.rejected == Counter({"unencodable": 3})
    assert report.detail == "last: alias item is not JSON-encodable"
    assert report.pending == {}
    stats = transport._stats.snapshot()
    assert stats["calls_dropped"] == 3
    assert stats["dropped_by_reason"] == {"unencodable": 3}


# ---------------------------------------------------------------------------- what the user reads


def test_a_refused_key_says_which_setting_to_fix_once_then_at_debug(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    server.set_default(unauthorized())
    transport = make_transport()
    calls = {"identify": items(1), "track": items(2)}

    first = transport.deliver(calls, far())
    second = transport.deliver(calls, far())

    message = (
        f"Altertable refused the API key (HTTP 401 from {server.endpoint}). Set "
        "OTEL_EXPORTER_ALTERTABLE_API_KEY (or pass api_key=) to a valid ingestion key "
        "(pk_live_... or pk_test_...) from your Altertable project."
    )
    assert said(logs) == [(logging.ERROR, message), (logging.DEBUG, message)]
    assert [bool(r.exc_info) for r in logs.records if r.name == LOGGER] == [False, False]
    assert len(server.requests) == 2  # one per export: the rest waits for the key
    for report in (first, second):
        assert report.pending == calls
        assert report.pending_reason == "auth"


def test_an_unknown_environment_is_said_once_per_environment(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    server.set_default(env_not_found_400())
    transport = make_transport()

    for environment in ("qa-7", "qa-7", "staging"):
        report = transport.deliver({"track": items(1, environment=environment)}, far())
        assert report.pending_reason == "environment-not-found"
        assert report.rejected == Counter()

    def message(environment: str) -> str:
        return (
            f"Altertable has no environment '{environment}' for this API key (HTTP 400, "
            "environment-not-found). Create it in Altertable, or set "
            "OTEL_EXPORTER_ALTERTABLE_ENVIRONMENT (or the resource attribute "
            "deployment.environment.name) to an existing environment such as 'production'."
        )

    assert said(logs) == [
        (logging.ERROR, message("qa-7")),
        (logging.DEBUG, message("qa-7")),
        (logging.ERROR, message("staging")),
    ]


def test_an_endpoint_that_is_not_the_api_says_to_check_the_url(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    server.set_default(Answer(404, body=b"not here"))
    transport = make_transport()

    report = transport.deliver({"track": items(1)}, far())
    transport.deliver({"track": items(1)}, far())

    assert report.pending == {"track": items(1)}
    assert report.pending_reason == "endpoint-not-found"
    message = (
        f"{server.endpoint} answered HTTP 404 to an Altertable call: is "
        "OTEL_EXPORTER_ALTERTABLE_ENDPOINT the API's base URL (default "
        "https://api.altertable.ai)? Redirects are not followed: use the final URL."
    )
    assert said(logs) == [(logging.ERROR, message), (logging.DEBUG, message)]


def test_a_defect_owes_the_rest_of_the_export_and_is_said_with_its_traceback(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    """An item that is not a dict breaks the refusal's log detail: a defect, caught whole."""
    server.set_default(bad_request())
    transport = make_transport(max_batch_size=1)
    odd: Any = ["not", "a", "dict"]
    calls: dict[str, list[Any]] = {"track": [odd, *items(1)], "alias": items(1, start=5)}

    first = transport.deliver(calls, far())
    second = transport.deliver(calls, far())
    alone = transport.deliver({"track": [odd]}, far())  # nothing after it to owe

    assert len(server.requests) == 3  # the defect stops each export after its first chunk
    for report in (first, second):
        assert report.pending == calls
        assert report.pending_reason == "retryable"
        assert report.accepted == {}
    assert alone.pending == {"track": [odd]}
    assert alone.pending_reason == "retryable"
    message = "Altertable delivery failed unexpectedly; the calls are kept as owed"
    assert said(logs) == [
        (logging.ERROR, message),
        (logging.DEBUG, message),
        (logging.DEBUG, message),
    ]
    error, repeat, _ = (r for r in logs.records if r.name == LOGGER)
    assert error.exc_info is not None
    assert error.exc_info[0] is AttributeError
    assert repeat.exc_info is None


def test_a_request_error_nobody_anticipated_is_said_once_by_its_type(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    session = requests.Session()
    failures = [LookupError("x" * 300), LookupError("again"), KeyError("other")]

    def hook(response: requests.Response, **_: Any) -> None:
        raise failures.pop(0)

    session.hooks["response"].append(hook)
    transport = make_transport(session)
    try:
        reports = [transport.deliver({"track": items(2)}, far()) for _ in range(3)]
    finally:
        session.close()

    for report in reports:
        assert report.pending == {"track": items(2)}
        assert report.pending_reason == "retryable"
    assert len(server.requests) == 3  # not retried
    tail = "; the calls are kept as owed"
    assert said(logs) == [
        (
            logging.ERROR,
            f"Altertable request failed (LookupError: {'x' * 200}... (300 characters)){tail}",
        ),
        (logging.DEBUG, f"Altertable request failed (LookupError: again){tail}"),
        (logging.ERROR, f"Altertable request failed (KeyError: 'other'){tail}"),
    ]


def test_deliver_itself_never_raises(server: FaultServer, api_key: str) -> None:
    session = requests.Session()

    def hook(response: requests.Response, **_: Any) -> None:
        raise LookupError("not a network error")

    session.hooks["response"].append(hook)
    config = resolve_config(api_key=api_key, endpoint=server.endpoint, timeout=2)
    transport = Transport(config, session)
    items = [{"event": f"e{i}", "distinct_id": "u"} for i in range(3)]
    try:
        report = transport.deliver({"track": items, "alias": items[:1]}, deadline=1e18)
    finally:
        session.close()
    assert report.pending == {"track": items, "alias": items[:1]}
    assert report.accepted == {}


def test_an_interrupt_mid_request_owes_the_rest_and_is_handed_back(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    session = requests.Session()
    interrupt = KeyboardInterrupt()

    def hook(response: requests.Response, **_: Any) -> None:
        raise interrupt

    session.hooks["response"].append(hook)
    transport = make_transport(session, max_batch_size=2)
    calls = {"track": items(3), "alias": items(1)}
    try:
        report = transport.deliver(calls, far())
        alone = transport.deliver({"identify": items(1)}, far())  # nothing after it
    finally:
        session.close()

    assert report.interrupted is interrupt
    assert report.pending == calls
    assert report.pending_reason == "retryable"
    assert alone.interrupted is interrupt
    assert alone.pending == {"identify": items(1)}
    assert alone.pending_reason == "retryable"
    assert len(server.requests) == 2


def test_the_told_keys_are_bounded_and_forgotten_all_at_once(
    make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    transport = make_transport()
    for n in range(257):
        transport._tell_once(f"k{n}", "m %s", n)
    transport._tell_once("k0", "again %s", 0)  # 257 keys kept: still known
    transport._tell_once("k257", "m %s", 257)  # one more: the set starts over
    transport._tell_once("k0", "once more %s", 0)

    levels = said(logs)
    assert levels[:257] == [(logging.ERROR, f"m {n}") for n in range(257)]
    assert levels[257:] == [
        (logging.DEBUG, "again 0"),
        (logging.ERROR, "m 257"),
        (logging.ERROR, "once more 0"),
    ]


TLS_MESSAGE = (
    "Altertable TLS error talking to %s: %s (%s). The calls are kept as owed and not retried "
    "until this is fixed: behind a TLS-intercepting proxy, or with a private CA, set "
    "REQUESTS_CA_BUNDLE to its CA certificate; if the endpoint serves plain HTTP, use http:// "
    "in %s."
)


TLS_CASES = {
    "self-signed": (
        True,
        "the certificate is not trusted (self-signed, or a TLS-intercepting proxy's)",
        "certificate verify failed",
    ),
    "plain-http": (
        False,
        "the endpoint does not speak TLS (a plain-HTTP port behind https://?)",
        "SSL",
    ),
}


@pytest.mark.parametrize("case", list(TLS_CASES))
def test_a_tls_failure_says_the_fix_once_and_owes_the_calls_for_the_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    case: str,
) -> None:
    tls, problem, cause = TLS_CASES[case]
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    context = tls_context(*tls_files(tmp_path)) if tls else None
    with FaultServer(tls=context) as server:
        endpoint = f"https://127.0.0.1:{server.port}"
        transport = Transport(config_for(endpoint))
        try:
            calls = {"track": items(2), "alias": items(1)}
            reports = [transport.deliver(calls, far()) for _ in range(2)]
        finally:
            transport.release()
        connections = server.connections_accepted

    assert connections == 2  # one per export: a setting error is not retried
    for report in reports:
        assert report.pending == calls
        assert report.pending_reason == "tls"
    records = [r for r in logs.records if r.name == LOGGER]
    assert [(r.levelno, r.msg) for r in records] == [
        (logging.ERROR, TLS_MESSAGE),
        (logging.DEBUG, TLS_MESSAGE),
    ]
    for record in records:
        assert isinstance(record.args, tuple)
        shown, named, text, variable = record.args
        assert (shown, named, variable) == (endpoint, problem, "OTEL_EXPORTER_ALTERTABLE_ENDPOINT")
        assert isinstance(text, str)
        assert cause in text
        assert len(text) <= 230  # the exception is cut to 200 characters and its length
        assert record.getMessage() == TLS_MESSAGE % record.args


# ---------------------------------------------------------------------------- lifecycle


def _deliver_in_thread(
    transport: Transport, calls: dict[str, Any]
) -> tuple[threading.Thread, list[DeliveryReport]]:
    reports: list[DeliveryReport] = []
    thread = threading.Thread(target=lambda: reports.append(transport.deliver(calls, far())))
    thread.start()
    return thread, reports


def test_abort_requests_ends_a_request_to_a_hung_server_at_once(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.set_default(hang())
    transport = make_transport(retry=RetryPolicy(total=0))
    thread, reports = _deliver_in_thread(transport, {"track": items(2)})
    try:
        assert server.wait_for_requests(1)
        transport.abort_requests()
        thread.join(10)  # the deadline is 30 s away: ending at all is the abort's doing
        assert not thread.is_alive()
    finally:
        server.stop()
        thread.join()
    (report,) = reports
    assert report.pending == {"track": items(2)}
    assert report.pending_reason == "retryable"


def test_abort_requests_ends_a_request_on_the_own_session_too(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path taken behind a SOCKS proxy: requests' session instead of the urllib3 pool."""
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("no_proxy")
    transport = Transport(config_for(server.endpoint, retry=RetryPolicy(total=0)))
    sender = transport._sender
    assert isinstance(sender, OwnSession)
    assert sender.session.proxies == {"http": "socks5://127.0.0.1:1"}
    sender.session.proxies.clear()  # no SOCKS library here: reach the server directly
    server.set_default(hang())
    thread, reports = _deliver_in_thread(transport, {"track": items(1)})
    try:
        assert server.wait_for_requests(1)
        transport.abort_requests()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        server.stop()
        thread.join()
        transport.release()
    (report,) = reports
    assert report.pending == {"track": items(1)}


def test_abort_requests_leaves_a_users_session_alone(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    """A user's session built like the own one (tracked sockets): still not ours to cut."""
    server.set_default(Answer(200, delay=0.5))
    session = new_session(server.endpoint)
    transport = make_transport(session, retry=RetryPolicy(total=0))
    thread, reports = _deliver_in_thread(transport, {"track": items(1)})
    try:
        assert server.wait_for_requests(1)
        transport.abort_requests()
        thread.join()
    finally:
        session.close()
    (report,) = reports
    assert report.accepted == {"track": 1}
    assert len(server.requests) == 1


@pytest.mark.parametrize("own", [True, False], ids=["own-pool", "user-session"])
def test_release_closes_only_connections_the_transport_opened(
    server: FaultServer, make_transport: MakeTransport, own: bool
) -> None:
    session = None if own else requests.Session()
    transport = make_transport(session)
    transport.deliver({"track": items(1)}, far())
    transport.release()
    report = transport.deliver({"track": items(1)}, far())
    assert report.accepted == {"track": 1}
    assert server.connections_accepted == (2 if own else 1)
    if session is not None:
        session.close()


def test_release_closes_the_own_session(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("no_proxy")
    transport = Transport(config_for(server.endpoint))
    assert isinstance(transport._sender, OwnSession)
    transport._sender.session.proxies.clear()  # as above: no SOCKS library here
    transport.deliver({"track": items(1)}, far())
    transport.release()
    report = transport.deliver({"track": items(1)}, far())
    transport.release()
    assert report.accepted == {"track": 1}
    assert server.connections_accepted == 2


def _as_if_forked(transport: Transport) -> None:
    """The next delivery runs as in a forked child (its pid differs from the recorded one)."""
    transport._pid = -1


@pytest.mark.parametrize("own", [True, False], ids=["own-pool", "user-session"])
def test_after_a_fork_the_child_opens_its_own_connections(
    server: FaultServer, make_transport: MakeTransport, own: bool
) -> None:
    session = None if own else requests.Session()
    transport = make_transport(session)
    sender = transport._sender
    transport.deliver({"track": items(1)}, far())
    _as_if_forked(transport)
    report = transport.deliver({"track": items(1, start=1)}, far())
    again = transport.deliver({"track": items(1, start=2)}, far())
    assert report.accepted == again.accepted == {"track": 1}
    assert [r.connection for r in server.requests] == [1, 2, 2]
    if own:
        assert isinstance(transport._sender, OwnPool)
        assert transport._sender is not sender
    else:
        assert isinstance(transport._sender, GivenSession)
        assert transport._sender.session is session
        session.close()  # type: ignore[union-attr]


def test_after_a_fork_a_closed_transport_stays_closed(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    transport.close()
    _as_if_forked(transport)
    report = transport.deliver({"track": items(1)}, far())
    assert transport.closed
    assert server.requests == []
    assert report.pending == {"track": items(1)}


def test_after_a_fork_the_child_waits_its_own_backoff_and_says_its_own_errors(
    server: FaultServer, make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    transport = make_transport()
    transport._wake.set()  # the parent was woken (exiting): the child's waits are its own
    _as_if_forked(transport)
    server.script("/track", [retry_later(503, retry_after="0"), unauthorized()])
    report = transport.deliver({"track": items(1)}, far())
    assert len(server.requests) == 2
    assert report.pending_reason == "auth"
    assert [level for level, _ in said(logs)] == [logging.DEBUG, logging.ERROR]


# ---------------------------------------------------------------------------- the answer's deadline


def test_an_answer_read_after_the_deadline_is_a_timeout_not_an_error(
    server: FaultServer,
) -> None:
    """``read_stream`` checks the clock before each read, not only through the socket timeout.

    The socket timeout is set to what is left, so a trickle is usually ended by it; the check
    is what stands between a deadline already past and ``settimeout`` refusing a negative
    value (a ``ValueError`` nobody would classify as a timeout).
    """
    pool = urllib3.PoolManager()
    try:
        raw = pool.request("POST", f"{server.endpoint}/track", body=b"[]", preload_content=False)
        with pytest.raises(AnswerTimeout):
            read_stream(raw, time.monotonic() - 1)
        assert raw.closed  # not read to its end: the connection is not reused
    finally:
        pool.clear()


def test_the_own_session_tracks_https_connections_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with FaultServer(tls=tls_context(cert, key)) as server:
        endpoint = f"https://127.0.0.1:{server.port}"
        ended = _abort_a_read_under_way(server, new_session(endpoint), "https", endpoint)
    assert isinstance(ended, requests.ConnectionError)


def test_abort_tolerates_connections_the_server_already_closed(server: FaultServer) -> None:
    session = new_session(server.endpoint)
    adapter = session.adapters["http://"]
    assert isinstance(adapter, _TrackingAdapter)
    try:
        assert session.post(f"{server.endpoint}/track", data=b"[]", timeout=5).status_code == 200
        (conn,) = list(adapter._connections)
        server.stop()  # shuts its end of the kept-alive connection
        assert select.select([conn.sock], [], [], 5)[0]  # the server's FIN has arrived
        for _ in range(3):
            adapter.abort()  # the socket is past shutting down: that error is not ours
    finally:
        session.close()


# ---------------------------------------------------------------------------- more of the contract


def test_a_delivery_closed_mid_request_owes_the_chunks_not_sent(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    gate = threading.Event()

    def hold_first(request: Request) -> Answer | None:
        gate.wait(10)  # the test opens it once the transport is closed
        return None

    server.add_rule(hold_first)
    transport = make_transport(max_batch_size=2)
    thread, reports = _deliver_in_thread(transport, {"track": items(4), "alias": items(1)})
    try:
        assert server.wait_for_requests(1)
        transport.close()
    finally:
        gate.set()
        thread.join()
    (report,) = reports
    assert report.accepted == {"track": 2}  # the request under way was answered and counted
    assert report.pending == {"track": items(2, start=2), "alias": items(1)}
    assert report.pending_reason == "retryable"
    assert len(server.requests) == 1


def test_a_deadline_under_a_second_away_still_sends(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    # 0.9 s for one loopback request: the margin on a loaded machine.
    report = transport.deliver({"track": items(1)}, time.monotonic() + 0.9)
    assert report.accepted == {"track": 1}


def test_connection_failures_name_their_class_when_the_budget_is_spent(
    make_transport: MakeTransport, logs: pytest.LogCaptureFixture
) -> None:
    with refusing_endpoint() as endpoint:
        transport = Transport(config_for(endpoint, retry=RetryPolicy(total=1, backoff_factor=0)))
        try:
            report = transport.deliver({"identify": items(1)}, far())
        finally:
            transport.release()
    assert report.pending == {"identify": items(1)}
    assert report.pending_reason == "retryable"
    assert said(logs) == [
        (logging.DEBUG, "retrying identify in 0.00s after NewConnectionError"),
        (
            logging.WARNING,
            "Altertable identify failed after 2 attempt(s) (NewConnectionError); the calls are "
            "kept for a later export if a spool is configured",
        ),
    ]
    stats = transport._stats.snapshot()
    assert stats["requests"] == 0  # no answer: not a request the API saw
    assert stats["retries"] == 1


def test_a_users_session_sends_the_same_request_and_reads_the_whole_answer(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    session = requests.Session()
    transport = make_transport(session, sync=True)
    server.script("/track", [Answer(200, body={"ok": False, "error_code": "insert-failed"})])
    try:
        report = transport.deliver({"track": items(2)}, far())
    finally:
        session.close()
    assert report.accepted == {"track": 2}  # the ok: false was read (streamed), so bisected
    assert sizes(server.requests) == [2, 1, 1]
    first = server.requests[0]
    assert first.target == "/track?sync=true"
    assert {k: first.headers[k] for k in ("content-type", "user-agent", "x-api-key")} == {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "x-api-key": FAKE_API_KEY,
    }
    assert first.headers["accept-encoding"] == ACCEPT_ENCODING


def test_a_users_session_does_not_follow_redirects(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    session = requests.Session()
    server.set_default(Answer(307, body=b"", headers={"Location": "/elsewhere"}), path="/track")
    transport = make_transport(session)
    try:
        report = transport.deliver({"track": items(1)}, far())
    finally:
        session.close()
    assert [r.path for r in server.requests] == ["/track"]
    assert report.pending_reason == "endpoint-not-found"


@pytest.mark.parametrize("own", [True, False], ids=["own-pool", "user-session"])
def test_an_answer_later_than_the_deadline_is_not_waited_for(
    server: FaultServer, make_transport: MakeTransport, own: bool
) -> None:
    """The answer comes 5 s after the request; the deadline is 0.5 s away: it is not waited for.

    A time bound is the contract here: the export ends by its deadline (2.5 s of margin for a
    loaded machine), well before the answer would have come.
    """
    server.set_default(Answer(200, delay=5))
    session = None if own else requests.Session()
    transport = make_transport(session, retry=RetryPolicy(total=0))
    try:
        started = time.monotonic()
        report = transport.deliver({"track": items(1)}, started + 0.5)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
        if session is not None:
            session.close()
    assert elapsed < 3.0
    assert report.accepted == {}
    assert report.pending == {"track": items(1)}
    assert report.pending_reason == "retryable"


def test_plain_http_through_a_proxy_names_the_whole_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy is a loopback server: it receives ``POST http://host:port/track?sync=true``."""
    with FaultServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.delenv("no_proxy")
        transport = Transport(config_for("http://api.example.invalid:8080", sync=True))
        try:
            report = transport.deliver({"alias": items(1)}, far())
        finally:
            transport.release()
        (request,) = proxy.requests
    assert report.accepted == {"alias": 1}
    assert request.target == "http://api.example.invalid:8080/alias?sync=true"


def test_after_a_fork_behind_a_socks_proxy_the_child_makes_its_own_session(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("no_proxy")
    transport = Transport(config_for(server.endpoint))
    parent = transport._sender
    try:
        _as_if_forked(transport)
        report = transport.deliver({"track": items(1)}, far())
        child = transport._sender
    finally:
        transport.release()
    assert isinstance(parent, OwnSession)
    assert isinstance(child, OwnSession)
    child_session = child.session
    assert child_session is not parent.session
    assert child_session.proxies == {"http": "socks5://127.0.0.1:1"}
    # No SOCKS library here: the request fails before leaving, a setting the user must fix.
    assert report.pending == {"track": items(1)}
    assert server.requests == []
    ((level, message),) = said(logs)
    assert level == logging.ERROR
    assert message.startswith("Altertable request failed (InvalidSchema: ")


def test_close_during_a_backoff_ends_it_and_owes_the_chunk(
    server: FaultServer, make_transport: MakeTransport
) -> None:
    server.set_default(retry_later(503, retry_after="20"))
    transport = make_transport()
    thread, reports = _deliver_in_thread(transport, {"track": items(2)})
    try:
        assert server.wait_for_requests(1)
        transport.close()  # before or during the 20 s wait: either way it ends at once
        thread.join(10)  # the deadline is 30 s away, the wait 20 s: ending is the close's doing
        assert not thread.is_alive()
    finally:
        server.stop()
        thread.join()
    (report,) = reports
    assert report.pending == {"track": items(2)}
    assert report.pending_reason == "retryable"
    assert len(server.requests) == 1
