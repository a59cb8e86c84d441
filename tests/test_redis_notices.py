"""The shared pub/sub connection of election notices (``backends.redis_notices``), on a real Redis.

Aspects:
- many channels ride on one connection; a notice wakes only its channel's subscribers,
  and a notice that arrives while nobody waits is kept for the next wait.
- the connection exists only while something is subscribed.
- Redis restarted: subscribers are woken (a notice may have been lost), the hub
  reconnects by itself and notices flow again.
"""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio

from podcache.backends.redis_notices import NoticeHub
from tests.redis_server import RedisServer


def _subscribed_connections(url: str) -> int:
    with redis.Redis.from_url(url) as connection:
        return sum(1 for client in connection.client_list() if int(client.get("sub", 0)) > 0)


async def test_channels_share_one_connection_and_notices_reach_their_channel(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    hub = NoticeHub(client, timeout=1.0)
    try:
        subs = [await hub.subscribe(f"ch{index}") for index in range(5)]
        assert _subscribed_connections(redis_server.url) == 1
        await client.publish("ch2", "elected")
        began = time.monotonic()
        await subs[2].wait(at_most=2)
        assert time.monotonic() - began < 1
        began = time.monotonic()
        await subs[3].wait(at_most=0.2)  # nothing for ch3: the full wait
        assert time.monotonic() - began >= 0.19
        await client.publish("ch4", "resigned")
        await asyncio.sleep(0.1)  # arrives while nobody waits: kept
        began = time.monotonic()
        await subs[4].wait(at_most=2)
        assert time.monotonic() - began < 0.05
        for sub in subs:
            await sub.close()
        await asyncio.sleep(0.1)
        assert _subscribed_connections(redis_server.url) == 0
    finally:
        await hub.stop()
        await client.aclose()


async def test_notices_resume_after_redis_restarts(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    hub = NoticeHub(client, timeout=0.5)
    try:
        sub = await hub.subscribe("events")
        redis_server.stop()
        began = time.monotonic()
        await sub.wait(at_most=5)  # woken by the loss, not by the bound
        assert time.monotonic() - began < 2
        redis_server.start()
        deadline = time.monotonic() + 10
        while _subscribed_connections(redis_server.url) != 1:
            assert time.monotonic() < deadline, "the hub did not resubscribe"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        await sub.wait(at_most=0)  # consume the wake-ups of the loss and the reconnect
        await client.publish("events", "elected")
        began = time.monotonic()
        await sub.wait(at_most=3)
        assert time.monotonic() - began < 1
    finally:
        await hub.stop()
        await client.aclose()
