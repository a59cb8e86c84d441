"""The near cache in front of the Redis backend (issue 13), on a real redis-server.

Aspects:
- config: off by default; ``nearCache`` fields parsed; bad values, unknown keys and
  ``readFromReplicas`` refused naming the field; Cluster accepted (tests/topologies);
- a second GET is served locally; a write through one backend instance is seen by
  another within the bound; a write through the same instance is seen at once
  (read-your-writes), also for RESP-socket writes (the keyspace);
- no stale read after: ``CLIENT KILL`` of the invalidation channel, ``FLUSHALL``, a
  Redis restart, a reconnect of the data connection;
- the read/invalidate race, forced: a GET's reply held back until the invalidation of a
  later write has been processed is served but not kept;
- a copy never outlives the key's TTL in Redis nor ``maxTTL``;
- memory bounds (``maxItems``, ``maxBytes``) held under a flood of keys;
- the ``<ns>_near_cache_*`` metrics are exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from prometheus_client import generate_latest

from podcache.backends.keyspace_redis import RedisKeyspace
from podcache.backends.near_cache import NearCache
from podcache.backends.redis import RedisBackend
from podcache.backends.redis_pipeline import PipelinedConnection
from podcache.cache import Cache, new_cache
from podcache.config import Config, NearCacheSettings, RedisSettings
from podcache.errors import BackendUnavailable, CacheMiss, ConfigError
from tests.redis_server import RedisServer

PREFIX = "near:"
BOUND = 1.0
"""Seconds within which a write through one instance must be seen by another in these
tests (the bench measures the real delay; this is slack for a busy 2-core machine)."""


def near_config(url: str, **near: Any) -> Config:
    return Config(type="redis", config={
        "url": url, "keyPrefix": PREFIX,
        "timeouts": {"operation": "1s", "connect": "1s"},
        "nearCache": {"enabled": True, **near},
    })


def near_of(cache: Cache) -> NearCache:
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    assert backend.near is not None
    return backend.near


def pipeline_of(cache: Cache) -> PipelinedConnection:
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    assert backend.pipeline is not None
    return backend.pipeline


async def wait_for(predicate: Callable[[], Any], *, within: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {within}s")
        await asyncio.sleep(0.01)


async def started(cache: Cache) -> Cache:
    cache.start()
    near = near_of(cache)
    await wait_for(lambda: near.channel.up, what="invalidation channel up")
    return cache


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Cache, Cache]]:
    a = await started(new_cache(near_config(redis_url)))
    b = await started(new_cache(near_config(redis_url)))
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def channel_client_id(raw: redis.asyncio.Redis, skip: set[int] | None = None) -> list[int]:
    clients = await raw.client_list()
    return [int(c["id"]) for c in clients if c.get("name") == "podcache-near-cache"
            and int(c["id"]) not in (skip or set())]


# -- config ------------------------------------------------------------------------------


def test_off_by_default_and_fields_parsed() -> None:
    plain = Config(type="redis", config={"url": "redis://h:6379/0"})
    assert isinstance(plain.settings, RedisSettings)
    assert plain.settings.near_cache == NearCacheSettings(enabled=False)
    off = Config(type="redis", config={"url": "redis://h:6379/0", "nearCache": {}})
    assert isinstance(off.settings, RedisSettings)
    assert not off.settings.near_cache.enabled
    on = near_config("redis://h:6379/0", maxItems=5, maxBytes=4096, maxTTL="250ms")
    assert isinstance(on.settings, RedisSettings)
    assert on.settings.near_cache == NearCacheSettings(
        enabled=True, max_items=5, max_bytes=4096, max_ttl=0.25)


@pytest.mark.parametrize(("near", "field"), [
    ({"maxItems": 0}, "config.nearCache.maxItems"),
    ({"maxBytes": "lots"}, "config.nearCache.maxBytes"),
    ({"maxTTL": "0s"}, "config.nearCache.maxTTL"),
    ({"maxTTL": "soon"}, "config.nearCache.maxTTL"),
    ({"enabled": "yes"}, "config.nearCache.enabled"),
    ({"sizeLimit": 3}, "config.nearCache.sizeLimit"),
])
def test_bad_fields_are_named(near: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        near_config("redis://h:6379/0", **near)
    assert caught.value.field == field


def test_cluster_accepted_and_replica_reads_refused() -> None:
    # Cluster: one invalidation channel per primary (backends.near_cluster).
    settings = Config(type="redis", config={"cluster": {"nodes": ["a:1"]},
                                            "nearCache": {"enabled": True}}).settings
    assert isinstance(settings, RedisSettings)
    assert settings.near_cache.enabled
    with pytest.raises(ConfigError, match="readFromReplicas") as caught:
        Config(type="redis", config={
            "sentinel": {"masterName": "m", "addresses": ["s:26379"], "readFromReplicas": True},
            "nearCache": {"enabled": True}})
    assert caught.value.field == "config.nearCache.enabled"
    # Disabled, it is fine.
    Config(type="redis", config={
        "sentinel": {"masterName": "m", "addresses": ["s:26379"], "readFromReplicas": True},
        "nearCache": {"enabled": False}})


# -- serving and coherence -----------------------------------------------------------------


async def test_second_get_is_local(pair: tuple[Cache, Cache], redis_url: str) -> None:
    a, _ = pair
    await a.set("k", b"v1")
    near = near_of(a)
    assert await a.get("k") == b"v1"
    misses = near.misses
    for _ in range(10):
        assert await a.get("k") == b"v1"
    assert near.misses == misses
    assert near.hits >= 10
    # The application-facing counters still count every GET as a hit.
    text = generate_latest(a.registry).decode()
    assert "lab_cache_hits_total 11.0" in text


async def test_write_through_one_seen_by_the_other(pair: tuple[Cache, Cache]) -> None:
    a, b = pair
    await a.set("k", b"old")
    assert await b.get("k") == b"old"
    assert await b.get("k") == b"old"  # now a local copy in b
    await a.set("k", b"new")
    written = time.monotonic()
    while await b.get("k") != b"new":
        assert time.monotonic() - written < BOUND, "b still serves the old value"
        await asyncio.sleep(0.001)
    await a.delete("k")
    deleted = time.monotonic()
    while True:
        try:
            await b.get("k")
        except CacheMiss:
            break
        assert time.monotonic() - deleted < BOUND, "b still serves a deleted key"
        await asyncio.sleep(0.001)


async def test_read_your_writes(pair: tuple[Cache, Cache]) -> None:
    a, _ = pair
    for i in range(20):
        await a.set("k", b"%d" % i)
        assert await a.get("k") == b"%d" % i  # at once, no waiting for the invalidation
    assert await a.set_nx("n", b"1")
    assert await a.get("n") == b"1"
    assert await a.set_if_match("n", b"2", b"1")
    assert await a.get("n") == b"2"
    await a.delete("n")
    with pytest.raises(CacheMiss):
        await a.get("n")


async def test_resp_socket_writes_drop_the_copy(pair: tuple[Cache, Cache]) -> None:
    a, _ = pair
    backend = a.backend
    assert isinstance(backend, RedisBackend)
    await a.set("c", b"1")
    assert await a.get("c") == b"1"
    keyspace = RedisKeyspace(backend)
    assert await keyspace.incr_by("c", 5, default_ms=60_000) == 6
    assert await a.get("c") == b"6"
    await keyspace.set_with("c", b"x", ms=None, default_ms=60_000)
    assert await a.get("c") == b"x"


# -- losing invalidations ----------------------------------------------------------------


async def test_client_kill_of_the_channel(pair: tuple[Cache, Cache], redis_client: Any) -> None:
    _, b = pair
    near = near_of(b)
    await redis_client.set(PREFIX + "k", b"1", px=60_000)
    assert await b.get("k") == b"1"
    assert await b.get("k") == b"1"
    assert near.item_count == 1
    before = set(await channel_client_id(redis_client))
    for client_id in before:  # both instances' channels: a kill of either must be safe
        await redis_client.client_kill_filter(_id=client_id)
    # Written while b's channel is gone: Redis will never tell b about this one.
    await redis_client.set(PREFIX + "k", b"2", px=60_000)
    await wait_for(lambda: not near.channel.up or near.channel.connects > 1, what="loss seen")
    assert near.flushes["channel_down"] >= 1
    assert await b.get("k") == b"2"  # from Redis while the channel is down or just back
    await wait_for(lambda: near.channel.up and near.channel.connects >= 2, what="channel back")
    assert await b.get("k") == b"2"
    assert await b.get("k") == b"2"


async def test_flushall_drops_everything(pair: tuple[Cache, Cache], redis_client: Any) -> None:
    a, b = pair
    near = near_of(b)
    await a.set("k", b"1")
    assert await b.get("k") == b"1"
    assert near.item_count == 1
    await redis_client.flushall()
    await wait_for(lambda: near.flushes["redis_flush"] >= 1, what="invalidate-all")
    assert near.item_count == 0
    with pytest.raises(CacheMiss):
        await b.get("k")


async def test_redis_restart(redis_server: RedisServer) -> None:
    cache = await started(new_cache(near_config(redis_server.url)))
    near = near_of(cache)
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await cache.set("k", b"before")
        assert await cache.get("k") == b"before"
        assert await cache.get("k") == b"before"
        redis_server.stop()
        await wait_for(lambda: not near.channel.up, what="channel loss seen")
        assert near.item_count == 0
        redis_server.start()
        await raw.set(PREFIX + "k", b"after", px=60_000)
        deadline = time.monotonic() + 5
        seen: list[bytes] = []
        while time.monotonic() < deadline and not (near.channel.up and seen[-3:] == [b"after"] * 3):
            with contextlib.suppress(BackendUnavailable):  # reconnecting on the next call
                seen.append(await cache.get("k"))
            await asyncio.sleep(0.02)
        assert seen
        assert b"before" not in seen, seen
        assert seen[-1] == b"after"
    finally:
        await raw.aclose()
        await cache.stop()


async def test_data_connection_reconnect_drops_copies(
    pair: tuple[Cache, Cache], redis_client: Any
) -> None:
    _, b = pair
    near = near_of(b)
    await redis_client.set(PREFIX + "k", b"1", px=60_000)
    assert await b.get("k") == b"1"
    for client in await redis_client.client_list():
        if client.get("name") == "podcache-pipeline":
            await redis_client.client_kill_filter(_id=int(client["id"]))
    pipeline = pipeline_of(b)
    await wait_for(lambda: pipeline._link is None, what="data connection loss seen")
    with pytest.raises(CacheMiss):
        await b.get("absent")  # reconnects the data connection (maybe to a new primary)
    assert pipeline.connects == 2
    assert await b.get("k") == b"1"
    assert near.flushes["reconnect"] == 1
    assert near.item_count == 0 or near.channel.up
    await wait_for(lambda: near.channel.up, what="channel reopened")
    assert await b.get("k") == b"1"


# -- the race ------------------------------------------------------------------------------


async def test_get_reply_after_invalidation_is_not_kept(
    pair: tuple[Cache, Cache], redis_client: Any
) -> None:
    """Redis runs our GET (old value), then another client's SET; the SET's invalidation
    is processed before the GET's reply: the reply is served but must not be kept."""
    _, b = pair
    near = near_of(b)
    await redis_client.set(PREFIX + "r", b"old", px=60_000)
    with pytest.raises(CacheMiss):
        await b.get("warm-up")  # connects the data link
    link = pipeline_of(b)._link
    assert link is not None
    held: list[bytes] = []
    deliver = link.data_received
    link.data_received = held.append  # type: ignore[method-assign]
    try:
        reply = asyncio.ensure_future(b.get("r"))
        await wait_for(lambda: b"".join(held).count(b"\r\n") >= 2, what="GET reply held")
        invalidations = near.invalidations
        await redis_client.set(PREFIX + "r", b"new", px=60_000)
        await wait_for(lambda: near.invalidations > invalidations, what="invalidation")
    finally:
        link.data_received = deliver  # type: ignore[method-assign]
    for chunk in held:
        deliver(chunk)
    assert await reply == b"old"  # linearizable: Redis ran this GET before the SET
    assert near.store.peek("r") is None, "a reply older than an invalidation was kept"
    assert await b.get("r") == b"new"


