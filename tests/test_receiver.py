"""The local receiver over real loopback HTTP: the API's auth, validation, error codes and
batch semantics, and the DuckDB layout that lets the tracking guide's SQL run verbatim."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from guide import GUIDE_EVENTS_BY_CURRENCY, GUIDE_IDENTITIES, GUIDE_USER_EVENTS, USER

from opentelemetry_exporter_altertable.receiver import (
    BUILT_IN_PROPERTIES,
    LocalReceiver,
    measure_ingest,
)
from opentelemetry_exporter_altertable.receiver._validation import (
    ApiError,
    _parse_iso,
    parse_timestamp,
)

KEY = "pk_test_receiver"



@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver() as local:
        yield local


@pytest.fixture
def keyed() -> Iterator[LocalReceiver]:
    with LocalReceiver(api_keys=[KEY]) as local:
        yield local


@pytest.fixture
def api() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-API-Key"] = KEY
        yield session


def track(event: str = "Button Clicked", **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"environment": "production", "event": event, "properties": {}}
    payload.update(fields)
    return payload


def post(
    session: requests.Session, receiver: LocalReceiver, path: str, body: Any, **kwargs: Any
) -> requests.Response:
    return session.post(receiver.endpoint + path, json=body, timeout=10, **kwargs)


def lakehouse(
    receiver: LocalReceiver, statement: str, auth: tuple[str, str] = ("local", "local")
) -> tuple[dict[str, Any], list[dict[str, str]], list[list[Any]]]:
    """POST /query as the Lakehouse client does: metadata, columns, rows."""
    response = requests.post(
        receiver.endpoint + "/query", json={"statement": statement}, auth=auth, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines() if line]
    return lines[0], lines[1], lines[2:]


def count(receiver: LocalReceiver, where: str = "true") -> int:
    rows = receiver.query(f"SELECT count(*) FROM altertable.analytics.events WHERE {where}")
    return int(rows[0][0])


def assert_ok(response: requests.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    assert body["error_code"] is None
    assert len(body["task_id"]) == 36


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["ok"] is False
    assert body["error_code"] == code
    assert body["task_id"] is None
    return body


# -- auth --------------------------------------------------------------------------------------


def test_health_answers_without_a_key(keyed: LocalReceiver) -> None:
    response = requests.get(keyed.endpoint + "/health", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"ok": True}


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"X-API-Key": KEY}, {}),
        ({"Authorization": f"Bearer {KEY}"}, {}),
        ({"Authorization": f"bearer {KEY}"}, {}),
        ({}, {"apiKey": KEY}),
    ],
    ids=["x-api-key", "bearer", "bearer-lowercase", "query-param"],
)
@pytest.mark.parametrize("path", ["/track", "/identify", "/alias"])
def test_each_way_to_pass_the_key_is_accepted(
    keyed: LocalReceiver, headers: dict[str, str], params: dict[str, str], path: str
) -> None:
    body = {
        "/track": track(),
        "/identify": {"environment": "production", "distinct_id": "u1"},
        "/alias": {"environment": "production", "distinct_id": "a", "new_user_id": "b"},
    }[path]
    response = requests.post(
        keyed.endpoint + path, json=body, headers=headers, params=params, timeout=5
    )
    assert_ok(response)


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"X-API-Key": "pk_test_wrong"}, {}),
        ({"X-API-Key": ""}, {}),
        ({"Authorization": "Bearer pk_test_wrong"}, {}),
        ({"Authorization": f"Basic {KEY}"}, {}),
        ({}, {"apiKey": "pk_test_wrong"}),
        ({"X-API-Key": "pk_test_wrong"}, {"apiKey": KEY}),
    ],
    ids=[
        "none",
        "wrong-header",
        "empty-header",
        "wrong-bearer",
        "basic",
        "wrong-param",
        "header-wins",
    ],
)
@pytest.mark.parametrize("path", ["/track", "/identify", "/alias"])
def test_missing_or_wrong_key_is_401_with_an_empty_body(
    keyed: LocalReceiver, headers: dict[str, str], params: dict[str, str], path: str
) -> None:
    response = requests.post(
        keyed.endpoint + path, json=track(), headers=headers, params=params, timeout=5
    )
    assert response.status_code == 401
    assert response.content == b""
    assert response.headers["Content-Length"] == "0"
    assert count(keyed) == 0


def test_without_configured_keys_any_non_empty_key_is_accepted(receiver: LocalReceiver) -> None:
    url = receiver.endpoint + "/track"
    assert_ok(requests.post(url, json=track(), headers={"X-API-Key": "anything"}, timeout=5))
    assert requests.post(url, json=track(), headers={"X-API-Key": ""}, timeout=5).status_code == 401
    assert requests.post(url, json=track(), timeout=5).status_code == 401
    assert count(receiver) == 1


# -- bodies ------------------------------------------------------------------------------------


def test_single_object_and_array_bodies(receiver: LocalReceiver, api: requests.Session) -> None:
    assert_ok(post(api, receiver, "/track", track("One")))
    assert_ok(post(api, receiver, "/track", [track("Many"), track("Many"), track("Many")]))
    assert_ok(post(api, receiver, "/track", []))
    rows = receiver.query(
        "SELECT event, count(*) FROM altertable.analytics.events GROUP BY ALL ORDER BY event"
    )
    assert rows == [("Many", 3), ("One", 1)]


def test_fields_are_stored_as_sent(receiver: LocalReceiver, api: requests.Session) -> None:
    payload = track(
        "Purchase Completed",
        properties={"amount": 99.99, "currency": "USD", "tags": ["a", "é"], "$lib": "x"},
        distinct_id=USER,
        anonymous_id="anon-1",
        device_id="device-1",
        session_id="sess-1",
        timestamp="2025-01-15T10:30:00.123Z",
        unknown_top_level_field="ignored",
    )
    assert_ok(post(api, receiver, "/track", payload))
    row = receiver.query(
        "SELECT event, properties, distinct_id, anonymous_id, device_id, session_id, "
        "environment, timestamp, length(uuid) FROM altertable.analytics.events"
    )[0]
    assert json.loads(row[1]) == payload["properties"]
    assert row[0] == "Purchase Completed"
    assert row[2:7] == (USER, "anon-1", "device-1", "sess-1", "production")
    assert row[7] == datetime(2025, 1, 15, 10, 30, 0, 123000, tzinfo=timezone.utc)
    assert row[8] == 36


def test_gzip_body_is_accepted(receiver: LocalReceiver, api: requests.Session) -> None:
    body = gzip.compress(json.dumps([track("Zipped")] * 5).encode())
    response = api.post(
        receiver.endpoint + "/track",
        data=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=5,
    )
    assert_ok(response)
    assert count(receiver, "event = 'Zipped'") == 5


def test_broken_gzip_is_400(receiver: LocalReceiver, api: requests.Session) -> None:
    response = api.post(
        receiver.endpoint + "/track",
        data=b"not gzip at all",
        headers={"Content-Encoding": "gzip"},
        timeout=5,
    )
    assert_error(response, 400, "invalid-json")


def test_chunked_body_is_accepted(receiver: LocalReceiver, api: requests.Session) -> None:
    data = json.dumps([track("Chunked")] * 3).encode()
    pieces = iter([data[:10], data[10:]])  # a generator makes requests send it chunked
    response = api.post(receiver.endpoint + "/track", data=pieces, timeout=5)
    assert_ok(response)
    assert count(receiver, "event = 'Chunked'") == 3


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b'{"environment": "production", "event": "x", "properties": {"n": NaN}}',
        b'{"environment": "production", "event": "x", "properties": {"n": 1e999}}',
        b'{"environment": "production", "event": "\\ud800", "properties": {}}',
        b'{"environment": "production", "event": "\xff", "properties": {}}',
    ],
    ids=["syntax", "empty", "nan", "overflow", "lone-surrogate", "bad-utf8"],
)
def test_malformed_json_is_400(receiver: LocalReceiver, api: requests.Session, raw: bytes) -> None:
    response = api.post(receiver.endpoint + "/track", data=raw, timeout=5)
    assert_error(response, 400, "invalid-json")
    assert count(receiver) == 0


SCHEMA_VIOLATIONS = [
    ("/track", {"environment": "production", "properties": {}}),
    ("/track", {"environment": "production", "event": 7, "properties": {}}),
    ("/track", {"event": "x", "properties": {}}),
    ("/track", {"environment": ["production"], "event": "x", "properties": {}}),
    ("/track", {"environment": "production", "event": "x"}),
    ("/track", {"environment": "production", "event": "x", "properties": None}),
    ("/track", {"environment": "production", "event": "x", "properties": ["a"]}),
    ("/track", {"environment": "production", "event": "x", "properties": {}, "distinct_id": 5}),
    ("/track", {"environment": "production", "event": "x", "properties": {}, "timestamp": "soon"}),
    ("/track", {"environment": "production", "event": "x", "properties": {}, "timestamp": True}),
    ("/track", "just a string"),
    ("/track", [track(), "not an object"]),
    ("/identify", {"environment": "production"}),
    ("/identify", {"environment": "production", "distinct_id": 1}),
    ("/identify", {"distinct_id": "u1"}),
    ("/identify", {"environment": "production", "distinct_id": "u1", "traits": "vip"}),
    ("/alias", {"environment": "production", "new_user_id": "b"}),
    ("/alias", {"environment": "production", "distinct_id": "a"}),
    ("/alias", {"distinct_id": "a", "new_user_id": "b"}),
]


@pytest.mark.parametrize(("path", "body"), SCHEMA_VIOLATIONS)
def test_schema_violations_are_422(
    receiver: LocalReceiver, api: requests.Session, path: str, body: Any
) -> None:
    response = post(api, receiver, path, body)
    error = assert_error(response, 422, "invalid-payload")
    assert error["error"] == "invalid-payload"
    assert error["message"]
    assert count(receiver) == 0
    assert receiver.query("SELECT count(*) FROM altertable.analytics.identities") == [(0,)]


def test_a_schema_violation_rejects_the_whole_array(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    response = post(api, receiver, "/track", [track("A"), track("B"), {"event": "no env"}])
    body = assert_error(response, 422, "invalid-payload")
    assert "item 2" in body["message"]
    assert count(receiver) == 0


def test_unknown_environment(receiver: LocalReceiver, api: requests.Session) -> None:
    response = post(api, receiver, "/track", track(environment="prod"))
    body = assert_error(response, 400, "environment-not-found")
    assert "prod" in body["message"]
    for path, payload in [
        ("/identify", {"environment": "prod", "distinct_id": "u1"}),
        ("/alias", {"environment": "prod", "distinct_id": "a", "new_user_id": "b"}),
    ]:
        assert_error(post(api, receiver, path, payload), 400, "environment-not-found")
    assert count(receiver) == 0
    assert receiver.query("SELECT count(*) FROM altertable.analytics.identities") == [(0,)]


def test_custom_environments(api: requests.Session) -> None:
    with LocalReceiver(environments=["qa"]) as local:
        assert_ok(post(api, local, "/track", track(environment="qa")))
        assert_error(post(api, local, "/track", track()), 400, "environment-not-found")
    with LocalReceiver(environments=None) as anything:
        assert_ok(post(api, anything, "/track", track(environment="whatever")))


def test_unknown_dollar_property_is_refused_for_the_whole_request(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    batch = [track("Fine"), track("Bad", properties={"$lib": "x", "$custom": 1})]
    body = assert_error(post(api, receiver, "/track", batch), 400, "unknown-built-in-property")
    assert "$custom" in body["message"]
    assert count(receiver) == 0


def test_every_known_built_in_property_is_accepted(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    properties = dict.fromkeys(BUILT_IN_PROPERTIES, "v")
    properties.update({"$ip": 0, "plain": 1, "with$inside": 2})
    assert_ok(post(api, receiver, "/track", track(properties=properties)))
    stored = json.loads(receiver.query("SELECT properties FROM altertable.analytics.events")[0][0])
    assert stored == properties


def test_array_is_applied_item_by_item(receiver: LocalReceiver, api: requests.Session) -> None:
    batch = [
        track("Kept", properties={"n": 0}),
        track("Kept", properties={"n": 1}),
        track("Refused", environment="nope"),
        track("Never", properties={"n": 3}),
    ]
    assert_error(post(api, receiver, "/track", batch), 400, "environment-not-found")
    assert receiver.query(
        "SELECT event, properties->>'n' FROM altertable.analytics.events ORDER BY 2"
    ) == [("Kept", "0"), ("Kept", "1")]
    # A client that fixes and resends the batch stores the first items twice: at-least-once.
    batch[2] = track("Fixed")
    assert_ok(post(api, receiver, "/track", batch))
    assert count(receiver, "event = 'Kept'") == 4
    assert count(receiver, "event = 'Never'") == 1


def test_identify_array_is_applied_item_by_item(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    batch = [
        {"environment": "production", "distinct_id": "first", "traits": {"plan": "pro"}},
        {"environment": "nope", "distinct_id": "second"},
        {"environment": "production", "distinct_id": "third"},
    ]
    assert_error(post(api, receiver, "/identify", batch), 400, "environment-not-found")
    rows = receiver.query("SELECT distinct_id FROM altertable.analytics.identities")
    assert rows == [("first",)]


def test_sync_true_is_accepted(receiver: LocalReceiver, api: requests.Session) -> None:
    assert_ok(post(api, receiver, "/track", track("Synced"), params={"sync": "true"}))
    assert count(receiver, "event = 'Synced'") == 1


def test_timestamps(receiver: LocalReceiver, api: requests.Session) -> None:
    before = datetime.now(timezone.utc)
    batch = [
        track("iso", timestamp="2025-01-15T10:30:00Z"),
        track("offset", timestamp="2025-01-15T12:30:00.5+02:00"),
        track("millis", timestamp=1736937000000),
        track("naive", timestamp="2025-01-15 10:30:00"),
        track("missing"),
    ]
    assert_ok(post(api, receiver, "/track", batch))
    after = datetime.now(timezone.utc)
    stamps = dict(receiver.query("SELECT event, timestamp FROM altertable.analytics.events"))
    expected = datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)
    assert stamps["iso"] == expected
    assert stamps["offset"] == expected + timedelta(milliseconds=500)
    assert stamps["millis"] == expected
    assert stamps["naive"] == expected
    assert before - timedelta(seconds=1) <= stamps["missing"] <= after + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-01-01T12:00:00.000Z", datetime(2023, 1, 1, 12, tzinfo=timezone.utc)),
        ("2023-01-01T12:00:00.12Z", datetime(2023, 1, 1, 12, 0, 0, 120000, tzinfo=timezone.utc)),
        (
            "2023-01-01T12:00:00.123456789Z",
            datetime(2023, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc),
        ),
        ("2023-01-01T14:00:00+0200", datetime(2023, 1, 1, 12, tzinfo=timezone.utc)),
        ("2023-01-01T07:00-05:00", datetime(2023, 1, 1, 12, tzinfo=timezone.utc)),
        ("2023-01-01", datetime(2023, 1, 1, tzinfo=timezone.utc)),
        (0, datetime(1970, 1, 1, tzinfo=timezone.utc)),
        (1672574400000.5, datetime(2023, 1, 1, 12, 0, 0, 500, tzinfo=timezone.utc)),
    ],
)
def test_parse_timestamp(text: Any, expected: datetime) -> None:
    assert parse_timestamp(text, "track", datetime.now(timezone.utc)) == expected
    if isinstance(text, str):  # the parser Python 3.10 falls back to agrees
        assert _parse_iso(text) == expected


@pytest.mark.parametrize("bad", ["2023-13-01T00:00:00Z", "yesterday", "", 10**30, [], {}])
def test_parse_timestamp_refuses(bad: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_timestamp(bad, "track", datetime.now(timezone.utc))
    assert caught.value.status == 422


# -- identities and the guide's SQL -------------------------------------------------------------


def test_guide_queries_run_verbatim(receiver: LocalReceiver, api: requests.Session) -> None:
    purchases = [
        track(
            "Purchase Completed",
            distinct_id=USER,
            properties={"amount": 99.99, "currency": "USD"},
            timestamp=f"2025-01-15T10:3{i}:00Z",
        )
        for i in range(3)
    ]
    purchases.append(
        track(
            "Purchase Completed",
            distinct_id="someone-else",
            properties={"currency": "EUR"},
            timestamp="2025-01-15T09:00:00Z",
        )
    )
    assert_ok(post(api, receiver, "/track", purchases))
    # Identified after the events: the events still show the identity's current traits.
    identify = {
        "environment": "production",
        "distinct_id": USER,
        "traits": {"plan": "premium", "email": "user@example.com"},
        "timestamp": "2025-01-15T11:00:00Z",
    }
    assert_ok(post(api, receiver, "/identify", identify))

    assert receiver.query(GUIDE_EVENTS_BY_CURRENCY) == [
        ("Purchase Completed", "USD", 3),
        ("Purchase Completed", "EUR", 1),
    ]
    rows = receiver.query(GUIDE_USER_EVENTS)
    assert [row[2].minute for row in rows] == [32, 31, 30]
    assert {(row[0], row[3], row[4]) for row in rows} == {
        ("Purchase Completed", "user@example.com", "premium")
    }
    assert json.loads(rows[0][1]) == {"amount": 99.99, "currency": "USD"}
    identities = receiver.query(GUIDE_IDENTITIES)
    assert [row[:3] for row in identities] == [(USER, "user@example.com", "premium")]
    assert identities[0][3] == datetime(2025, 1, 15, 11, tzinfo=timezone.utc)

    # A later identify shallow-merges: plan changes, email stays, events follow.
    upgrade = {**identify, "traits": {"plan": "enterprise"}, "timestamp": "2025-02-01T00:00:00Z"}
    assert_ok(post(api, receiver, "/identify", upgrade))
    assert {row[4] for row in receiver.query(GUIDE_USER_EVENTS)} == {"enterprise"}
    assert receiver.query(GUIDE_IDENTITIES)[0][1:3] == ("user@example.com", "enterprise")

    # The same guide queries answer through POST /query (Lakehouse NDJSON), JSON-safe.
    _, columns, rows = lakehouse(receiver, GUIDE_USER_EVENTS)
    assert [c["name"] for c in columns] == ["event", "properties", "timestamp", "email", "plan"]
    assert rows[0][2] == "2025-01-15T10:32:00+00:00"
    assert rows[0][3:] == ["user@example.com", "enterprise"]


def test_identify_is_last_write_wins_by_timestamp(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    def identify(traits: dict[str, Any], timestamp: str) -> None:
        payload = {"environment": "production", "distinct_id": "u1", "traits": traits}
        assert_ok(post(api, receiver, "/identify", {**payload, "timestamp": timestamp}))

    identify({"plan": "enterprise", "seats": 10}, "2025-03-01T00:00:00Z")
    identify({"plan": "free", "email": "u1@example.com"}, "2025-01-01T00:00:00Z")  # arrives late
    traits, updated_at = receiver.query(
        "SELECT traits, updated_at FROM altertable.analytics.identities"
    )[0]
    assert json.loads(traits) == {"plan": "enterprise", "seats": 10, "email": "u1@example.com"}
    assert updated_at == datetime(2025, 3, 1, tzinfo=timezone.utc)


def test_identify_links_the_anonymous_id(receiver: LocalReceiver, api: requests.Session) -> None:
    assert_ok(post(api, receiver, "/track", track("Visited", anonymous_id="anon-1")))
    assert_ok(post(api, receiver, "/track", track("Visited", distinct_id="anon-1")))
    identify = {
        "environment": "production",
        "distinct_id": "u1",
        "anonymous_id": "anon-1",
        "traits": {"email": "u1@example.com"},
    }
    assert_ok(post(api, receiver, "/identify", identify))
    rows = receiver.query(
        "SELECT identity_traits->>'email' FROM altertable.analytics.events WHERE event = 'Visited'"
    )
    assert rows == [("u1@example.com",), ("u1@example.com",)]
    assert receiver.query(
        "SELECT distinct_id, distinct_ids FROM altertable.analytics.identities"
    ) == [("u1", ["anon-1", "u1"])]


def test_alias_keeps_both_ids_resolvable(receiver: LocalReceiver, api: requests.Session) -> None:
    events = [
        track("Old Id Event", distinct_id="user_123"),
        track("New Id Event", distinct_id="stripe:cus_abc123"),
    ]
    assert_ok(post(api, receiver, "/track", events))
    identify = {"environment": "production", "distinct_id": "user_123", "traits": {"plan": "pro"}}
    assert_ok(post(api, receiver, "/identify", identify))
    alias = {
        "environment": "production",
        "distinct_id": "user_123",
        "new_user_id": "stripe:cus_abc123",
    }
    assert_ok(post(api, receiver, "/alias", alias))

    rows = receiver.query(
        "SELECT distinct_id, identity_uuid, identity_traits->>'plan' "
        "FROM altertable.analytics.events ORDER BY distinct_id"
    )
    assert [r[0] for r in rows] == ["stripe:cus_abc123", "user_123"]
    assert rows[0][1] is not None and rows[0][1] == rows[1][1]
    assert [r[2] for r in rows] == ["pro", "pro"]
    assert receiver.query(
        "SELECT distinct_id, traits->>'plan', distinct_ids FROM altertable.analytics.identities"
    ) == [("stripe:cus_abc123", "pro", ["stripe:cus_abc123", "user_123"])]
    for old_or_new in ("user_123", "stripe:cus_abc123"):
        resolved = receiver.query(
            "SELECT i.distinct_id FROM altertable.analytics.identity_distinct_ids m "
            "JOIN altertable.analytics.identities i USING (identity_uuid) "
            f"WHERE m.distinct_id = '{old_or_new}'"
        )
        assert resolved == [("stripe:cus_abc123",)]

    # Either id keeps updating the one merged identity.
    update = {"environment": "production", "distinct_id": "user_123", "traits": {"seats": 3}}
    assert_ok(post(api, receiver, "/identify", update))
    assert receiver.query(
        "SELECT count(*), any_value(traits->>'seats') FROM altertable.analytics.identities"
    ) == [(1, "3")]


def test_alias_merges_two_identities_trait_by_trait(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    identifies = [
        {
            "environment": "production",
            "distinct_id": "old",
            "traits": {"email": "old@example.com", "plan": "free"},
            "timestamp": "2025-01-01T00:00:00Z",
        },
        {
            "environment": "production",
            "distinct_id": "new",
            "traits": {"plan": "pro"},
            "timestamp": "2025-02-01T00:00:00Z",
        },
    ]
    assert_ok(post(api, receiver, "/identify", identifies))
    alias = {"environment": "production", "distinct_id": "old", "new_user_id": "new"}
    assert_ok(post(api, receiver, "/alias", alias))
    rows = receiver.query(
        "SELECT distinct_id, traits, distinct_ids FROM altertable.analytics.identities"
    )
    assert len(rows) == 1
    assert rows[0][0] == "new"
    assert json.loads(rows[0][1]) == {"email": "old@example.com", "plan": "pro"}
    assert rows[0][2] == ["new", "old"]
    # Aliasing again is a no-op.
    assert_ok(post(api, receiver, "/alias", alias))
    assert len(receiver.query("SELECT * FROM altertable.analytics.identities")) == 1


def test_identities_are_per_environment(receiver: LocalReceiver, api: requests.Session) -> None:
    for environment, plan in (("production", "pro"), ("staging", "test")):
        identify = {"environment": environment, "distinct_id": "u1", "traits": {"plan": plan}}
        assert_ok(post(api, receiver, "/identify", identify))
        assert_ok(post(api, receiver, "/track", track(distinct_id="u1", environment=environment)))
    rows = receiver.query(
        "SELECT environment, identity_traits->>'plan' FROM altertable.analytics.events ORDER BY 1"
    )
    assert rows == [("production", "pro"), ("staging", "test")]


# -- POST /query and other routes ---------------------------------------------------------------


def test_query_endpoint(receiver: LocalReceiver, api: requests.Session) -> None:
    statement = (
        "SELECT 1.5::DECIMAL(4,2) AS d, TIMESTAMPTZ '2025-01-15 10:30:00+00' AS t, "
        "[1, 2] AS l, 'nan'::DOUBLE AS n, NULL AS z, {'a': 1} AS s"
    )
    _, columns, rows = lakehouse(receiver, statement)
    assert [c["name"] for c in columns] == ["d", "t", "l", "n", "z", "s"]
    assert rows == [[1.5, "2025-01-15T10:30:00+00:00", [1, 2], None, None, {"a": 1}]]


def test_query_errors(receiver: LocalReceiver, api: requests.Session) -> None:
    url, auth = receiver.endpoint + "/query", ("local", "local")
    response = requests.post(url, json={"statement": "SELEC nope"}, auth=auth, timeout=10)
    assert response.status_code == 400
    assert "syntax error" in response.json()["error"].lower()
    response = requests.post(url, json={"sql": "SELECT 1"}, auth=auth, timeout=10)
    assert response.status_code == 400
    assert "statement" in response.json()["error"]


def test_unknown_routes_and_methods(receiver: LocalReceiver, api: requests.Session) -> None:
    assert_error(post(api, receiver, "/batch", []), 404, "not-found")
    response = api.get(receiver.endpoint + "/track", timeout=5)
    assert_error(response, 405, "method-not-allowed")
    assert response.headers["Allow"] == "POST"
    assert_ok(post(api, receiver, "/track/", track()))


def test_too_large_body_is_413_and_the_connection_survives(api: requests.Session) -> None:
    with LocalReceiver(max_body_bytes=2000) as local:
        big = [track(properties={"pad": "x" * 500})] * 10
        response = post(api, local, "/track", big)
        assert_error(response, 413, "payload-too-large")
        assert_ok(post(api, local, "/track", track()))
        bomb = gzip.compress(json.dumps(big).encode())
        assert len(bomb) < 2000
        response = api.post(
            local.endpoint + "/track", data=bomb, headers={"Content-Encoding": "gzip"}, timeout=5
        )
        assert_error(response, 413, "payload-too-large")
        assert count(local) == 1


def test_requests_are_counted_by_path_and_status(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    post(api, receiver, "/track", track())
    post(api, receiver, "/track", track())
    post(api, receiver, "/track", {"bad": True})
    requests.post(receiver.endpoint + "/identify", json={}, timeout=5)
    assert receiver.requests[("/track", 200)] == 2
    assert receiver.requests[("/track", 422)] == 1
    assert receiver.requests[("/identify", 401)] == 1


def test_request_log_lines_never_show_the_key(
    receiver: LocalReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "pk_test_SECRET-never-logged"
    with caplog.at_level(logging.DEBUG, logger="opentelemetry_exporter_altertable.receiver"):
        response = requests.post(
            receiver.endpoint + "/track", params={"apiKey": secret}, json=track(), timeout=5
        )
        assert_ok(response)
    lines = [r.getMessage() for r in caplog.records if '"POST /track' in r.getMessage()]
    assert len(lines) == 1
    assert "apiKey=***" in lines[0] and " 200 " in lines[0]
    assert secret not in caplog.text


# -- HTTP behaviour ----------------------------------------------------------------------------


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_keep_alive_serves_several_requests_on_one_connection(receiver: LocalReceiver) -> None:
    payload = json.dumps(track("Kept Alive")).encode()
    request = (
        b"POST /track HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: k\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(request)
            head, body = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"connection: close" not in head.lower()
            assert json.loads(body)["ok"] is True
    assert count(receiver, "event = 'Kept Alive'") == 3


def test_sequential_keep_alive_requests_are_not_delayed(receiver: LocalReceiver) -> None:
    # A response split over writes meets Nagle + the client's delayed ACK (~40 ms each).
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        started = time.perf_counter()
        for _ in range(20):
            conn.request("POST", "/track", body=json.dumps(track()), headers={"X-API-Key": "k"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    assert elapsed < 0.6, f"20 keep-alive requests took {elapsed:.2f}s"


def test_concurrent_requests_are_all_stored_exactly_once(receiver: LocalReceiver) -> None:
    threads_count, batches, per_batch = 8, 10, 25
    errors: list[str] = []

    def worker(thread_id: int) -> None:
        with requests.Session() as session:
            session.headers["X-API-Key"] = "k"
            for b in range(batches):
                batch = [
                    track("Concurrent", properties={"marker": f"{thread_id}-{b}-{i}"})
                    for i in range(per_batch)
                ]
                response = session.post(receiver.endpoint + "/track", json=batch, timeout=30)
                if response.status_code != 200:
                    errors.append(response.text)
            identify = {"environment": "production", "distinct_id": f"user-{thread_id}"}
            if (
                session.post(receiver.endpoint + "/identify", json=identify, timeout=30).status_code
                != 200
            ):
                errors.append("identify")

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert not errors
    expected = threads_count * batches * per_batch
    assert receiver.query(
        "SELECT count(*), count(DISTINCT properties->>'marker'), count(DISTINCT uuid) "
        "FROM altertable.analytics.events"
    ) == [(expected, expected, expected)]
    assert receiver.query("SELECT count(*) FROM altertable.analytics.identities") == [
        (threads_count,)
    ]


# -- lifecycle ---------------------------------------------------------------------------------


def test_file_database_persists_across_restarts(tmp_path: Path, api: requests.Session) -> None:
    db = tmp_path / "local.duckdb"
    with LocalReceiver(db_path=str(db)) as first:
        assert_ok(post(api, first, "/track", track("Before Restart", distinct_id="old")))
        identify = {"environment": "production", "distinct_id": "old", "traits": {"plan": "pro"}}
        assert_ok(post(api, first, "/identify", identify))
    assert db.exists()
    with LocalReceiver(db_path=str(db)) as second:
        assert count(second, "event = 'Before Restart'") == 1
        # The identity state survived too: an alias after the restart merges into it.
        alias = {"environment": "production", "distinct_id": "old", "new_user_id": "new"}
        assert_ok(post(api, second, "/alias", alias))
        assert second.query(
            "SELECT distinct_id, identity_traits->>'plan' FROM altertable.analytics.events"
        ) == [("old", "pro")]
        assert second.query("SELECT distinct_id FROM altertable.analytics.identities") == [("new",)]


def test_stop_is_quick_with_an_idle_keep_alive_connection_and_closes_the_db(tmp_path: Path) -> None:
    db = tmp_path / "stop.duckdb"
    local = LocalReceiver(db_path=str(db)).start()
    conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=5)
    try:
        conn.request("GET", "/health")
        conn.getresponse().read()
        started = time.perf_counter()
        local.stop()
        assert time.perf_counter() - started < 2.0
        local.stop()  # idempotent
    finally:
        conn.close()
    assert not local.running
    with pytest.raises(RuntimeError):
        local.query("SELECT 1")
    # The file is closed: it can be opened again at once.
    with LocalReceiver(db_path=str(db)) as again:
        assert again.query("SELECT 1") == [(1,)]


def test_a_busy_port_is_an_error_and_leaves_nothing_open(receiver: LocalReceiver) -> None:
    with pytest.raises(OSError):
        LocalReceiver(port=receiver.port).start()


def test_missing_duckdb_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)  # makes `import duckdb` fail
    with pytest.raises(
        ImportError, match=r"pip install 'opentelemetry-exporter-altertable\[local\]'"
    ):
        LocalReceiver().start()


def test_api_keys_given_as_a_string_mean_one_key(api: requests.Session) -> None:
    with LocalReceiver(api_keys=KEY) as local:
        assert_ok(post(api, local, "/track", track()))
    with pytest.raises(ValueError):
        LocalReceiver(api_keys=[""])


def test_measure_ingest_reports_a_rate() -> None:
    rate = measure_ingest(n_events=2000, batch=500)
    assert rate > 1000


def test_hand_made_writes_through_query_are_seen_by_later_identifies(
    receiver: LocalReceiver, api: requests.Session
) -> None:
    identify = {"environment": "production", "distinct_id": "u1", "traits": {"plan": "pro"}}
    assert_ok(post(api, receiver, "/identify", identify))
    receiver.query(  # the trusted, in-process path: any SQL
        "DELETE FROM altertable.analytics._identities; "
        "DELETE FROM altertable.analytics.identity_distinct_ids"
    )
    assert_ok(post(api, receiver, "/track", track(distinct_id="u1")))
    assert_ok(post(api, receiver, "/identify", {**identify, "traits": {"seats": 2}}))
    # Rebuilt from scratch: the old "plan" is gone, and the id resolves again.
    assert receiver.query(
        "SELECT identity_traits FROM altertable.analytics.events WHERE distinct_id = 'u1'"
    ) == [('{"seats":2}',)]
