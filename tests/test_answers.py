"""Reading an API answer: one verdict for the transport and for ``check``."""

from __future__ import annotations

import gzip
import json
import logging
import random
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3
from faultserver import Answer, FaultServer, env_not_found_400
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SpanExportResult
from support import MakeExporter, Spans, package_records

from opentelemetry_exporter_altertable._answers import (
    CONFIG_ERRORS,
    MAX_ANSWER_BYTES,
    _Decoder,
    _TooLarge,
    config_error,
    read_answer,
    read_body,
    read_stream,
)
from opentelemetry_exporter_altertable._retry import AnswerTimeout


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


# ---------------------------------------------------------------------------- the verdict


def test_the_code_is_error_code_else_error_as_text() -> None:
    assert read_answer(400, b'{"error_code": "a", "error": "b"}').code == "a"
    assert read_answer(400, b'{"error_code": null, "error": "b"}').code == "b"
    assert read_answer(400, b'{"error_code": "", "error": "b"}').code == "b"
    assert read_answer(400, b'{"error_code": 7}').code == "7"
    assert read_answer(400, b'{"error": ""}').code is None
    assert read_answer(400, b'{"error_code": 0, "error": false}').code is None
    assert read_answer(400, b'{"message": "no code"}').code is None
    assert read_answer(400, b"").code is None


@pytest.mark.parametrize(
    ("status", "accepted"), [(199, False), (200, True), (204, True), (299, True), (300, False)]
)
def test_only_a_2xx_is_accepted(status: int, accepted: bool) -> None:
    answer = read_answer(status, b"")
    assert answer.accepted is accepted
    assert answer.error_code == (None if accepted else f"http-{status}")


def test_only_ok_false_itself_refuses_a_2xx() -> None:
    assert read_answer(200, b'{"ok": true}').accepted is True
    assert read_answer(200, b'{"ok": null}').accepted is True
    assert read_answer(200, b'{"ok": 0}').accepted is True  # not False: not a refusal
    assert read_answer(200, b'{"task_id": "t"}').accepted is True
    assert read_answer(200, b"[false]").accepted is True  # not an object: the status decides
    assert read_answer(200, b'{"ok": false}').accepted is False
    assert read_answer(299, b'{"ok": false, "error": "x"}').error_code == "x"
    assert read_answer(400, b'{"ok": true}').error_code == "http-400"
    assert read_answer(503, b'{"error_code": "busy"}').error_code == "busy"


def test_the_body_is_kept_only_when_it_is_a_json_object() -> None:
    assert read_answer(200, b'{"ok": true, "n": 1}').data == {"ok": True, "n": 1}
    assert read_answer(200, b"").data is None
    assert read_answer(200, b"[1, 2]").data is None
    assert read_answer(200, b'"text"').data is None
    assert read_answer(200, b"{not json").data is None
    assert read_answer(200, b'{"ok": "\xff"}').data is None  # not UTF-8


@pytest.mark.parametrize(
    ("status", "code", "setting"),
    [
        (401, None, "auth"),
        (403, "environment-not-found", "auth"),
        (400, "environment-not-found", "environment-not-found"),
        (422, "environment-not-found", "environment-not-found"),
        (200, "environment-not-found", "environment-not-found"),
        (404, None, "endpoint-not-found"),
        (405, "nope", "endpoint-not-found"),
        (300, None, "endpoint-not-found"),
        (399, None, "endpoint-not-found"),
        (299, None, None),
        (400, None, None),
        (402, None, None),
        (406, None, None),
        (500, "auth", None),
    ],
)
def test_which_setting_an_answer_blames(status: int, code: str | None, setting: str | None) -> None:
    assert config_error(status, code) == setting
    assert setting is None or setting in CONFIG_ERRORS


def test_the_setting_errors_are_exactly_these() -> None:
    assert {"auth", "environment-not-found", "endpoint-not-found", "tls"} == CONFIG_ERRORS
    assert read_answer(200, b"{}").setting_error is None
    assert read_answer(404, b'{"error": "environment-not-found"}').setting_error == (
        "environment-not-found"
    )


# ---------------------------------------------------------------------------- decoding


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _decode(encoding: str, pieces: list[bytes], limit: int = 1000) -> bytes:
    decoder = _Decoder(encoding, limit)
    for piece in pieces:
        decoder.feed(piece)
    return decoder.result()


