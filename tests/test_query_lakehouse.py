"""``POST /query``: the Lakehouse API's shapes, and read-only for whoever calls it.

Every attack here answered 200 before /query was made safe (any SQL ran on the store's own
connection, under its one lock); each now gets the refusal the docs name, over real HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from altertable_lakehouse import Client
from altertable_lakehouse.errors import AuthError, BadRequestError
from altertable_lakehouse.models import QueryRequest
from guide import GUIDE_EVENTS_BY_CURRENCY, GUIDE_IDENTITIES, GUIDE_USER_EVENTS, USER

from opentelemetry_exporter_altertable.receiver import LocalReceiver

AUTH = ("local", "local")
LONG_QUERY = "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3"


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver(query_timeout=5) as r:
        yield r


def ask(receiver: LocalReceiver, statement: str, **fields: Any) -> requests.Response:
    return requests.post(
        receiver.endpoint + "/query",
        json={"statement": statement, **fields},
        auth=AUTH,
        timeout=30,
    )


def ndjson(response: requests.Response) -> list[Any]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.headers["Transfer-Encoding"] == "chunked"
    return [json.loads(line) for line in response.text.splitlines() if line]


def send(receiver: LocalReceiver, path: str, body: Any) -> None:
    response = requests.post(
        receiver.endpoint + path, json=body, headers={"X-API-Key": "k"}, timeout=10
    )
    assert response.status_code == 200, response.text


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        pause.wait(0.01)
    return bool(condition())


def seed_guide(receiver: LocalReceiver) -> None:
    send(
        receiver,
        "/track",
        [
            {
                "environment": "production",
                "event": "Purchase Completed",
                "distinct_id": USER,
                "timestamp": "2025-01-15T10:32:00Z",
                "properties": {"currency": currency, "amount": 10},
            }
            for currency in ("USD", "USD", "EUR")
        ],
    )
    send(
        receiver,
        "/identify",
        {
            "environment": "production",
            "distinct_id": USER,
            "traits": {"email": "user@example.com", "plan": "premium"},
            "timestamp": "2025-01-15T11:00:00Z",
        },
    )


# -- the Lakehouse shapes ------------------------------------------------------------------------


def test_answer_is_metadata_columns_then_rows(receiver: LocalReceiver) -> None:
    lines = ndjson(
        ask(
            receiver,
            "SELECT i, 'x' || i AS s FROM range(10) t(i) ORDER BY i",
            limit=3,
            offset=2,
            query_id="q1",
            session_id="s1",
            catalog="altertable",
            schema="analytics",
            timezone="UTC",
            compute_size="S",
        )
    )
    assert lines[0] == {
        "statement": "SELECT i, 'x' || i AS s FROM range(10) t(i) ORDER BY i",
        "rows_limit": 3,
        "rows_offset": 2,
        "query_id": "q1",
        "session_id": "s1",
    }
    assert lines[1] == [{"name": "i", "type": "BIGINT"}, {"name": "s", "type": "VARCHAR"}]
    assert lines[2:] == [[2, "x2"], [3, "x3"], [4, "x4"]]


def test_a_failing_query_is_400_with_error(receiver: LocalReceiver) -> None:
    response = ask(receiver, "SELECT * FROM altertable.analytics.nope")
    assert response.status_code == 400
    assert "nope" in response.json()["error"]
    bad = requests.post(receiver.endpoint + "/query", json={"limit": 1}, auth=AUTH, timeout=10)
    assert bad.status_code == 400
    assert "statement" in bad.json()["error"]


def test_official_client_runs_the_guide_queries(receiver: LocalReceiver) -> None:
    seed_guide(receiver)
    client = Client(base_url=receiver.endpoint, username="ana", password="anything")
    by_currency = client.query_all(QueryRequest(statement=GUIDE_EVENTS_BY_CURRENCY))
    assert [c["name"] for c in by_currency.columns] == ["event", "currency", "total"]
    assert by_currency.rows == [["Purchase Completed", "USD", 2], ["Purchase Completed", "EUR", 1]]
    user_events = client.query_all(QueryRequest(statement=GUIDE_USER_EVENTS))
    assert len(user_events.rows) == 3
    assert {tuple(row[3:]) for row in user_events.rows} == {("user@example.com", "premium")}
    assert user_events.rows[0][2] == "2025-01-15T10:32:00+00:00"
    identities = client.query_all(QueryRequest(statement=GUIDE_IDENTITIES, limit=10))
    assert identities.rows == [[USER, "user@example.com", "premium", "2025-01-15T11:00:00+00:00"]]
    assert identities.metadata.values["rows_limit"] == 10
    # A failure is 400 {"error"}, as the Lakehouse API answers; client 0.5.1 reads the status
    # but then trips on its own streamed response (httpx.ResponseNotRead) before it can raise.
    with pytest.raises((BadRequestError, httpx.ResponseNotRead)):
        client.query_all(QueryRequest(statement="SELEC 1"))


def test_configured_credentials_and_ingestion_keys(tmp_path: Path) -> None:
    with LocalReceiver(api_keys=["pk_ingest"], query_user="ana", query_password="s3cret") as r:
        good = Client(base_url=r.endpoint, username="ana", password="s3cret")
        assert good.query_all(QueryRequest(statement="SELECT 42")).rows == [[42]]
        for user, password in (("ana", "wrong"), ("bob", "s3cret"), ("pk_ingest", "pk_ingest")):
            with pytest.raises(AuthError):
                Client(base_url=r.endpoint, username=user, password=password).query_all(
                    QueryRequest(statement="SELECT 1")
                )
        url = r.endpoint + "/query"
        body = {"statement": "SELECT 1"}
        for headers in (
            {"X-API-Key": "pk_ingest"},
            {"Authorization": "Bearer pk_ingest"},
            {"Authorization": "Basic !!!"},
        ):
            assert requests.post(url, json=body, headers=headers, timeout=10).status_code == 401
        keyed = requests.post(url, json=body, params={"apiKey": "pk_ingest"}, timeout=10)
        assert keyed.status_code == 401
    with LocalReceiver() as r:  # none configured: any non-empty pair, never an empty one
        url = r.endpoint + "/query"
        assert requests.post(url, json=body, auth=("x", "y"), timeout=10).status_code == 200
        assert requests.post(url, json=body, auth=("x", ""), timeout=10).status_code == 401
        assert requests.post(url, json=body, timeout=10).status_code == 401


def test_rows_stream_without_the_whole_result_in_memory() -> None:
    # Its own receiver with a generous time limit: on a loaded 2-core machine streaming
    # 300,000 rows took longer than the shared fixture's 5 s limit, which ended the stream.
    sql = "SELECT i, repeat('x', 100) AS pad FROM range(300000) t(i)"
    with LocalReceiver(query_timeout=120) as receiver, requests.post(
        receiver.endpoint + "/query", json={"statement": sql}, auth=AUTH, stream=True, timeout=120
    ) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = [line for line in response.iter_lines() if line]
    assert b'"error"' not in lines[-1]
    assert len(lines) - 2 == 300000


# -- read-only, locked, limited ----------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO '{path}'",
        "ATTACH '{path}' AS other",
        "DROP VIEW altertable.analytics.events",
        "SET memory_limit = '1GB'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "DELETE FROM altertable.analytics._events",
        "CREATE TABLE altertable.analytics.t AS SELECT 1",
        "EXPORT DATABASE '{path}'",
        "EXPLAIN ANALYZE DELETE FROM altertable.analytics._events",
        "CHECKPOINT",
        "SELECT 1; DROP VIEW altertable.analytics.events",
        "PRAGMA enable_profiling",
    ],
)
def test_statements_that_are_not_queries_are_403(
    receiver: LocalReceiver, tmp_path: Path, statement: str
) -> None:
    send(
        receiver,
        "/track",
        {"environment": "production", "event": "E", "distinct_id": "d", "properties": {}},
    )
    path = tmp_path / "written"
    response = ask(receiver, statement.format(path=path))
    assert response.status_code == 403, response.text
    assert "error" in response.json()
    assert not path.exists()
    assert receiver.query("SELECT count(*) FROM altertable.analytics.events") == [(1,)]
    assert receiver.query("SELECT current_setting('memory_limit')") != [("1GB",)]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_blob('/etc/hostname')",
    ],
)
def test_queries_cannot_touch_files(receiver: LocalReceiver, statement: str) -> None:
    response = ask(receiver, statement)
    assert response.status_code == 400
    assert "disabled by configuration" in response.json()["error"]


def test_describe_show_summarize_explain_are_queries(receiver: LocalReceiver) -> None:
    for statement in (
        "DESCRIBE altertable.analytics.events",
        "SHOW TABLES",
        "SUMMARIZE altertable.analytics.events",
        "EXPLAIN SELECT 1",
        "VALUES (1), (2)",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    ):
        assert len(ndjson(ask(receiver, statement))) >= 2, statement


def test_a_long_query_never_holds_up_ingestion(receiver: LocalReceiver) -> None:
    answers: list[requests.Response] = []
    asking = threading.Thread(target=lambda: answers.append(ask(receiver, LONG_QUERY)))
    asking.start()
    try:
        assert wait_for(lambda: receiver.queries_running == 1)
        started = time.monotonic()
        send(
            receiver,
            "/track",
            {"environment": "production", "event": "During", "distinct_id": "d", "properties": {}},
        )
        assert time.monotonic() - started < 1.0
        assert receiver.query("SELECT event FROM altertable.analytics.events") == [("During",)]
    finally:
        asking.join(30)
    # ... and the time limit (5 s here) ends it with a 400 that says so.
    assert answers[0].status_code == 400
    assert "time limit" in answers[0].json()["error"]
    assert receiver.queries_running == 0


def test_the_time_limit_interrupts_a_query() -> None:
    with LocalReceiver(query_timeout=0.5) as r:
        started = time.monotonic()
        response = ask(r, LONG_QUERY)
        assert time.monotonic() - started < 5
        assert response.status_code == 400
        assert "time limit of 0.5 s" in response.json()["error"]


def test_a_client_that_leaves_cancels_its_query() -> None:
    with LocalReceiver(query_timeout=60) as r:
        body = json.dumps({"statement": LONG_QUERY}).encode()
        token = "bG9jYWw6bG9jYWw="  # local:local
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as sock:
            sock.sendall(
                b"POST /query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Authorization: Basic {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert wait_for(lambda: r.queries_running == 1)
        started = time.monotonic()
        assert wait_for(lambda: r.queries_running == 0, timeout=5)
        assert time.monotonic() - started < 2


def test_a_foreign_origin_is_refused(receiver: LocalReceiver) -> None:
    response = requests.post(
        receiver.endpoint + "/query",
        json={"statement": "SELECT 1"},
        auth=AUTH,
        headers={"Origin": "http://evil.example"},
        timeout=10,
    )
    assert response.status_code == 403
    own = requests.post(
        receiver.endpoint + "/query",
        json={"statement": "SELECT 1"},
        auth=AUTH,
        headers={"Origin": receiver.endpoint},
        timeout=10,
    )
    assert ndjson(own)[2:] == [[1]]


def test_the_trusted_python_path_is_unchanged(receiver: LocalReceiver) -> None:
    receiver.query("CREATE TABLE altertable.analytics.notes AS SELECT 1 AS n")
    assert receiver.query("SELECT n FROM altertable.analytics.notes") == [(1,)]
    assert os.environ.get("NOT_SET_ANYWHERE") is None


def test_the_time_limit_while_streaming_ends_with_an_error_line() -> None:
    with LocalReceiver(query_timeout=0.5) as r:
        sql = "SELECT i FROM range(10000000000) t(i)"
        with requests.post(
            r.endpoint + "/query", json={"statement": sql}, auth=AUTH, stream=True, timeout=30
        ) as response:
            assert response.status_code == 200
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert len(lines) > 3  # rows streamed before the limit
        assert "time limit" in lines[-1]["error"]
        assert r.queries_running == 0


def test_a_cancel_before_the_statement_starts_still_stops_it() -> None:
    """A client that leaves while ``BEGIN`` runs: its one interrupt would land before DuckDB
    starts the statement and be lost, and the query would run to its time limit (8 s here).
    The cancel repeats until the statement has ended, so it stops within a second or so."""
    from opentelemetry_exporter_altertable.receiver._query import QueryFailed, RunningQuery
    from opentelemetry_exporter_altertable.receiver._store import Store

    store = Store()
    running = RunningQuery(store, store.reader(), timeout=8)
    canceller = threading.Thread(target=running.cancel)
    canceller.start()  # nothing runs yet: the first interrupt finds no statement
    started = time.monotonic()
    try:
        with pytest.raises(QueryFailed, match="the client went away"):
            running.execute(LONG_QUERY)
        assert time.monotonic() - started < 5  # the time limit is 8 s; the rest is margin for load
    finally:
        canceller.join(10)
        running.close()
        store.close()
    assert not canceller.is_alive()
