"""Redis going away and coming back, under a cache that is never recreated.

Aspects:
- Redis killed: every operation (get, set, set_nx, set_if_match, delete, ping) fails
  with BackendUnavailable well within the operation timeout, and requests_total
  counts status="error" per operation;
- Redis started again on the same port: the same cache object serves again;
- Redis killed while a workload is running: every failure is BackendUnavailable and
  fast, nothing hangs, and the workload recovers after the restart;
- Redis paused (SIGSTOP, a partition): calls time out within the operation timeout,
  also when more calls wait than the pool has connections; after SIGCONT all is well;
- the items gauge refresh survives an outage and resumes afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from podcache.cache import Cache, new_cache
from podcache.config import Config
from podcache.errors import BackendUnavailable
from tests.redis_server import RedisServer

OPERATION_TIMEOUT = 0.5
MARGIN = 0.5
"""Scheduling slack on a busy 2-core machine; still far below any hang."""


@pytest.fixture
async def cache(redis_server: RedisServer) -> AsyncIterator[Cache]:
    config = Config(type="redis", config={
        "url": redis_server.url,
        "keyPrefix": "outage:",
        "poolSize": 4,
        "timeouts": {"operation": f"{OPERATION_TIMEOUT}s", "connect": f"{OPERATION_TIMEOUT}s"},
        "itemsRefreshInterval": "50ms",
    })
    cache = new_cache(config)
    yield cache
    redis_server.start()  # a paused or stopped server must not slow the teardown
    await cache.stop()


def errors(cache: Cache, operation: str) -> float:
    value = cache.registry.get_sample_value(
        "lab_cache_requests_total", {"operation": operation, "status": "error"}
    )
    assert value is not None
    return value


async def fails_fast(call: Callable[[], Awaitable[Any]]) -> BackendUnavailable:
    """Run ``call``, expect BackendUnavailable within the timeout bound, return it."""
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        await call()
    elapsed = time.monotonic() - started
    assert elapsed < OPERATION_TIMEOUT + MARGIN, f"took {elapsed:.3f}s"
    return info.value


async def wait_for(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.02)


async def wait_until_serving(cache: Cache, *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await cache.ping()
            return
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_killed_redis_fails_fast_then_recovers(
    cache: Cache, redis_server: RedisServer
) -> None:
    await cache.set("k", b"v")
    assert await cache.get("k") == b"v"
    redis_server.stop()

    await fails_fast(lambda: cache.get("k"))
    await fails_fast(lambda: cache.set("k", b"v2"))
    await fails_fast(lambda: cache.set_nx("n", b"v"))
    await fails_fast(lambda: cache.set_if_match("k", b"v3", b"v"))
    await fails_fast(lambda: cache.delete("k"))
    await fails_fast(cache.ping)
    assert errors(cache, "get") == 1
    assert errors(cache, "set") == 3
    assert errors(cache, "delete") == 1

    redis_server.start()  # same port, empty data (no persistence)
    await cache.set("k", b"after")  # first call after the restart: the pool reconnects
    assert await cache.get("k") == b"after"
    assert await cache.set_if_match("k", b"x", b"after") is True
    assert errors(cache, "set") == 3


async def test_kill_during_a_running_workload(cache: Cache, redis_server: RedisServer) -> None:
    failures: list[tuple[BaseException, float]] = []
    successes_after_restart = 0
    restarted = asyncio.Event()
    done = asyncio.Event()

    async def worker(n: int) -> None:
        nonlocal successes_after_restart
        i = 0
        while not done.is_set():
            i += 1
            started = time.monotonic()
            try:
                await cache.set(f"w{n}", str(i).encode())
                assert await cache.get(f"w{n}") == str(i).encode()
                if restarted.is_set():
                    successes_after_restart += 1
            except BackendUnavailable as exc:
                failures.append((exc, time.monotonic() - started))
                await asyncio.sleep(0.01)

    workers = [asyncio.create_task(worker(n)) for n in range(8)]
    await asyncio.sleep(0.2)
    redis_server.stop()
    await asyncio.sleep(0.5)
    redis_server.start()
    restarted.set()
    try:
        await wait_for(lambda: successes_after_restart >= 20)
    finally:
        done.set()
    await asyncio.gather(*workers)  # a worker that hung would hold this (and time out)

    assert failures, "the outage was not noticed"
    assert all(elapsed < OPERATION_TIMEOUT + MARGIN for _, elapsed in failures)
    assert successes_after_restart >= 20
    counted = errors(cache, "get") + errors(cache, "set")
    assert counted == len(failures)


async def test_paused_redis_times_out(cache: Cache, redis_server: RedisServer) -> None:
    await cache.set("k", b"v")
    redis_server.pause()
    try:
        error = await fails_fast(lambda: cache.get("k"))
        assert "did not answer" in str(error)
        await fails_fast(lambda: cache.set("k", b"v2"))
        assert errors(cache, "get") == 1
        assert errors(cache, "set") == 1
    finally:
        redis_server.resume()
    assert await cache.get("k") in (b"v", b"v2")  # the timed-out SET may have landed
    await cache.set("k", b"v3")
    assert await cache.get("k") == b"v3"


async def test_paused_redis_with_more_callers_than_connections(
    cache: Cache, redis_server: RedisServer
) -> None:
    await cache.set("k", b"v")
    redis_server.pause()
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(cache.get("k") for _ in range(20)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert all(isinstance(result, BackendUnavailable) for result in results), results
    assert elapsed < OPERATION_TIMEOUT + MARGIN  # pool waits count against the same bound
    assert errors(cache, "get") == 20
    await wait_until_serving(cache)
    assert await cache.get("k") == b"v"


async def test_items_refresh_survives_an_outage(cache: Cache, redis_server: RedisServer) -> None:
    def items() -> float | None:
        return cache.registry.get_sample_value("lab_cache_items")

    await cache.set("a", b"v")
    await wait_for(lambda: items() == 1)
    redis_server.stop()
    await asyncio.sleep(0.3)  # several failed refreshes
    assert items() == 1  # the last known count is kept
    redis_server.start()
    await wait_until_serving(cache)
    await cache.set("b", b"v")
    await cache.set("c", b"v")
    await wait_for(lambda: items() == 2)  # "a" was lost with the restart
