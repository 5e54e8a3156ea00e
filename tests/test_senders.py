"""The sender interface on its own, over real loopback HTTP: each of the three senders.

The transport sees one :class:`Sender` (``request``, ``abort``, ``close``, ``forked``) and never
asks which it is; these tests hold each implementation to that interface: the same request on
the wire and an unread answer back, an abort that ends a read under way only where the
connections are the package's own, a close that leaves a user's connections alone, and a forked
child that never reuses the parent's sockets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from faultserver import Answer, FaultServer, hang

from opentelemetry_exporter_altertable._answers import read_stream
from opentelemetry_exporter_altertable._pool import (
    GivenSession,
    OwnPool,
    OwnSession,
    Sender,
    resolve_sender,
)

HEADERS = {"Content-Type": "application/json", "X-Test": "sender"}

MakeSender = Callable[[str], Sender]


def _own_pool(endpoint: str) -> Sender:
    return resolve_sender(endpoint)


def _own_session(endpoint: str) -> Sender:
    return OwnSession(endpoint)


def _given_session(endpoint: str) -> Sender:
    return GivenSession(requests.Session())


KINDS: dict[str, MakeSender] = {
    "own-pool": _own_pool,
    "own-session": _own_session,
    "given-session": _given_session,
}


@pytest.fixture(params=list(KINDS))
def make_sender(request: pytest.FixtureRequest) -> Iterator[MakeSender]:
    made: list[Sender] = []

    def make(endpoint: str) -> Sender:
        sender = KINDS[request.param](endpoint)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()
        if isinstance(sender, GivenSession):
            sender.session.close()


def _post(sender: Sender, endpoint: str, body: bytes = b'[{"event":"e"}]') -> tuple[int, bytes]:
    target = "/track?sync=true"
    raw, status = sender.request(f"{endpoint}{target}", target, body, HEADERS, 5)
    return status, read_stream(raw, time.monotonic() + 5)


def test_each_sender_posts_the_same_request_and_hands_back_the_answer_unread(
    server: FaultServer, make_sender: MakeSender
) -> None:
    server.script("/track", [Answer(503, body=b"busy")])
    sender = make_sender(server.endpoint)
    first = _post(sender, server.endpoint)
    second = _post(sender, server.endpoint)
    assert first == (503, b"busy")
    assert second[0] == 200
    (one, two) = server.requests
    assert (one.method, one.target) == ("POST", "/track?sync=true")
    assert one.raw_body == b'[{"event":"e"}]'
    assert one.headers["x-test"] == "sender"
    assert two.connection == one.connection  # kept alive: the answer was read to its end


def test_a_sender_neither_retries_nor_follows_a_redirect(
    server: FaultServer, make_sender: MakeSender
) -> None:
    server.script("/track", [Answer(307, body=b"", headers={"Location": "/elsewhere"})])
    sender = make_sender(server.endpoint)
    assert _post(sender, server.endpoint)[0] == 307
    assert [r.path for r in server.requests] == ["/track"]


def _read_under_way(
    sender: Sender, server: FaultServer, answer: Answer | None = None
) -> tuple[threading.Thread, list[object]]:
    """POST from a thread to ``server`` (which hangs, or gives ``answer``) and return once the
    request has arrived; the list gets what ended the POST: its answer, or an exception."""
    server.set_default(hang() if answer is None else answer)
    ended: list[object] = []

    def post() -> None:
        try:
            ended.append(_post(sender, server.endpoint))
        except Exception as exc:  # what ended the read is the outcome
            ended.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    assert server.wait_for_requests(1)
    return thread, ended


@pytest.mark.parametrize("kind", ["own-pool", "own-session"])
def test_abort_ends_a_read_under_way_on_the_packages_own_connections(
    server: FaultServer, kind: str
) -> None:
    sender = KINDS[kind](server.endpoint)
    try:
        thread, ended = _read_under_way(sender, server)
        sender.abort()
        thread.join(10)  # a bound for a loaded machine; the abort ends the read at once
        assert not thread.is_alive()
    finally:
        server.stop()
        sender.close()
    (outcome,) = ended
    assert isinstance(outcome, Exception)


def test_abort_leaves_a_users_session_alone(server: FaultServer) -> None:
    session = requests.Session()
    sender = GivenSession(session)
    try:
        thread, ended = _read_under_way(sender, server, Answer(200, delay=0.5))
        sender.abort()
        thread.join()
    finally:
        session.close()
    (answer,) = ended
    assert isinstance(answer, tuple)
    assert answer[0] == 200  # answered whole: the abort did not touch a user's connection


def test_close_keeps_a_users_connections_and_closes_the_packages_own(
    server: FaultServer, make_sender: MakeSender
) -> None:
    sender = make_sender(server.endpoint)
    _post(sender, server.endpoint)
    sender.close()
    _post(sender, server.endpoint)
    given = isinstance(sender, GivenSession) and not isinstance(sender, OwnSession)
    assert server.connections_accepted == (1 if given else 2)


def test_a_forked_sender_never_reuses_the_parents_connections(
    server: FaultServer, make_sender: MakeSender
) -> None:
    sender = make_sender(server.endpoint)
    _post(sender, server.endpoint)
    child = sender.forked()
    _post(child, server.endpoint)
    _post(child, server.endpoint)
    assert [r.connection for r in server.requests] == [1, 2, 2]
    if isinstance(sender, OwnSession | OwnPool):
        assert child is not sender  # a fresh pool of its own, read from the environment again
        child.close()
    else:
        assert child is sender  # a user's session stays the user's


def test_resolve_sender_picks_the_pool_a_session_or_the_users_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = "http://127.0.0.1:9"
    own = resolve_sender(endpoint)
    assert isinstance(own, OwnPool)
    own.close()
    session = requests.Session()
    given = resolve_sender(endpoint, session)
    assert isinstance(given, GivenSession)
    assert given.session is session
    session.close()
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("no_proxy")
    socks = resolve_sender(endpoint)
    assert isinstance(socks, OwnSession)  # only requests' adapter speaks SOCKS
    assert socks.session.proxies == {"http": "socks5://127.0.0.1:1"}
    socks.close()
