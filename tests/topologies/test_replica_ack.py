"""Replica acknowledgement of lock writes (``replicaAckTimeout``) where there is no replica.

Aspects:
- a standalone Redis without replicas is not waited on: acquire and refresh answer
  at once (not after the ack timeout) and report ``replicated=False``;
- without a replica-ack timeout, ``replicated`` is None (not asked).
"""

from __future__ import annotations

import time

from podcache.cache import new_cache
from podcache.config import Config


async def test_no_replica_is_not_waited_on(redis_url: str) -> None:
    config = Config(type="redis", config={"url": redis_url, "replicaAckTimeout": "2s"})
    cache = new_cache(config)
    try:
        started = time.monotonic()
        lease = await cache.locks.acquire("job", ttl=5)
        refreshed = await cache.locks.refresh("job", lease.token, ttl=5)
        assert time.monotonic() - started < 1.0
        assert lease.replicated is False
        assert refreshed.replicated is False
    finally:
        await cache.stop()


async def test_replication_not_asked_without_ack_timeout(redis_url: str) -> None:
    cache = new_cache(Config(type="redis", config={"url": redis_url}))
    try:
        lease = await cache.locks.acquire("job", ttl=5)
        assert lease.replicated is None
    finally:
        await cache.stop()
