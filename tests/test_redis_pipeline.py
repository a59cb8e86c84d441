"""The auto-pipelined Redis connection (``podcache.backends.redis_pipeline``) on a real Redis.

Aspects:
- batching: commands issued in one loop tick go out in one write, replies come back to
  their own callers in order; RESP encoding of big arguments without a copy;
- a reply larger than the socket buffers (8 MiB) arrives whole, and small replies
  queued behind it still reach their own callers;
- cancellation of one caller in a batch: the others still get their own replies, and
  the connection stays in step for later commands;
- NOSCRIPT in the middle of a batch (SCRIPT FLUSH): the script runs by EVAL and the
  other commands of the batch are unaffected;
- Redis killed mid-batch: every waiter fails with BackendUnavailable within the
  operation timeout, none hangs; after a restart on the same port it reconnects by itself;
- Redis paused: the one deadline timer fails everything in flight within the timeout;
  after SIGCONT the next command works;
- a server that accepts but never answers (the handshake hangs): calls fail within the
  operation timeout, not the longer connect timeout;
- SELECT from the URL's db, AUTH with a wrong password answered as BackendUnavailable;
- a READONLY reply (a demoted primary) drops the connection at once under load, and
  writes succeed again once the server is a primary;
- bounded in flight: beyond ``max_inflight`` a call is refused at once;
- a closed connection refuses new calls and fails what was queued;
- the cache and the locks use it, not the pool.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from podcache.backends import redis_pipeline
from podcache.backends.redis_pipeline import PipelinedConnection, ReplyError, Script, pack
from podcache.config import Config, RedisSettings
from podcache.errors import BackendUnavailable
from tests.redis_server import RedisServer

TIMEOUT = 0.4
MARGIN = 0.5
"""Scheduling slack on a busy 2-core machine; still far below any hang."""


def settings(url: str, **extra: Any) -> RedisSettings:
    raw = {"url": url, "timeouts": {"operation": f"{TIMEOUT}s", "connect": "2s"}, **extra}
    parsed = Config(type="redis", config=raw).settings
    assert isinstance(parsed, RedisSettings)
    return parsed


MakePipe = Callable[..., PipelinedConnection]


@pytest.fixture
async def make_pipe() -> AsyncIterator[MakePipe]:
    made: list[PipelinedConnection] = []

    def make(url: str, **kwargs: Any) -> PipelinedConnection:
        pipe = PipelinedConnection(settings(url), **kwargs)
        made.append(pipe)
        return pipe

    yield make
    for pipe in made:
        await pipe.aclose()


async def gather_outcomes(futures: list[asyncio.Future[Any]]) -> list[Any]:
    return await asyncio.gather(*futures, return_exceptions=True)


# -- batching and replies --


def test_pack_keeps_big_arguments_as_their_own_buffers() -> None:
    assert pack([b"GET", "k"]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    big = b"x" * redis_pipeline.BIG_ARG
    chunks = pack([b"SET", b"k", big, b"PX", 5])
    assert isinstance(chunks, tuple)
    assert any(chunk is big for chunk in chunks)  # the value itself, not a copy
    assert b"".join(chunks) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % len(big) + big + b"\r\n$2\r\nPX\r\n$1\r\n5\r\n"
    )


async def test_one_write_per_tick_and_replies_in_order(
    make_pipe: MakePipe, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = make_pipe(redis_url)
    await pipe.execute(b"PING")  # connected
    batches: list[int] = []
    real_write = redis_pipeline._Link.write

    def counting_write(link: Any, entries: Any) -> None:
        batches.append(len(entries))
        real_write(link, entries)

    monkeypatch.setattr(redis_pipeline._Link, "write", counting_write)
    sets = [pipe.execute(b"SET", f"k{i}", f"v{i}") for i in range(200)]
    gets = [pipe.execute(b"GET", f"k{i}") for i in range(200)]
    assert await asyncio.gather(*sets) == [b"OK"] * 200
    assert await asyncio.gather(*gets) == [f"v{i}".encode() for i in range(200)]
    assert batches == [400]


async def test_reply_larger_than_the_socket_buffer(make_pipe: MakePipe, redis_url: str) -> None:
    pipe = make_pipe(redis_url)
    big = bytes(range(256)) * (8 * 4096)  # 8 MiB, every byte value
    assert await pipe.execute(b"SET", b"big", big) == b"OK"
    await pipe.execute(b"SET", b"small", b"s")
    futures = [pipe.execute(b"GET", b"big"), pipe.execute(b"GET", b"small"),
               pipe.execute(b"GET", b"big"), pipe.execute(b"GET", b"small")]
    assert await asyncio.gather(*futures) == [big, b"s", big, b"s"]


async def test_cancelling_one_caller_leaves_the_others_their_replies(
    make_pipe: MakePipe, redis_url: str
) -> None:
    pipe = make_pipe(redis_url)
    for name in "abc":
        await pipe.execute(b"SET", name, name.upper())

    async def get(name: str) -> Any:
        return await pipe.execute(b"GET", name)

    tasks = [asyncio.create_task(get(name)) for name in "abc"]
    await asyncio.sleep(0)  # all three queued in this tick
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == b"A"
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[2] == b"C"
    assert await pipe.execute(b"GET", b"b") == b"B"  # still in step


async def test_noscript_in_the_middle_of_a_batch(make_pipe: MakePipe, redis_url: str) -> None:
    pipe = make_pipe(redis_url)
    script = Script("return redis.call('GET', KEYS[1]) .. ARGV[1]")
    await pipe.execute(b"SET", b"s", b"x")
    assert await pipe.run_script(script, [b"s"], [b"1"]) == b"x1"  # cached now
    await pipe.execute(b"SCRIPT", b"FLUSH")
    before = pipe.execute(b"GET", b"s")
    scripted = asyncio.ensure_future(pipe.run_script(script, [b"s"], [b"2"]))
    after = pipe.execute(b"INCR", b"n")
    assert await before == b"x"
    assert await scripted == b"x2"
    assert await after == 1
    with pytest.raises(ReplyError, match="ERR"):
        await pipe.run_script(Script("return redis.call('NOPE')"), [], [])


# -- failures --


async def test_redis_killed_mid_batch_then_restarted(
    make_pipe: MakePipe, redis_server: RedisServer
) -> None:
    pipe = make_pipe(redis_server.url)
    await pipe.execute(b"SET", b"k", b"v")
    # A batch big enough to still be in flight when the server dies.
    futures = [pipe.execute(b"GET", b"k") for _ in range(5000)]
    started = time.monotonic()
    redis_server.stop()
    outcomes = await asyncio.wait_for(gather_outcomes(futures), TIMEOUT + MARGIN)
    assert time.monotonic() - started < TIMEOUT + MARGIN
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert all(isinstance(o, BackendUnavailable) for o in failed)
    assert all(o == b"v" for o in outcomes if not isinstance(o, Exception))
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await pipe.execute(b"GET", b"k")  # refused at once: nothing to connect to
    assert time.monotonic() - started < TIMEOUT + MARGIN
    redis_server.start()
    assert await pipe.execute(b"SET", b"k", b"again") == b"OK"
    assert await pipe.execute(b"GET", b"k") == b"again"


async def test_paused_redis_fails_everything_in_flight_within_the_timeout(
    make_pipe: MakePipe, redis_server: RedisServer
) -> None:
    pipe = make_pipe(redis_server.url)
    await pipe.execute(b"SET", b"k", b"v")
    redis_server.pause()
    try:
        started = time.monotonic()
        futures = [pipe.execute(b"GET", b"k") for _ in range(100)]
        await asyncio.sleep(TIMEOUT / 2)
        futures += [pipe.execute(b"GET", b"k") for _ in range(100)]  # a later batch
        outcomes = await asyncio.wait_for(gather_outcomes(futures), TIMEOUT + MARGIN)
        assert all(isinstance(o, BackendUnavailable) for o in outcomes)
        assert "did not answer" in str(outcomes[0])
        assert time.monotonic() - started < TIMEOUT + MARGIN
    finally:
        redis_server.resume()
    assert await pipe.execute(b"GET", b"k") == b"v"


async def test_silent_server_fails_within_the_operation_timeout(make_pipe: MakePipe) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts (the kernel does), never answers the handshake
    try:
        pipe = make_pipe(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await pipe.execute(b"GET", b"k")
        assert time.monotonic() - started < TIMEOUT + MARGIN  # not the 2 s connect timeout
    finally:
        listener.close()


async def test_select_and_wrong_password(make_pipe: MakePipe, redis_server: RedisServer) -> None:
    pipe = make_pipe(redis_server.url.rsplit("/", 1)[0] + "/3")
    await pipe.execute(b"SET", b"db3", b"yes")
    admin = redis.asyncio.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
    try:
        assert await admin.get("db3") == b"yes"
        await admin.config_set("requirepass", "right")
    finally:
        await admin.aclose()
    wrong = PipelinedConnection(settings(redis_server.url, password="wrong"))
    try:
        with pytest.raises(BackendUnavailable, match=r"(?i)auth|pass"):
            await wrong.execute(b"GET", b"k")
    finally:
        await wrong.aclose()


async def test_in_flight_is_bounded(make_pipe: MakePipe, redis_url: str) -> None:
    pipe = make_pipe(redis_url, max_inflight=10)
    futures = [pipe.execute(b"PING") for _ in range(10)]
    with pytest.raises(BackendUnavailable, match="in flight"):
        pipe.execute(b"PING")
    assert await asyncio.gather(*futures) == [b"PONG"] * 10
    assert await pipe.execute(b"PING") == b"PONG"  # room again


async def test_closed_connection_refuses_and_fails_queued(
    make_pipe: MakePipe, redis_url: str
) -> None:
    pipe = make_pipe(redis_url)
    queued = pipe.execute(b"PING")  # not yet connected: waits for the connect
    await pipe.aclose()
    with pytest.raises(BackendUnavailable):
        await queued
    with pytest.raises(BackendUnavailable, match="closed"):
        pipe.execute(b"PING")


# -- users of the connection --


async def test_cache_and_locks_do_not_need_the_pool(redis_url: str) -> None:
    """GET/SET/DEL and lock acquire/refresh/release run on the pipelined connection: they
    work while the pool's only connection is held (before, they waited for it and failed)."""
    from podcache.cache import new_cache

    cache = new_cache(Config(type="redis", config={
        "url": redis_url, "keyPrefix": "piped:", "poolSize": 1,
        "timeouts": {"operation": f"{TIMEOUT}s"},
    }))
    backend: Any = cache.backend
    pool = backend.client.connection_pool
    held = await pool.get_connection()
    try:
        await cache.set("k", b"v")
        assert await cache.get("k") == b"v"
        lease = await cache.locks.acquire("job", ttl=5)
        assert lease is not None
        assert await cache.locks.refresh("job", lease.token, ttl=5) is not None
        assert await cache.locks.release("job", lease.token)
        assert await cache.delete("k")
    finally:
        await pool.release(held)
        await cache.stop()


