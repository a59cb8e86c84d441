"""The Redis backend and locks on Redis Cluster: three primaries, one replica each.

Aspects:
- every cache operation works; keys spread over all primaries and the item count
  (``count_items``, the ``lab_cache_items`` source) spans all of them, this tenant only;
- the RESP socket's SCAN (redis-py's ``scan_iter`` through a sidecar) visits every
  primary in turn and returns exactly this tenant's keys, each once, MATCH honoured;
  DBSIZE counts the same keys; a cursor naming no primary is ``ERR invalid cursor``;
- locks work on Cluster: their keys share one hash tag (one slot), fences grow;
- a replica-ack timeout makes acquire WAIT for the shard's replica and report it;
- a slot migration under load (MOVED/ASK) is followed without a restart;
- a primary killed under load: its replica takes over and the same Cache recovers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from podcache.backends import keyspace, keyspace_redis
from podcache.backends.redis import RedisBackend
from podcache.cache import new_cache
from podcache.config import Config
from podcache.locks.redis import lock_keys
from tests.redis_topologies import ClusterTopology
from tests.sidecar.resp_support import RawClient, spawned
from tests.topologies.probe import LoadProbe


async def test_operations_and_item_count_span_all_primaries(
    cluster_topology: ClusterTopology,
) -> None:
    backend = RedisBackend(cluster_topology.settings(keyPrefix="t:"))
    other = RedisBackend(cluster_topology.settings(keyPrefix="other:"))
    try:
        assert isinstance(backend.client, RedisCluster)
        for i in range(300):
            await backend.set(f"k{i}", str(i).encode(), ttl=60)
        await other.set("x", b"1", ttl=60)
        assert await backend.get("k7") == b"7"
        assert await backend.set_nx("k7", b"no") is False
        assert await backend.set_if_match("k7", b"seven", b"7") is True
        assert await backend.get("k7") == b"seven"
        assert await backend.delete("k8") is True
        primaries = cluster_topology.primaries()
        assert len(primaries) == 3
        assert all(int(p.command("DBSIZE")) > 0 for p in primaries)
        assert await backend.count_items() == 299
        assert await other.count_items() == 1
    finally:
        await backend.stop()
        await other.stop()


def test_resp_scan_visits_every_primary(cluster_topology: ClusterTopology) -> None:
    """SCAN through the sidecar's RESP socket on a Cluster backend: the cursor carries the
    primary's index and that primary's own cursor, so a client's loop walks them all."""
    ours = {f"user:{i}" for i in range(300)} | {f"item:{i}" for i in range(40)}
    theirs = {f"user:{i}" for i in range(500, 560)}
    config = {"type": "redis", "config": cluster_topology.config(keyPrefix="tenant-a:")}
    other = {"type": "redis", "config": cluster_topology.config(keyPrefix="tenant-b:")}
    with spawned(config) as (_, path), spawned(other) as (_, other_path):
        client = redis.Redis(unix_socket_path=path)
        neighbour = redis.Redis(unix_socket_path=other_path)
        try:
            for key in sorted(ours):
                client.set(key, "v")
            for key in sorted(theirs):
                neighbour.set(key, "v")
            # Spread over every shard, so a SCAN of one node only would miss some.
            owners = {cluster_topology.primary_for_key("tenant-a:" + key).port for key in ours}
            assert len(owners) == len(cluster_topology.primaries()) == 3
            for count in (None, 7, 1000):
                found = [key.decode() for key in client.scan_iter(count=count)]
                assert len(found) == len(set(found)), "a key came back twice"
                assert set(found) == ours
            matched = [key.decode() for key in client.scan_iter(match="item:*", count=50)]
            assert sorted(matched) == sorted(f"item:{i}" for i in range(40))
            assert sorted(k.decode() for k in client.scan_iter(match="user:1?")) == sorted(
                f"user:{i}" for i in range(10, 20)
            )
            assert client.dbsize() == len(ours)
            assert set(k.decode() for k in neighbour.scan_iter()) == theirs
            assert neighbour.dbsize() == len(theirs)
            cursors = _cursors(path)
            mask = (1 << keyspace_redis.NODE_BITS) - 1
            assert len({cursor & mask for cursor in cursors} | {0}) == 3  # each primary
        finally:
            client.close()
            neighbour.close()
        raw = RawClient(path)
        try:
            assert str(raw.call("SCAN", str(3))) == "ERR invalid cursor"  # no 4th primary
            assert str(raw.call("SCAN", "x")) == "ERR invalid cursor"
            assert str(raw.call("SCAN", str(2**64))) == "ERR invalid cursor"
            assert raw.call("PING") == b"PONG"
        finally:
            raw.close()


def _cursors(path: str) -> list[int]:
    """The cursors a full SCAN loop goes through (after the first call)."""
    raw = RawClient(path)
    try:
        cursors: list[int] = []
        cursor = b"0"
        while True:
            cursor, _ = raw.call("SCAN", cursor, "COUNT", "20")
            if cursor == b"0":
                return cursors
            cursors.append(int(cursor))
    finally:
        raw.close()


