"""Reading an API answer: one verdict for the transport and for ``check``."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from opentelemetry_exporter_altertable._answers import CONFIG_ERRORS, read_answer


def test_accepted_answer_has_no_error_code() -> None:
    answer = read_answer(200, b'{"ok": true, "task_id": "t1"}')
    assert answer.accepted
    assert answer.error_code is None
    assert answer.setting_error is None


def test_ok_false_is_a_refusal_with_its_code() -> None:
    assert read_answer(200, b'{"ok": false}').error_code == "ok-false"
    assert read_answer(202, b'{"ok": false, "error": "insert-failed"}').error_code == (
        "insert-failed"
    )


def test_error_code_falls_back_to_error_then_status() -> None:
    assert read_answer(400, b'{"error_code": "invalid-event"}').error_code == "invalid-event"
    assert read_answer(400, b'{"error": "bad"}').error_code == "bad"
    assert read_answer(400, b"not json").error_code == "http-400"
    assert read_answer(422, b"").error_code == "http-422"


def test_setting_errors() -> None:
    assert read_answer(401, b"").setting_error == "auth"
    assert read_answer(403, b"{}").setting_error == "auth"
    env = b'{"error_code": "environment-not-found"}'
    assert read_answer(400, env).setting_error == "environment-not-found"
    assert read_answer(404, b"").setting_error == "endpoint-not-found"
    assert read_answer(301, b"").setting_error == "endpoint-not-found"
    assert read_answer(400, b"{}").setting_error is None


@settings(deadline=None)  # a shared CI machine can stall any one example
@given(
    status=st.integers(100, 599),
    body=st.one_of(
        st.binary(max_size=64),
        st.dictionaries(
            st.sampled_from(["ok", "error", "error_code", "task_id"]),
            st.one_of(st.booleans(), st.none(), st.text(max_size=8), st.integers()),
        ).map(lambda d: json.dumps(d).encode()),
    ),
)
def test_every_answer_is_exactly_accepted_or_refused(status: int, body: bytes) -> None:
    answer = read_answer(status, body)
    assert answer.accepted == (answer.error_code is None)
    assert answer.accepted <= (200 <= status < 300)
    assert answer.setting_error is None or answer.setting_error in CONFIG_ERRORS
