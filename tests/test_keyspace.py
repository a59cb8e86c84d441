"""``podcache.backends.keyspace``: the key-level operations behind the RESP socket.

Aspects, on the memory backend, the Redis backend through its pipelined connection and
the Redis backend through redis-py's client (what Cluster uses): SET's options and
the default TTL, counters with Redis's error texts, expiry conditions, GETEX/GETDEL,
EXISTS, SCAN under the tenant prefix without lock keys, and a Lua script re-sent by
EVAL after Redis lost its script cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from podcache import Config, new_cache
from podcache.backends import keyspace
from podcache.backends.keyspace import Keyspace, KeyspaceError
from podcache.backends.memory import MemoryBackend, entry_size
from podcache.cache import Cache
from podcache.errors import CacheMiss

DEFAULT_MS = 300_000


@pytest.fixture(params=["memory", "redis-pipelined", "redis-client"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        built = new_cache(Config(type="memory", config={"defaultTTL": "5m"}))
    else:
        url = request.getfixturevalue("redis_url")
        built = new_cache(
            Config(type="redis", config={"url": url, "defaultTTL": "5m", "keyPrefix": "ks:"})
        )
        if request.param == "redis-client":
            built.backend.pipeline = None  # type: ignore[attr-defined]  # as on a Cluster
    yield built
    await built.stop()


@pytest.fixture
def space(cache: Cache) -> Keyspace:
    return keyspace.for_backend(cache.backend)


async def test_set_options_and_default_ttl(cache: Cache, space: Keyspace) -> None:
    assert await space.set_with("a", b"1", ms=None, default_ms=DEFAULT_MS) == (True, None)
    assert 299_000 < await space.pttl("a") <= DEFAULT_MS
    assert await space.set_with("a", b"2", ms=None, default_ms=DEFAULT_MS, condition="NX") == (
        False,
        None,
    )
    assert await space.set_with("b", b"2", ms=None, default_ms=DEFAULT_MS, condition="XX") == (
        False,
        None,
    )
    assert await space.set_with("a", b"3", ms=50_000, default_ms=DEFAULT_MS, get=True) == (
        True,
        b"1",
    )
    await space.set_with("a", b"4", ms=None, default_ms=DEFAULT_MS, keep_ttl=True)
    assert 49_000 < await space.pttl("a") <= 50_000
    await space.set_with("new", b"x", ms=None, default_ms=DEFAULT_MS, keep_ttl=True)
    assert await space.pttl("new") > 299_000  # KEEPTTL on a new key: the default
    assert await cache.get("a") == b"4"  # the same store as the facade's


async def test_counters(cache: Cache, space: Keyspace) -> None:
    assert await space.incr_by("n", 5, default_ms=DEFAULT_MS) == 5
    assert await space.pttl("n") > 299_000
    assert await space.incr_by("n", -7, default_ms=DEFAULT_MS) == -2
    await cache.set("s", b"abc", 10)
    with pytest.raises(KeyspaceError, match=r"^ERR value is not an integer or out of range$"):
        await space.incr_by("s", 1, default_ms=DEFAULT_MS)
    await cache.set("big", b"9223372036854775807", 10)
    with pytest.raises(KeyspaceError, match=r"^ERR increment or decrement would overflow$"):
        await space.incr_by("big", 1, default_ms=DEFAULT_MS)
    assert 9_000 < await space.pttl("big") <= 10_000  # untouched


async def test_expiry(cache: Cache, space: Keyspace) -> None:
    await cache.set("k", b"v", 100)
    assert await space.pexpire("k", 50_000, "GT") is False
    assert await space.pexpire("k", 200_000, "GT") is True
    assert await space.pexpire("k", 300_000, "LT") is False
    assert await space.pexpire("k", 10_000, "NX") is False
    assert await space.pexpire("k", 20_000, "XX") is True
    assert 19_000 < await space.pttl("k") <= 20_000
    assert await space.pexpire("missing", 1000) is False
    assert await space.pexpire("k", 0) is True
    assert await space.exists("k") is False
    assert await space.pttl("k") == -2


async def test_persist_and_what_follows(cache: Cache, space: Keyspace) -> None:
    """PERSIST (the caller checks ``limits.allowPersist``): -1 from pttl, Redis's rules for
    EXPIRE's flags on a key without a TTL, and ``keep_persisted`` for KEEPTTL and INCR."""
    await cache.set("k", b"v", 100)
    assert await space.persist("k") is True
    assert await space.persist("k") is False
    assert await space.persist("missing") is False
    assert await space.pttl("k") == -1
    assert await cache.get("k") == b"v"
    assert await space.pexpire("k", 50_000, "XX") is False
    assert await space.pexpire("k", 50_000, "GT") is False
    assert await space.pexpire("k", 50_000, "XX", "LT") is False
    assert await space.pttl("k") == -1
    assert await space.pexpire("k", 50_000, "LT") is True
    assert 49_000 < await space.pttl("k") <= 50_000
    assert await space.getex("k", None, persist=True) == b"v"
    assert await space.pttl("k") == -1
    assert await space.pexpire("k", 50_000, "NX") is True
    assert await space.pexpire("k", 60_000, "NX") is False
    await space.persist("k")
    await space.set_with("k", b"w", ms=None, default_ms=DEFAULT_MS, keep_ttl=True,
                         keep_persisted=True)
    assert await space.pttl("k") == -1
    await space.set_with("k", b"x", ms=None, default_ms=DEFAULT_MS, keep_ttl=True)
    assert 299_000 < await space.pttl("k") <= DEFAULT_MS  # not allowed: the default again
    await cache.set("n", b"1", 100)
    await space.persist("n")
    assert await space.incr_by("n", 1, default_ms=DEFAULT_MS, keep_persisted=True) == 2
    assert await space.pttl("n") == -1
    assert await space.incr_by("n", 1, default_ms=DEFAULT_MS) == 3
    assert 299_000 < await space.pttl("n") <= DEFAULT_MS
    assert await space.incr_by("new", 1, default_ms=DEFAULT_MS, keep_persisted=True) == 1
    assert 299_000 < await space.pttl("new") <= DEFAULT_MS


