"""The near cache through a Sentinel failover (issue 13), on real Redis processes.

Aspects:
- ``SENTINEL FAILOVER`` with the old primary alive (it is demoted, not killed): a value
  written on the new primary after the failover is what the near cache serves; the copy
  of the old value is never served again once the failover is over;
- the primary killed: the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis

from podcache.backends.redis import RedisBackend
from podcache.cache import new_cache
from podcache.config import Config
from podcache.errors import BackendUnavailable
from tests.redis_topologies import SentinelTopology

PREFIX = "near-fo:"


async def _cached_then_failed_over(topology: SentinelTopology, *, kill: bool) -> None:
    cache = new_cache(Config(type="redis", config=topology.config(
        keyPrefix=PREFIX, nearCache={"enabled": True},
        timeouts={"operation": "500ms", "connect": "500ms"},
    )))
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    near = backend.near
    assert near is not None
    try:
        cache.start()
        deadline = time.monotonic() + 10
        while not near.channel.up:
            assert time.monotonic() < deadline, "invalidation channel never came up"
            await asyncio.sleep(0.02)
        await cache.set("k", b"old", ttl=600)
        assert await cache.get("k") == b"old"
        assert await cache.get("k") == b"old"
        assert near.item_count == 1
        old_port = topology.primary_port()
        if kill:
            topology.kill_primary()
        else:
            topology.sentinels[0].command("SENTINEL", "FAILOVER", topology.master_name)
        new = await asyncio.to_thread(topology.wait_for_failover, old_port)
        with redis.Redis(host="127.0.0.1", port=new.port, password=topology.password) as raw:
            raw.set(PREFIX + "k", b"new", px=600_000)
        seen: list[bytes] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and seen[-5:] != [b"new"] * 5:
            with contextlib.suppress(BackendUnavailable):  # the failover window
                seen.append(await cache.get("k"))
            await asyncio.sleep(0.05)
        assert seen[-5:] == [b"new"] * 5, seen
        # Once "new" was served, "old" never again.
        assert b"old" not in seen[seen.index(b"new"):], seen
        assert sum(near.flushes[c] for c in ("channel_down", "reconnect", "redis_flush")) >= 1
    finally:
        await cache.stop()


async def test_sentinel_failover_old_primary_demoted(sentinel_topology: SentinelTopology) -> None:
    await _cached_then_failed_over(sentinel_topology, kill=False)


async def test_sentinel_failover_primary_killed(sentinel_topology: SentinelTopology) -> None:
    await _cached_then_failed_over(sentinel_topology, kill=True)