async def test_reply_without_race_is_kept(pair: tuple[Cache, Cache]) -> None:
    a, _ = pair
    await a.set("r", b"v")
    assert await a.get("r") == b"v"
    assert near_of(a).store.peek("r") == b"v"


# -- lifetimes and bounds --------------------------------------------------------------------


async def test_copy_never_outlives_the_redis_ttl(pair: tuple[Cache, Cache]) -> None:
    a, b = pair
    await a.set("t", b"v", ttl=0.3)
    assert await b.get("t") == b"v"
    assert near_of(b).store.peek("t") == b"v"
    await asyncio.sleep(0.35)
    assert near_of(b).store.peek("t") is None
    with pytest.raises(CacheMiss):
        await b.get("t")


async def test_copy_never_outlives_max_ttl(redis_url: str, redis_client: Any) -> None:
    cache = await started(new_cache(near_config(redis_url, maxTTL="200ms")))
    near = near_of(cache)
    try:
        await cache.set("m", b"v", ttl=60)
        assert await cache.get("m") == b"v"
        assert near.store.peek("m") == b"v"
        await asyncio.sleep(0.25)
        assert near.store.peek("m") is None
        misses = near.misses
        assert await cache.get("m") == b"v"
        assert near.misses == misses + 1
    finally:
        await cache.stop()