async def test_persisted_memory_entries_live_until_evicted() -> None:
    """Memory backend: no expiry, no wheel reference (nothing to reap, nothing charged
    as stale when it goes), and the LRU bounds still evict it."""
    built = new_cache(Config(type="memory", config={"defaultTTL": "5m", "maxItems": 3,
                                                    "reapInterval": "10ms"}))
    backend = built.backend
    assert isinstance(backend, MemoryBackend)
    space = keyspace.for_backend(backend)
    try:
        await built.set("p", b"v", 0.05)
        stale = backend.stale_bytes
        assert await space.persist("p") is True
        assert backend.stale_bytes > stale  # its old wheel reference, until reaped
        await asyncio.sleep(0.2)
        await backend.reap_expired()
        assert await built.get("p") == b"v"  # outlived its old TTL
        assert backend.stale_bytes == 0
        await space.getex("p", None, persist=True)  # already without: unchanged
        assert await built.delete("p") is True
        assert backend.stale_bytes == 0  # it had no reference to leave behind
        await built.set("q", b"v")
        await space.persist("q")
        for key in ("a", "b", "c"):
            await built.set(key, b"v")
        with pytest.raises(CacheMiss):
            await built.get("q")  # the least recently used, evicted all the same
        assert backend.item_count == 3
        backend._rebuild_wheel()  # a rebuild skips entries without expiry
        assert backend.bytes_used == 3 * entry_size("a", 1)
    finally:
        await built.stop()


async def test_getex_getdel(cache: Cache, space: Keyspace) -> None:
    await cache.set("k", b"v", 100)
    assert await space.getex("k", 5_000) == b"v"
    assert 4_000 < await space.pttl("k") <= 5_000
    assert await space.getex("missing", None) is None
    assert await space.getdel("k") == b"v"
    assert await space.getdel("k") is None


async def test_scan_is_this_tenants_cache_keys(cache: Cache, space: Keyspace) -> None:
    for i in range(30):
        await cache.set(f"key{i}", b"v")
    lease = await cache.locks.acquire("job", ttl=10)  # a lock key under the same prefix
    assert lease is not None
    found: list[str] = []
    cursor = 0
    while True:
        cursor, keys = await space.scan(cursor, None, 7)
        found += keys
        if cursor == 0:
            break
    assert sorted(found) == sorted(f"key{i}" for i in range(30))
    cursor, keys = await space.scan(0, "key1?", 1000)
    assert sorted(keys) == sorted(f"key{i}" for i in range(10, 20))


async def test_scripts_survive_a_script_flush(
    cache: Cache, space: Keyspace, request: pytest.FixtureRequest
) -> None:
    if "redis_url" not in request.fixturenames:
        pytest.skip("Redis only")
    await space.incr_by("n", 1, default_ms=DEFAULT_MS)
    raw = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        await raw.script_flush()
    finally:
        await raw.aclose()
    assert await space.incr_by("n", 1, default_ms=DEFAULT_MS) == 2


def test_redis_glob() -> None:
    regex = keyspace.glob_regex
    assert regex("a*").fullmatch("abc")
    assert regex("a?c").fullmatch("abc")
    assert not regex("a?c").fullmatch("ac")
    assert regex("[a-c]x").fullmatch("bx")
    assert not regex("[^a-c]x").fullmatch("bx")
    assert regex("a\\*").fullmatch("a*")
    assert not regex("a\\*").fullmatch("ab")
    assert regex("x\ny*").fullmatch("x\nyz")


async def test_set_many_stores_every_pair_with_the_ttl(cache: Cache, space: Keyspace) -> None:
    await space.set_with("m1", b"old", ms=None, default_ms=DEFAULT_MS)
    await space.set_many([("m1", b"1"), ("m2", b"2"), ("m1", b"3")], ms=60_000)
    assert await cache.get("m1") == b"3"  # a key given twice ends with its last value
    assert await cache.get("m2") == b"2"
    for key in ("m1", "m2"):
        assert 59_000 < await space.pttl(key) <= 60_000


async def test_set_many_stores_nothing_when_a_value_is_refused() -> None:
    """Memory backend: every pair is checked (maxBytes) before any is stored."""
    built = new_cache(Config(type="memory", config={"defaultTTL": "5m", "maxBytes": 1000}))
    space = keyspace.for_backend(built.backend)
    try:
        with pytest.raises(Exception, match="maxBytes"):
            await space.set_many([("n1", b"1"), ("n2", b"x" * 2000)], ms=60_000)
        assert await space.pttl("n1") == -2
    finally:
        await built.stop()
