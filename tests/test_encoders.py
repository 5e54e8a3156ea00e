"""orjson (the ``fast`` extra) and the standard library send the same bytes; both paths work."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opentelemetry_exporter_altertable import _transport
from opentelemetry_exporter_altertable._transport import encode_json, fast_encoder
from opentelemetry_exporter_altertable._values import json_safe

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _orjson_encoder() -> Any:
    encoder = fast_encoder()
    assert encoder is not None, "orjson is missing: the dev extra installs it (make install)"
    return encoder


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=12), json_values, max_size=6), max_size=5))
def test_orjson_and_stdlib_send_the_same_json(items: list[dict[str, Any]]) -> None:
    encoder = _orjson_encoder()
    items = json_safe(items)  # what the mapping hands the transport
    assert json.loads(encoder(items)) == json.loads(encode_json(items))


def test_orjson_falls_back_for_what_it_refuses() -> None:
    encoder = _orjson_encoder()
    big = [{"n": 10**30, "f": 1.5}]  # past 64 bits: orjson refuses, the stdlib does not
    assert encoder(big) == encode_json(big)


def test_nan_cannot_reach_the_wire() -> None:
    with pytest.raises(ValueError):
        encode_json([{"x": math.nan}])  # the stdlib path refuses rather than send NaN


def test_export_without_orjson_delivers(
    monkeypatch: pytest.MonkeyPatch, make_exporter: Any, spans: Any, server: Any
) -> None:
    monkeypatch.setattr(_transport, "fast_encoder", lambda: None)
    exporter = make_exporter()
    assert exporter._core._transport._encode is encode_json
    batch = spans(5)
    result = exporter.export(batch)
    assert result.name == "SUCCESS"
    assert len(server.accepted_items("/track")) == 5