async def test_demoted_primary_is_left_at_once_under_load(make_pipe: MakePipe) -> None:
    """A READONLY reply (a primary demoted by a failover) drops the connection at once, so
    the next commands reconnect (and, under Sentinel, rediscover the primary), even while
    commands keep flowing (before, it waited for a moment with nothing in flight)."""
    primary, other = RedisServer(), RedisServer()
    primary.start()
    other.start()
    try:
        pipe = make_pipe(primary.url)
        admin = redis.asyncio.Redis.from_url(primary.url)
        stop = asyncio.Event()
        outcomes: list[Any] = []

        async def writer(n: int) -> None:
            while not stop.is_set():
                try:
                    outcomes.append(await pipe.execute(b"SET", f"k{n}", b"v"))
                except BackendUnavailable as exc:
                    outcomes.append(exc)

        writers = [asyncio.create_task(writer(n)) for n in range(20)]
        try:
            await asyncio.sleep(0.1)
            assert pipe.connects == 1
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
            await asyncio.sleep(0.3)
            assert pipe.connects >= 2  # left the read-only server while writes kept coming
            assert any(isinstance(o, BackendUnavailable) and "READONLY" in str(o)
                       for o in outcomes)
            await admin.execute_command("REPLICAOF", "NO", "ONE")
            await asyncio.sleep(0.2)
            outcomes.clear()
            await asyncio.sleep(0.1)
            assert outcomes
            assert all(o == b"OK" for o in outcomes)
        finally:
            stop.set()
            await asyncio.gather(*writers)
            await admin.aclose()
    finally:
        primary.close()
        other.close()