async def test_mset_across_slots_and_in_one_slot(cluster_topology: ClusterTopology) -> None:
    """MSET (the RESP socket's ``Keyspace.set_many``): keys of one slot go in one script,
    keys of several slots one SET each; every pair stored with the TTL either way."""
    backend = RedisBackend(cluster_topology.settings(keyPrefix="ms:"))
    space = keyspace.for_backend(backend)
    try:
        spread = [(f"k{i}", str(i).encode()) for i in range(20)]  # several slots
        together = [(f"{{tag}}k{i}", str(i).encode()) for i in range(5)]  # one slot
        for pairs in (spread, together):
            await space.set_many(pairs, ms=60_000)
            for key, value in pairs:
                assert await backend.get(key) == value
                assert 59_000 < await space.pttl(key) <= 60_000
    finally:
        await backend.stop()


async def test_locks_on_cluster_keep_one_slot_per_lock(cluster_topology: ClusterTopology) -> None:
    cache = new_cache(Config(type="redis", config=cluster_topology.config(keyPrefix="t:")))
    try:
        names = [f"job-{i}" for i in range(12)]
        slots = set()
        for name in names:
            keys = lock_keys("t:", name)
            observer = cluster_topology.nodes[0]
            key_slots = {int(observer.command("CLUSTER", "KEYSLOT", k)) for k in keys}
            assert len(key_slots) == 1, f"keys of lock {name} span slots {key_slots}"
            slots |= key_slots
            first = await cache.locks.acquire(name, ttl=5)
            assert first is not None
            assert await cache.locks.acquire(name, ttl=5) is None
            refreshed = await cache.locks.refresh(name, first.token, ttl=5)
            assert refreshed is not None
            assert refreshed.fence == first.fence
            assert await cache.locks.release(name, first.token) is True
            second = await cache.locks.acquire(name, ttl=5)
            assert second is not None
            assert second.fence > first.fence
        assert len(slots) > 1  # the names really are spread over the cluster
    finally:
        await cache.stop()


async def test_replica_ack_on_cluster(cluster_topology: ClusterTopology) -> None:
    config = cluster_topology.config(keyPrefix="t:", replicaAckTimeout="1s")
    cache = new_cache(Config(type="redis", config=config))
    try:
        lease = await cache.locks.acquire("acked", ttl=5)
        assert lease is not None
        assert lease.replicated is True
    finally:
        await cache.stop()


async def test_slot_migration_under_load_is_followed(cluster_topology: ClusterTopology) -> None:
    cache = new_cache(Config(type="redis", config=cluster_topology.config(keyPrefix="load:")))
    probe = LoadProbe(cache)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.sleep(0.5)
        owner, _, _ = lock_keys("load:", probe.lock_name)
        observer = cluster_topology.nodes[0]
        moved = 0
        for key in (owner, "load:probe-1", "load:probe-2"):
            slot = int(observer.command("CLUSTER", "KEYSLOT", key))
            source = cluster_topology.primary_for_key(key)
            target = next(p for p in cluster_topology.primaries() if p.port != source.port)
            await asyncio.to_thread(cluster_topology.migrate_slot, slot, target)
            assert cluster_topology.primary_for_key(key).port == target.port
            moved += 1
        moved_at = time.monotonic()
        await asyncio.sleep(1.0)
    finally:
        probe.stop()
        await task
    print(probe.figures(moved_at).line("cluster slot migration"))
    assert moved == 3
    assert not probe.failures_after(moved_at), "calls failed after the slots had moved"
    assert probe.successes_after(moved_at) > 20
    assert probe.fences == sorted(set(probe.fences))
    assert await cache.get("probe-1") is not None
    await cache.stop()


@pytest.mark.slow
async def test_primary_killed_under_load_replica_takes_over(
    cluster_topology: ClusterTopology,
) -> None:
    config = cluster_topology.config(
        keyPrefix="load:", timeouts={"operation": "500ms", "connect": "300ms"},
    )
    cache = new_cache(Config(type="redis", config=config))
    probe = LoadProbe(cache)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.sleep(0.5)
        victim = cluster_topology.primary_for_key("load:probe-1")
        fault_at = time.monotonic()
        replicas = await asyncio.to_thread(cluster_topology.kill, victim)
        await asyncio.to_thread(cluster_topology.wait_for_failover, replicas)
        healed_at = time.monotonic()
        await asyncio.sleep(1.5)
    finally:
        probe.stop()
        await task
    figures = probe.figures(fault_at)
    print(figures.line("cluster primary killed"))
    assert figures.failed > 0
    assert figures.recovery is not None
    assert figures.recovery < 20
    assert not probe.failures_after(healed_at + 1.0), "calls still fail after the failover"
    assert probe.successes_after(healed_at + 1.0) > 20
    assert probe.fences == sorted(set(probe.fences)), "a fence repeated or went backwards"
    await cache.stop()
