"""The receiver's fault plan: reproducible decisions, the promised rates and outage windows,
and, over real loopback HTTP, refusals that store nothing."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from opentelemetry_exporter_altertable.receiver import LocalReceiver
from opentelemetry_exporter_altertable.receiver._faults import Fault, FaultInjector, FaultPlan

KEY = "pk_test_faults"
HEADERS = {"X-API-Key": KEY, "Content-Type": "application/json"}


def _track(seq: int) -> dict[str, Any]:
    return {"environment": "production", "event": "Tick", "properties": {"seq": seq}}


def _stored(receiver: LocalReceiver) -> int:
    count: int = receiver.query("SELECT count(*) FROM altertable.analytics.events")[0][0]
    return count


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------- pure plan


def test_same_seed_same_faults_other_seed_other_faults() -> None:
    plan = FaultPlan(error_rate=0.3, drop_rate=0.1, retry_after=1, retry_after_rate=0.5, seed=7)
    first = [plan.decide(n, 0.0) for n in range(2000)]
    assert first == [FaultPlan(**vars(plan)).decide(n, 0.0) for n in range(2000)]
    other = [FaultPlan(error_rate=0.3, drop_rate=0.1, seed=8).decide(n, 0.0) for n in range(2000)]
    kinds = [f.kind if f else None for f in first]
    assert kinds != [f.kind if f else None for f in other]


def test_decision_depends_on_request_number_only_not_on_call_order() -> None:
    plan = FaultPlan(error_rate=0.5, seed=3)
    forward = [plan.decide(n, 1.0) for n in range(500)]
    backward = [plan.decide(n, 1.0) for n in reversed(range(500))][::-1]
    assert forward == backward


def test_rates_match_the_plan() -> None:
    plan = FaultPlan(error_rate=0.10, drop_rate=0.02, retry_after=2, retry_after_rate=0.25, seed=1)
    n = 100_000
    faults = [plan.decide(i, 0.0) for i in range(n)]
    errors = [f for f in faults if f is not None and f.kind == "error"]
    drops = [f for f in faults if f is not None and f.drop]
    assert len(errors) / n == pytest.approx(0.10, abs=0.005)
    assert len(drops) / n == pytest.approx(0.02, abs=0.002)
    with_header = [f for f in errors if f.retry_after == 2]
    assert len(with_header) / len(errors) == pytest.approx(0.25, abs=0.02)
    assert all(f.status == 503 and not f.outage for f in errors)
    assert {f.retry_after for f in errors} == {None, 2}


def test_no_rates_means_no_faults_and_full_rates_mean_all() -> None:
    assert all(FaultPlan().decide(n, 0.0) is None for n in range(1000))
    everything = FaultPlan(error_rate=1.0, error_status=429)
    assert all(everything.decide(n, 0.0) == Fault("error", 429) for n in range(1000))


def test_outage_windows_refuse_everything_and_end() -> None:
    plan = FaultPlan(outages=((5.0, 2.0), (20.0, 1.0)), seed=2)
    assert plan.decide(0, 4.99) is None
    assert plan.decide(1, 5.0) == Fault("error", 503, outage=True)
    assert plan.decide(2, 6.99) == Fault("error", 503, outage=True)
    assert plan.decide(3, 7.0) is None
    assert plan.decide(4, 20.5) == Fault("error", 503, outage=True)
    assert plan.decide(5, 21.0) is None
    dropping = FaultPlan(outages=((0.0, 1.0),), outage_action="drop")
    assert dropping.decide(0, 0.5) == Fault("drop", outage=True)


def test_fault_headers_and_error_code() -> None:
    assert Fault("error", 503, retry_after=1.5).headers == (("Retry-After", "1.5"),)
    assert Fault("error", 503, retry_after=2).headers == (("Retry-After", "2"),)
    assert Fault("error", 503).headers == ()
    assert Fault("error", 503).error_code == "service-unavailable"
    assert Fault("error", 429).error_code == "injected-http-429"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_rate": -0.1},
        {"error_rate": 1.1},
        {"drop_rate": 0.6, "error_rate": 0.6},
        {"retry_after_rate": 2},
        {"error_status": 200},
        {"retry_after": -1},
        {"retry_after": float("nan")},
        {"outages": ((1.0,),)},
        {"outages": ((1.0, -2.0),)},
        {"outage_action": "explode"},
    ],
)
def test_invalid_plans_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="FaultPlan"):
        FaultPlan(**kwargs)


# ---------------------------------------------------------------------------------- injector


def test_injector_clock_restarts_at_begin_and_counts_by_kind() -> None:
    clock = FakeClock()
    injector = FaultInjector(FaultPlan(outages=((10.0, 5.0),)), clock=clock)
    clock.now += 12  # inside the window measured from construction
    assert injector.decide("/track") == Fault("error", 503, outage=True)
    injector.begin()
    assert injector.elapsed() == 0
    assert injector.decide("/track") is None
    clock.now += 10
    assert injector.decide("/identify") == Fault("error", 503, outage=True)
    clock.now += 5
    assert injector.decide("/track") is None
    counts = injector.counts()
    assert counts["requests"] == 4
    assert counts["passed"] == 2
    assert counts["outage_errors"] == 2
    assert counts["injected"] == 2
    assert counts["path:/track"] == 1
    assert counts["path:/identify"] == 1
    assert counts["errors"] == counts["drops"] == counts["outage_drops"] == 0


def test_injector_replays_the_plan_sequence() -> None:
    plan = FaultPlan(error_rate=0.2, drop_rate=0.1, seed=11)
    one, two = FaultInjector(plan), FaultInjector(plan)
    assert [one.decide("/track") for _ in range(300)] == [two.decide("/track") for _ in range(300)]
    assert one.counts() == two.counts()
    assert one.counts()["errors"] > 0
    assert one.counts()["drops"] > 0


# ---------------------------------------------------------------------------------- over HTTP


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        yield s


def test_injected_errors_store_nothing_and_carry_retry_after(session: requests.Session) -> None:
    plan = FaultPlan(error_rate=1.0, retry_after=3)
    with LocalReceiver(api_keys=[KEY], faults=plan) as receiver:
        answer = session.post(
            f"{receiver.endpoint}/track", json=[_track(1), _track(2)], headers=HEADERS, timeout=5
        )
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "3"
        assert answer.json()["error_code"] == "service-unavailable"
        assert answer.json()["ok"] is False
        assert _stored(receiver) == 0
        assert receiver.requests[("/track", 503)] == 1
        assert receiver.faults is not None
        assert receiver.faults.counts()["errors"] == 1


def test_faults_come_before_auth_and_spare_query_and_health(session: requests.Session) -> None:
    with LocalReceiver(api_keys=[KEY], faults=FaultPlan(error_rate=1.0)) as receiver:
        unauthenticated = session.post(f"{receiver.endpoint}/alias", json={}, timeout=5)
        assert unauthenticated.status_code == 503  # a front-end outage precedes the API's checks
        health = session.get(f"{receiver.endpoint}/health", timeout=5)
        assert health.status_code == 200
        query = requests.post(
            f"{receiver.endpoint}/query",
            json={"statement": "SELECT 42"},
            auth=("local", "local"),
            timeout=5,
        )
        assert query.status_code == 200
        assert query.text.splitlines()[2] == "[42]"
        assert receiver.faults is not None
        assert receiver.faults.counts()["requests"] == 1


def test_dropped_connection_gets_no_answer_and_stores_nothing() -> None:
    with LocalReceiver(api_keys=[KEY], faults=FaultPlan(drop_rate=1.0)) as receiver:
        conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        try:
            conn.request("POST", "/track", body=json.dumps(_track(1)), headers=HEADERS)
            with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
                conn.getresponse()
        finally:
            conn.close()
        assert _stored(receiver) == 0
        assert receiver.faults is not None
        assert receiver.faults.counts()["drops"] == 1
        assert sum(receiver.requests.values()) == 0  # nothing was answered


def test_outage_from_begin_then_recovery(session: requests.Session) -> None:
    clock = FakeClock()
    injector = FaultInjector(FaultPlan(outages=((1.0, 2.0),)), clock=clock)
    with LocalReceiver(api_keys=[KEY], faults=injector) as receiver:
        assert receiver.faults is injector
        url = f"{receiver.endpoint}/track"

        def post(seq: int) -> int:
            return session.post(url, json=_track(seq), headers=HEADERS, timeout=5).status_code

        assert post(1) == 200
        clock.now += 1.5
        assert post(2) == 503
        injector.begin()  # the outage starts over, one second from now
        assert post(3) == 200
        clock.now += 2.9
        assert post(4) == 503
        clock.now += 0.2
        assert post(5) == 200
        stored = receiver.query(
            "SELECT properties->>'seq' FROM altertable.analytics.events ORDER BY 1"
        )
        assert stored == [("1",), ("3",), ("5",)]
        assert injector.counts()["outage_errors"] == 2


def test_random_faults_are_survived_by_a_retrying_client(session: requests.Session) -> None:
    """A client that retries until accepted stores each item once: refusals store nothing."""
    plan = FaultPlan(error_rate=0.3, drop_rate=0.1, seed=5)
    with LocalReceiver(api_keys=[KEY], faults=plan) as receiver:
        for seq in range(60):
            for _ in range(50):
                try:
                    status = session.post(
                        f"{receiver.endpoint}/track", json=_track(seq), headers=HEADERS, timeout=5
                    ).status_code
                except requests.ConnectionError:
                    continue
                if status == 200:
                    break
            else:
                pytest.fail(f"seq {seq} never accepted")
        rows = receiver.query(
            "SELECT count(*), count(DISTINCT properties->>'seq') FROM altertable.analytics.events"
        )
        assert rows == [(60, 60)]
        assert receiver.faults is not None
        counts = receiver.faults.counts()
        assert counts["errors"] > 0
        assert counts["drops"] > 0
        assert counts["passed"] == 60


def test_without_faults_nothing_is_injected(session: requests.Session) -> None:
    with LocalReceiver(api_keys=[KEY]) as receiver:
        assert receiver.faults is None
        answer = session.post(
            f"{receiver.endpoint}/track", json=_track(1), headers=HEADERS, timeout=5
        )
        assert answer.status_code == 200
        assert "Retry-After" not in answer.headers
