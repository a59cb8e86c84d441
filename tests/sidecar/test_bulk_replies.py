"""Large GET replies gathered past hiredis (``podcache.backends.bulk_replies``).

Aspects:
- the header parser takes only complete headers of large bulk strings (nil, small values,
  errors, a split header and garbage are left to hiredis);
- on a connection fed by hand: a large GET reply split at every awkward place (inside
  its header, inside the payload, between payload and CRLF, inside the CRLF) arrives
  whole, and the replies around it reach their own callers; two large replies in one
  read; a large reply to a command that is not GET stays hiredis's; a cancelled caller's
  large reply is dropped and the connection stays in step; a bad terminator drops the
  connection;
- the payload of a large GET reply is never fed to hiredis (the copy this saves);
- against a real Redis: concurrent large and small GETs and other commands come back
  right and in order.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from podcache.backends import bulk_replies, redis_pipeline
from podcache.backends.redis_pipeline import PipelinedConnection, ReplyError, pack
from podcache.config import Config, RedisSettings
from podcache.errors import BackendUnavailable

BIG = bulk_replies.BIG_REPLY


class _Owner:
    def __init__(self) -> None:
        self.lost: list[object] = []

    def link_lost(self, link: object) -> None:
        self.lost.append(link)


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class _CountingReader:
    """hiredis's reader, counting the bytes it is fed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fed = 0

    def feed(self, data: Any) -> None:
        self.fed += len(data)
        self.inner.feed(data)

    def gets(self) -> Any:
        return self.inner.gets()

    def has_data(self) -> bool:
        return bool(self.inner.has_data())


def _link(*commands: tuple[Any, ...]) -> tuple[redis_pipeline._Link, list[asyncio.Future[Any]]]:
    loop = asyncio.get_running_loop()
    link = redis_pipeline._Link(_Owner())  # type: ignore[arg-type]
    link.transport = _Transport()
    futures = [loop.create_future() for _ in commands]
    link.sent.extend((f, loop.time() + 5, pack(c)) for f, c in zip(futures, commands, strict=True))
    return link, futures


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def test_header_parser() -> None:
    big = b"$%d\r\n" % BIG
    assert bulk_replies.big_bulk_header(memoryview(big + b"x")) == (BIG, len(big))
    assert bulk_replies.big_bulk_header(memoryview(b"$%d\r\n" % (BIG - 1))) is None
    assert bulk_replies.big_bulk_header(memoryview(b"$-1\r\n")) is None
    assert bulk_replies.big_bulk_header(memoryview(b"$655")) is None  # header not complete
    assert bulk_replies.big_bulk_header(memoryview(b"-ERR no\r\n")) is None
    assert bulk_replies.big_bulk_header(memoryview(b"$x9\r\n")) is None
    assert bulk_replies.big_bulk_header(memoryview(b"")) is None


def _splits(stream: bytes, value_at: int, size: int) -> list[list[int]]:
    header_end = stream.index(b"\r\n", value_at) + 2
    payload_end = header_end + size
    return [
        [],
        [value_at + 3],  # inside the header: hiredis gets the start, and so all of it
        [header_end + 10, header_end + 70_000],  # inside the payload, twice
        [payload_end],  # between payload and CRLF
        [payload_end + 1],  # inside the CRLF
        [payload_end + 2],  # right after the reply
        list(range(value_at, len(stream), 4096)),
    ]