BODY = b'{"ok": false, "error_code": "insert-failed"}' * 3


@pytest.mark.parametrize(
    ("encoding", "wire"),
    [
        ("", BODY),
        ("identity", BODY),
        ("gzip", _gzip(BODY)),
        ("x-gzip", _gzip(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("deflate", _raw_deflate(BODY)),  # unwrapped, as some servers send it
    ],
    ids=["none", "identity", "gzip", "x-gzip", "deflate", "deflate-raw"],
)
def test_each_accepted_encoding_is_undone_whole_or_in_pieces(encoding: str, wire: bytes) -> None:
    assert _decode(encoding, [wire]) == BODY
    assert _decode(encoding, [wire[i : i + 3] for i in range(0, len(wire), 3)]) == BODY


def test_an_unsupported_encoding_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^unsupported Content-Encoding 'br'$"):
        _Decoder("br", 1000)
    with pytest.raises(ValueError, match=r"^unsupported Content-Encoding '" + "x" * 40 + "'$"):
        _Decoder("x" * 100, 1000)


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
def test_the_decoded_bound_is_exact(encoding: str) -> None:
    def wire(data: bytes) -> bytes:
        return {"": data, "gzip": _gzip(data), "deflate": zlib.compress(data)}[encoding]

    assert _decode(encoding, [wire(b"a" * 100)], limit=100) == b"a" * 100
    with pytest.raises(_TooLarge):
        _decode(encoding, [wire(b"a" * 101)], limit=100)
    pieces = (
        [b"a" * 60, b"a" * 40] if encoding == "" else [wire(b"a" * 100)[:9], wire(b"a" * 100)[9:]]
    )
    assert _decode(encoding, pieces, limit=100) == b"a" * 100
    with pytest.raises(_TooLarge):  # the bound is on the whole body, not on each piece
        _decode(
            encoding,
            [wire(b"a" * 101)[:9], wire(b"a" * 101)[9:]] if encoding else [b"a" * 60, b"a" * 41],
            limit=100,
        )


def test_a_raw_deflate_answer_has_the_same_bound() -> None:
    assert _decode("deflate", [_raw_deflate(b"a" * 100)], limit=100) == b"a" * 100
    with pytest.raises(_TooLarge):
        _decode("deflate", [_raw_deflate(b"a" * 101)], limit=100)


def test_gzip_means_gzip() -> None:
    with pytest.raises(zlib.error):  # a zlib-wrapped body is not a gzip one
        _decode("gzip", [zlib.compress(BODY)])


def _inflating_memory(decoder: _Decoder, bomb: bytes) -> int:
    """Peak bytes allocated while ``decoder`` refuses ``bomb`` as too large."""
    tracemalloc.start()
    try:
        with pytest.raises(_TooLarge):
            decoder.feed(bomb)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_bomb_decodes_no_further_than_the_bound() -> None:
    """Past the bound nothing more is inflated: not even when an earlier piece already came
    close to it (the room left is what may be inflated, not the bound again)."""
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    first = packer.compress(b"a" * 199_000) + packer.flush(zlib.Z_FULL_FLUSH)
    bomb = packer.compress(b"\0" * (8 * 1024 * 1024)) + packer.flush()  # 8 MiB, inflated
    decoder = _Decoder("gzip", 200_000)
    decoder.feed(first)
    assert _inflating_memory(decoder, bomb) < 100_000  # the bomb itself is about 8 kB


def test_a_raw_deflate_bomb_decodes_no_further_than_the_bound() -> None:
    """Raw (unwrapped) deflate is bounded like the rest: about the bound, not the 8 MiB."""
    decoder = _Decoder("deflate", 200_000)
    assert _inflating_memory(decoder, _raw_deflate(b"\0" * (8 * 1024 * 1024))) < 1_000_000


def test_a_corrupt_stream_is_an_error_not_a_guess() -> None:
    with pytest.raises(zlib.error):
        _decode("gzip", [b"not gzip at all"])
    with pytest.raises(zlib.error):
        _decode("deflate", [b"\xff\xff not deflate"])  # neither wrapped nor raw
    wrapped = zlib.compress(BODY)
    # Wrapped, decoded in part, then a wrong checksum: an error, not a retry as raw deflate
    # (the four bytes would read as an empty raw stream).
    with pytest.raises(zlib.error, match="incorrect data check"):
        _decode("deflate", [wrapped[:-4], b"\x03\x00\x03\x00"])
    # Raw from the start (a stored block), then bad block lengths: raw is not tried afresh on
    # the second piece (alone it would read as the start of another stored block).
    with pytest.raises(zlib.error, match="invalid stored block lengths"):
        _decode("deflate", [b"\x01\x05", b"\x00\x03\x00"])


# ---------------------------------------------------------------------------- over the wire


@pytest.fixture
def pool() -> Iterator[urllib3.PoolManager]:
    # One connection, and a request waits for it: an answer that did not give its connection
    # back (read or discarded) makes the next request fail with EmptyPoolError.
    manager = urllib3.PoolManager(maxsize=1, block=True)
    yield manager
    manager.clear()


def answer_to(pool: urllib3.PoolManager, server: FaultServer, answer: Answer) -> Any:
    """A streamed urllib3 answer, not read yet, as the transport gets it."""
    server.script("/track", [answer])
    return pool.request(
        "POST",
        f"{server.endpoint}/track",
        body=b"[]",
        preload_content=False,
        decode_content=False,
        retries=False,
        timeout=urllib3.Timeout(connect=5.0, read=30.0),
        pool_timeout=2.0,
    )


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def test_a_read_answer_goes_back_to_the_pool(
    server: FaultServer, pool: urllib3.PoolManager
) -> None:
    body = json.dumps({"ok": True, "task_id": "t1"}).encode()
    for _ in range(3):
        raw = answer_to(pool, server, Answer(200, body=body))
        assert read_stream(raw, later()) == body
    assert server.connections_accepted == 1  # one keep-alive connection for all three


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
def test_an_encoded_answer_is_read_decoded(
    server: FaultServer, pool: urllib3.PoolManager, encoding: str
) -> None:
    body = {"ok": False, "error_code": "insert-failed"}
    raw = answer_to(pool, server, Answer(200, body=body, encoding=encoding))
    assert json.loads(read_stream(raw, later())) == body
    assert answer_to(pool, server, Answer(200, body=b"{}")).read() == b"{}"
    assert server.connections_accepted == 1


def test_the_encoding_header_is_read_without_case_or_spaces(
    server: FaultServer, pool: urllib3.PoolManager
) -> None:
    raw = answer_to(
        pool, server, Answer(200, body=_gzip(BODY), headers={"Content-Encoding": " X-GZip "})
    )
    assert read_stream(raw, later()) == BODY


def _discarded(server: FaultServer, pool: urllib3.PoolManager) -> bool:
    """Whether the last answer's connection was closed (the next request needs a new one)."""
    before = server.connections_accepted
    assert answer_to(pool, server, Answer(200, body=b"{}")).read() == b"{}"
    return server.connections_accepted == before + 1


def test_an_answer_in_an_unknown_encoding_reads_as_empty_and_is_discarded(
    server: FaultServer, pool: urllib3.PoolManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="opentelemetry_exporter_altertable._answers")
    raw = answer_to(pool, server, Answer(200, body=b"\x0b\x05", headers={"Content-Encoding": "br"}))
    assert read_stream(raw, later()) == b""
    assert _discarded(server, pool)
    assert [r.getMessage() for r in caplog.records] == [
        "answer not decoded: unsupported Content-Encoding 'br'"
    ]


def _zeros_then_noise() -> bytes:
    """200 kB that gzip to about 70 kB: the first 64 KiB read already decode past 100 kB."""
    return b"\0" * 200_000 + random.Random(7).randbytes(70_000)


@pytest.mark.parametrize(
    "case",
    [
        (Answer(200, body=b"x" * 70_000), 1000, "_TooLarge"),  # too large on the wire
        (Answer(200, body=_zeros_then_noise(), encoding="gzip"), 100_000, "_TooLarge"),
        (Answer(200, body=b"x" * (MAX_ANSWER_BYTES + 70_000)), None, "_TooLarge"),
        (
            Answer(200, body=b"\x1f\x8b" + b"\xff" * 70_000, headers={"Content-Encoding": "gzip"}),
            None,
            "error",
        ),
    ],
    ids=["wire", "decoded", "default-bound", "corrupt"],
)
def test_an_answer_too_large_or_corrupt_reads_as_empty_and_is_discarded(
    server: FaultServer,
    pool: urllib3.PoolManager,
    caplog: pytest.LogCaptureFixture,
    case: tuple[Answer, int | None, str],
) -> None:
    answer, limit, kind = case
    caplog.set_level(logging.DEBUG, logger="opentelemetry_exporter_altertable._answers")
    raw = answer_to(pool, server, answer)
    body = read_stream(raw, later()) if limit is None else read_stream(raw, later(), limit)
    assert body == b""
    assert _discarded(server, pool)  # the rest was not read: the connection is not reused
    assert [r.getMessage() for r in caplog.records] == [f"answer body ignored ({kind})"]


def test_the_bound_holds_on_the_wire_too(server: FaultServer, pool: urllib3.PoolManager) -> None:
    """Noise does not compress: its gzip is a little larger than itself. Decoded it fits the
    bound, but on the wire it is past it: not read."""
    noise = random.Random(11).randbytes(100_000)
    wire = len(_gzip(noise))
    assert 100_000 < wire < 100_100
    raw = answer_to(pool, server, Answer(200, body=noise, encoding="gzip"))
    assert read_stream(raw, later(), 100_050) == b""
    raw = answer_to(pool, server, Answer(200, body=noise, encoding="gzip"))
    assert read_stream(raw, later(), wire) == noise


def test_an_answer_exactly_at_the_bound_is_read(
    server: FaultServer, pool: urllib3.PoolManager
) -> None:
    raw = answer_to(pool, server, Answer(200, body=b"x" * 100))
    assert read_stream(raw, later(), 100) == b"x" * 100
    raw = answer_to(pool, server, Answer(200, body=b"x" * MAX_ANSWER_BYTES))
    assert read_stream(raw, later()) == b"x" * MAX_ANSWER_BYTES
    raw = answer_to(pool, server, Answer(200, body=b"{}"))
    assert read_stream(raw, later(0.5)) == b"{}"  # half a second is time enough to read it
    assert server.connections_accepted == 1


def test_an_answer_past_its_deadline_is_not_read(
    server: FaultServer, pool: urllib3.PoolManager
) -> None:
    raw = answer_to(pool, server, Answer(200, body=b"{}"))
    with pytest.raises(AnswerTimeout, match=r"^the answer did not arrive before the deadline$"):
        read_stream(raw, time.monotonic())
    assert _discarded(server, pool)


def test_a_trickled_answer_ends_at_the_deadline(
    server: FaultServer, pool: urllib3.PoolManager
) -> None:
    """Each byte comes well within any per-read timeout; the deadline still ends the read."""
    raw = answer_to(pool, server, Answer(200, body=b"x" * 200, trickle=0.02))  # 4 s in all
    started = time.monotonic()
    with pytest.raises((AnswerTimeout, urllib3.exceptions.ReadTimeoutError)):
        read_stream(raw, started + 0.3)  # the clock between reads, or the shortened timeout
    took = time.monotonic() - started
    assert took < 0.3 + 1.0  # the deadline plus one pause, with a second for a busy machine
    assert _discarded(server, pool)


def test_a_stalled_answer_ends_at_the_deadline_not_the_read_timeout(
    server: FaultServer, pool: urllib3.PoolManager
) -> None:
    """The socket's 30 s read timeout is cut to what is left before the deadline."""
    raw = answer_to(pool, server, Answer(200, body=b"x" * 200, stall=10))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        read_stream(raw, started + 0.3)
    assert time.monotonic() - started < 0.3 + 2.0  # a margin of two seconds for a busy machine
    assert _discarded(server, pool)


class _Urllib3V1Response:
    """A real urllib3 answer seen through urllib3 1.x's interface: no ``read1``."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.headers = raw.headers
        self.connection = raw.connection

    def read(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        return bytes(self._raw.read(amt, decode_content=decode_content))

    def close(self) -> None:
        self._raw.close()

    def release_conn(self) -> None:
        self._raw.release_conn()


def test_an_answer_without_partial_reads_is_read_whole(
    server: FaultServer, pool: urllib3.PoolManager
) -> None:
    body = {"ok": False, "error_code": "insert-failed"}
    raw = answer_to(pool, server, Answer(200, body=body, encoding="gzip"))
    assert json.loads(read_stream(_Urllib3V1Response(raw), later())) == body
    raw = answer_to(pool, server, Answer(200, body=b"x" * 70_000))
    assert read_stream(_Urllib3V1Response(raw), later(), 1000) == b""
    assert _discarded(server, pool)


def test_read_body_keeps_the_body_as_the_responses_content(server: FaultServer) -> None:
    server.script("/track", [Answer(200, body={"ok": False, "error": "x"}, encoding="gzip")])
    with requests.Session() as session:
        response = session.post(f"{server.endpoint}/track", data=b"[]", stream=True)
        body = read_body(response, later())
        assert json.loads(body) == {"ok": False, "error": "x"}
        assert response.content == body
        assert response.json() == {"ok": False, "error": "x"}
        assert session.post(f"{server.endpoint}/track", data=b"[]").status_code == 200
    assert server.connections_accepted == 1  # read to its end: the connection was reused


def test_read_body_keeps_to_its_deadline_and_bound(server: FaultServer) -> None:
    server.set_default(Answer(200, body=b"x" * 100))
    with requests.Session() as session:
        response = session.post(f"{server.endpoint}/track", data=b"[]", stream=True)
        assert read_body(response, later(), 99) == b""
        assert response.content == b""
        response = session.post(f"{server.endpoint}/track", data=b"[]", stream=True)
        with pytest.raises(AnswerTimeout):
            read_body(response, time.monotonic())


# ----------------------------------------------------------------------- encoded answers end to end


#: Headroom for thread scheduling on a loaded machine, on top of a promised bound.
MARGIN = 0.75


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
def test_an_encoded_ok_false_is_a_refusal(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, encoding: str
) -> None:
    server.set_default(
        Answer(200, body={"ok": False, "error_code": "insert-failed"}, encoding=encoding)
    )
    exporter = make_exporter()

    assert exporter.export(spans(1)) is SpanExportResult.FAILURE

    stats = exporter.stats()
    assert stats["calls_exported"] == 0
    assert stats["dropped_by_reason"] == {"insert-failed": 1}


def test_an_encoded_acceptance_is_an_acceptance(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    server.set_default(Answer(200, body={"ok": True, "task_id": "t"}, encoding="gzip"))
    exporter = make_exporter()
    assert exporter.export(spans(3)) is SpanExportResult.SUCCESS
    assert exporter.stats()["calls_exported"] == 3


def test_a_gzipped_environment_not_found_is_a_setting_error_not_bisected(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans, logs: Any
) -> None:
    server.set_default(Answer(400, body=env_not_found_400().body, encoding="gzip"))
    exporter = make_exporter(max_batch_size=50, environment="qa-7")

    assert exporter.export(spans(50)) is SpanExportResult.FAILURE

    assert len(server.requests) == 1
    stats = exporter.stats()
    assert stats["dropped_by_reason"] == {"undelivered-environment-not-found": 50}
    errors = [r.getMessage() for r in package_records(logs, logging.ERROR)]
    assert len(errors) == 1
    assert "'qa-7'" in errors[0]


def test_a_gzipped_answer_still_cannot_outlive_the_deadline(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    import time

    server.set_default(Answer(200, trickle=0.2, encoding="gzip"))
    exporter = make_exporter(timeout=1.0)
    started = time.monotonic()
    assert exporter.export(spans(2)) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 1.0 + MARGIN


def test_a_decompression_bomb_is_not_decoded_past_the_bound(
    server: FaultServer, make_exporter: MakeExporter, spans: Spans
) -> None:
    """64 MiB of zeros in 64 KiB of gzip: read at most 1 MiB decoded; the status decides."""
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    server.set_default(
        Answer(200, body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "x/y"})
    )
    exporter = make_exporter()
    tracemalloc.start()
    try:
        result = exporter.export(spans(1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result is SpanExportResult.SUCCESS
    assert peak < 8 * 1024 * 1024
