"""Network faults on a single Redis: a paused (SIGSTOP) server and a restart that loses data.

Aspects:
- Redis paused longer than a lock's lease: the holder's refresh fails fast with
  ``BackendUnavailable`` while it is paused; once it answers again another client
  takes the lock with a larger fence and the old holder's refresh reports the lock
  lost (None), never extends someone else's lease;
- Redis restarted without persistence (every counter lost): the next fence is still
  greater than every fence handed out before the restart.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from podcache.cache import new_cache
from podcache.config import Config
from podcache.errors import BackendUnavailable
from tests.redis_server import RedisServer


def _config(server: RedisServer) -> Config:
    return Config(type="redis", config={
        "url": server.url, "keyPrefix": "nf:",
        "timeouts": {"operation": "300ms", "connect": "300ms"},
    })


@pytest.mark.slow
async def test_paused_redis_longer_than_the_lease_loses_the_lock(redis_server: RedisServer) -> None:
    holder, contender = new_cache(_config(redis_server)), new_cache(_config(redis_server))
    try:
        lease = await holder.locks.acquire("job", ttl=1.0)
        assert lease is not None
        redis_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await holder.locks.refresh("job", lease.token, ttl=1.0)
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(1.2)  # paused for longer than the lease
        finally:
            redis_server.resume()
        taken = await contender.locks.acquire("job", ttl=5, wait=2)
        assert taken is not None
        assert taken.fence > lease.fence
        assert await holder.locks.refresh("job", lease.token, ttl=1.0) is None
        assert await holder.locks.release("job", lease.token) is False
        assert await contender.locks.refresh("job", taken.token, ttl=5) is not None
    finally:
        await holder.stop()
        await contender.stop()


async def test_restart_without_persistence_never_reuses_a_fence(redis_server: RedisServer) -> None:
    cache = new_cache(_config(redis_server))
    try:
        fences = []
        for _ in range(3):
            lease = await cache.locks.acquire("job", ttl=5)
            assert await cache.locks.release("job", lease.token)
            fences.append(lease.fence)
        redis_server.stop()
        redis_server.start()
        deadline = time.monotonic() + 5
        while True:
            try:
                after = await cache.locks.acquire("job", ttl=5)
                break
            except BackendUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert after is not None
        assert after.fence > max(fences)
    finally:
        await cache.stop()