async def test_large_reply_split_anywhere_arrives_whole() -> None:
    value = bytes(range(256)) * (3 * BIG // 256 + 1)
    prefix = _bulk(b"small") + b"+OK\r\n"
    stream = prefix + _bulk(value) + b":7\r\n" + _bulk(b"after")
    for cuts in _splits(stream, len(prefix), len(value)):
        link, futures = _link((b"GET", b"a"), (b"SET", b"b", b"c"), (b"GET", b"big"),
                              (b"INCR", b"n"), (b"GET", b"c"))
        edges = [0, *cuts, len(stream)]
        for start, end in itertools.pairwise(edges):
            link.data_received(stream[start:end])
        assert [f.result() for f in futures] == [b"small", b"OK", value, 7, b"after"], cuts
        assert not link.sent
        assert link.bulk is None


async def test_two_large_replies_in_one_read_and_none_fed_to_hiredis() -> None:
    one, two = b"1" * BIG, b"2" * (BIG * 2)
    link, futures = _link((b"GET", b"one"), (b"GET", b"two"), (b"GET", b"three"))
    reader = link.reader = _CountingReader(link.reader)  # type: ignore[assignment]
    link.data_received(_bulk(one) + _bulk(two) + _bulk(b"x"))
    assert [f.result() for f in futures] == [one, two, b"x"]
    assert reader.fed == len(_bulk(b"x"))  # the large payloads never went through hiredis


async def test_large_reply_to_another_command_stays_hiredis() -> None:
    value = b"v" * BIG
    link, futures = _link((b"EVALSHA", b"0" * 40, 0), (b"GET", b"k"))
    reader = link.reader = _CountingReader(link.reader)  # type: ignore[assignment]
    link.data_received(_bulk(value))
    link.data_received(_bulk(value))
    assert [f.result() for f in futures] == [value, value]
    assert reader.fed == len(_bulk(value))  # the first went through hiredis, the GET's not
    # A read that starts with another command's reply is hiredis's to its end.
    link, futures = _link((b"EVALSHA", b"0" * 40, 0), (b"GET", b"k"))
    link.data_received(_bulk(value) + _bulk(value))
    assert [f.result() for f in futures] == [value, value]


async def test_large_reply_after_an_aggregate_in_progress_stays_hiredis() -> None:
    # The script's reply is an array whose first element is complete and whose second
    # has not arrived: hiredis is inside a reply although it holds no bytes.
    value = b"v" * BIG
    link, futures = _link((b"EVALSHA", b"0" * 40, 0), (b"GET", b"k"))
    link.data_received(b"*2\r\n:1\r\n")
    link.data_received(_bulk(value) + _bulk(b"x"))
    assert [f.result() for f in futures] == [[1, value], b"x"]


async def test_cancelled_caller_of_a_large_reply() -> None:
    value = b"v" * BIG
    link, futures = _link((b"GET", b"k"), (b"GET", b"m"))
    futures[0].cancel()
    link.data_received(_bulk(value) + _bulk(b"m"))
    assert futures[1].result() == b"m"
    assert not link.sent


async def test_error_and_nil_replies_to_get_in_long_reads() -> None:
    value = b"v" * BIG
    link, futures = _link((b"GET", b"k"), (b"GET", b"m"), (b"GET", b"n"), (b"GET", b"o"))
    link.data_received(b"$-1\r\n-WRONGTYPE no\r\n" + _bulk(value))
    link.data_received(b"-WRONGTYPE no\r\n" + b"x" * bulk_replies.MIN_CHUNK)
    assert futures[0].result() is None
    with pytest.raises(ReplyError):
        futures[1].result()
    assert futures[2].result() == value
    with pytest.raises(BackendUnavailable):
        futures[3].result()  # an error reply, then garbage: the connection is dropped
    assert link.transport.aborted


async def test_bad_terminator_drops_the_connection() -> None:
    link, futures = _link((b"GET", b"k"), (b"GET", b"m"))
    link.data_received(b"$%d\r\n" % BIG + b"v" * BIG + b"XY" + _bulk(b"m"))
    for future in futures:
        with pytest.raises(BackendUnavailable, match="unparsable"):
            future.result()
    assert link.transport.aborted


async def test_real_redis_mixed_large_and_small(redis_url: str) -> None:
    raw = {"url": redis_url, "timeouts": {"operation": "5s", "connect": "2s"}}
    settings = Config(type="redis", config=raw).settings
    assert isinstance(settings, RedisSettings)
    pipe = PipelinedConnection(settings)
    try:
        values = {f"k{i}": bytes([65 + i]) * (BIG * (i + 1) + i) for i in range(6)}
        values["small"] = b"s"
        for key, value in values.items():
            assert await pipe.call(b"SET", key, value) == b"OK"
        for _ in range(3):
            calls: list[asyncio.Future[Any]] = []
            for key in values:
                calls.append(pipe.execute(b"GET", key))
                calls.append(pipe.execute(b"INCR", "n"))
                calls.append(pipe.execute(b"GET", "missing"))
            results = await asyncio.gather(*calls)
            assert results[0::3] == list(values.values())
            assert results[1::3] == sorted(results[1::3])
            assert results[2::3] == [None] * len(values)
    finally:
        await pipe.aclose()