async def test_memory_bounds_held(redis_url: str, redis_client: Any) -> None:
    cache = await started(new_cache(near_config(redis_url, maxItems=50, maxBytes=40_000)))
    near = near_of(cache)
    try:
        async with redis_client.pipeline(transaction=False) as pipe:
            for i in range(500):
                pipe.set(f"{PREFIX}b{i}", b"x" * (i % 300), px=60_000)
            await pipe.execute()
        for i in range(500):
            assert await cache.get(f"b{i}") == b"x" * (i % 300)
            assert near.item_count <= 50
            assert near.bytes_used <= 40_000
        assert near.store.evictions > 0
        big = b"y" * 50_000  # larger than maxBytes alone: served, never kept
        await cache.set("big", big)
        assert await cache.get("big") == big
        assert near.store.peek("big") is None
    finally:
        await cache.stop()


async def test_metrics_exposed(pair: tuple[Cache, Cache]) -> None:
    a, b = pair
    await a.set("k", b"1")
    await b.get("k")
    await b.get("k")
    await a.set("k", b"2")
    await wait_for(lambda: near_of(b).invalidations >= 1, what="invalidation")
    text = generate_latest(b.registry).decode()
    for line in [
        "lab_near_cache_hits_total 1.0",
        "lab_near_cache_misses_total 1.0",
        'lab_near_cache_flushes_total{cause="channel_up"} 1.0',
        "lab_near_cache_channel_up 1.0",
        "lab_near_cache_items 0.0",
    ]:
        assert line in text, text
    assert "lab_near_cache_invalidations_total" in text
    assert "lab_near_cache_evictions_total 0.0" in text
    assert "lab_near_cache_bytes " in text  # stale wheel references may still be charged


async def test_disabled_backend_has_no_near_cache(redis_url: str) -> None:
    cache = new_cache(Config(type="redis", config={"url": redis_url, "keyPrefix": PREFIX}))
    try:
        backend = cache.backend
        assert isinstance(backend, RedisBackend)
        assert backend.near is None
        assert "near_cache" not in generate_latest(cache.registry).decode()
    finally:
        await cache.stop()

