"""Property tests of the receiver's decoder: arbitrary bytes, encodings and JSON shapes never
get a 5xx, and what is stored is always whole items (none, all, or the first ``k`` when the
answer says so). Most examples go through the application without sockets; a few through real
HTTP on loopback."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opentelemetry_exporter_altertable.receiver import LocalReceiver
from opentelemetry_exporter_altertable.receiver._app import Application, Request, Response
from opentelemetry_exporter_altertable.receiver._validation import (
    ApiError,
    decode_body,
    parse_alias,
    parse_identify,
    parse_track,
)

MAX_BYTES = 64 * 1024
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(["a", "$lib", "$bogus", "amount", "é", "\x00"]) | st.text(max_size=6)
items = st.fixed_dictionaries(
    {},
    optional={
        "environment": st.sampled_from(["production", "staging", "nowhere"]) | json_values,
        "event": st.sampled_from(["Signup", "", " "]) | json_values,
        "properties": st.dictionaries(keys, json_values, max_size=4) | json_values,
        "distinct_id": st.text(max_size=8) | json_values,
        "new_user_id": st.text(max_size=8) | json_values,
        "anonymous_id": st.text(max_size=8) | json_values,
        "traits": st.dictionaries(keys, json_values, max_size=3) | json_values,
        "timestamp": st.sampled_from(["2025-06-01T12:00:00Z", "2025-13-01", "yesterday"])
        | st.integers(-(2**64), 2**64)
        | st.floats(allow_nan=False, allow_infinity=False)
        | json_values,
    },
)
# Mostly well formed, so that acceptance and item-by-item refusals are exercised as well.
valid_items = st.fixed_dictionaries(
    {
        "environment": st.sampled_from(["production", "production", "staging", "nowhere"]),
        "event": st.text(min_size=1, max_size=12),
        "properties": st.dictionaries(keys, json_values, max_size=4),
    },
    optional={"distinct_id": st.text(max_size=8), "timestamp": st.integers(0, 2**41)},
)
documents = (
    valid_items
    | st.lists(valid_items, max_size=6)
    | st.lists(valid_items | items, max_size=6)
    | items
    | json_values
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A body and its ``Content-Encoding``: JSON of any shape, nesting, or bytes, encoded or not."""
    kind = draw(st.sampled_from(["json", "json", "json", "nested", "bytes", "cut"]))
    if kind == "json":
        raw = json.dumps(draw(documents), ensure_ascii=draw(st.booleans())).encode()
    elif kind == "nested":
        depth = draw(st.integers(1, 5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        raw = (opener * depth + "1" + closer * draw(st.integers(0, depth))).encode()
    elif kind == "bytes":
        raw = draw(st.binary(max_size=200))
    else:
        whole = json.dumps(draw(documents)).encode()
        raw = whole[: draw(st.integers(0, len(whole)))]
    encoding = draw(
        st.sampled_from(
            [None, None, None, "gzip", "gzip", "", "identity", "x-gzip", "GZIP", "gzip-cut",
             "deflate", "br", "gzip, gzip", "bogus"]
        )
    )  # fmt: skip
    if encoding in ("gzip", "x-gzip", "GZIP"):
        raw = gzip.compress(raw)
    elif encoding == "gzip-cut":
        packed = gzip.compress(raw)
        raw, encoding = packed[: draw(st.integers(0, len(packed) - 1))], "gzip"
    elif encoding == "deflate":
        raw = zlib.compress(raw)
    return raw, encoding


@given(bodies())
@settings(max_examples=400, deadline=None)
def test_the_decoder_answers_4xx_or_a_document(body: tuple[bytes, str | None]) -> None:
    raw, encoding = body
    try:
        doc = decode_body(raw, encoding, MAX_BYTES)
    except ApiError as error:
        assert 400 <= error.status < 500
        return
    for parse in (parse_track, parse_identify, parse_alias):
        try:
            parse(doc, NOW)
        except ApiError as error:
            assert 400 <= error.status < 500


@pytest.fixture(scope="module")
def receiver() -> Iterator[LocalReceiver]:
    with LocalReceiver(environments=("production", "staging")) as local:
        yield local


def _rows(local: LocalReceiver) -> list[tuple[Any, ...]]:
    return local.query(
        "SELECT event, properties, environment FROM altertable.analytics._events ORDER BY rowid"
    )


def _assert_whole_items(
    sent: bytes, encoding: str | None, status: int, accepted: int | None, new: list[Any]
) -> None:
    assert status < 500
    if status != 200 and accepted is None:
        assert new == []
        return
    doc = decode_body(sent, encoding, MAX_BYTES)
    expected = doc if isinstance(doc, list) else [doc]
    if status == 200:
        assert len(new) == len(expected)
    assert len(new) == (accepted if accepted is not None else len(expected))
    for (event, properties, environment), item in zip(new, expected, strict=False):
        assert event == item["event"]
        assert environment == item["environment"]
        assert sorted(json.loads(properties)) == sorted(item["properties"])


@given(bodies())
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_application_never_answers_5xx_nor_stores_part_of_an_item(
    receiver: LocalReceiver, body: tuple[bytes, str | None]
) -> None:
    raw, encoding = body
    app = Application(receiver._store, None, receiver.environments, MAX_BYTES)  # type: ignore[arg-type]
    headers = {"x-api-key": "k", "host": "127.0.0.1"}
    if encoding is not None:
        headers["content-encoding"] = encoding
    before = len(_rows(receiver))
    response: Response = app.handle(Request("POST", "/track", headers, {}, raw))
    _assert_whole_items(raw, encoding, response.status, response.items, _rows(receiver)[before:])


@given(bodies())
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_over_http_never_5xx_nor_part_of_an_item(
    receiver: LocalReceiver, body: tuple[bytes, str | None]
) -> None:
    raw, encoding = body
    headers = {"X-API-Key": "k"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    before = len(_rows(receiver))
    response = requests.post(receiver.endpoint + "/track", data=raw, headers=headers, timeout=10)
    new = _rows(receiver)[before:]
    accepted = len(new) if response.status_code == 400 and new else None
    if response.status_code == 400 and new:
        assert response.json()["error_code"] in ("environment-not-found", "insert-failed")
    _assert_whole_items(raw, encoding, response.status_code, accepted, new)
