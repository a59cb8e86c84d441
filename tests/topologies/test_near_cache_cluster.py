"""The near cache on Redis Cluster (issue 13): one invalidation channel per primary.

Real clusters (three primaries, one replica each), two caches on one cluster where the
test needs a second writer. Aspects:
- a write through one cache is seen by the other within the bound, for keys on every
  shard; a delete too; the second GET of a key is local; the same through two sidecar
  processes;
- ``CLIENT KILL`` of the channel on one shard, writes made meanwhile on every shard:
  no stale read, and copies are served again once the channel is back;
- a shard failed over (``CLUSTER FAILOVER`` on its replica, the old primary demoted):
  no stale read, the channels follow the new primary, copies kept again;
- a shard failed over while its primary is frozen (SIGSTOP, ``CLUSTER FAILOVER FORCE``):
  the frozen channel cannot say anything, the epoch rise seen on the other shards drops
  the copies well before the frozen channel's health probe would;
- a slot migrated to another primary (``SETSLOT``/``MIGRATE``), and to a node added to
  the cluster: no stale read afterwards; the new primary gets a channel and its keys are
  kept (and invalidated) like any other;
- a tenant's ACL user without @admin commands: the channels' probes still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from podcache import Client
from podcache.backends.near_cache import HEALTH_INTERVAL, NearCache
from podcache.backends.near_cluster import ShardChannels
from podcache.backends.redis import RedisBackend
from podcache.cache import Cache, new_cache
from podcache.config import Config
from podcache.errors import BackendUnavailable, CacheMiss
from tests.redis_topologies import ClusterTopology, Node, wait_until
from tests.sidecar.conftest import SidecarProcess

PREFIX = "near-cl:"
BOUND = 1.0
"""Seconds within which another client's write must be seen (slack for a busy machine)."""
EPOCH_BOUND = 2 * HEALTH_INTERVAL + 0.5
"""Seconds within which a failover or migration must have dropped the copies: the epoch
is polled every HEALTH_INTERVAL on every channel (slack for gossip and a busy loop)."""
TTL_MS = 600_000


def config(topology: ClusterTopology, **timeouts: str) -> Config:
    return Config(type="redis", config=topology.config(
        keyPrefix=PREFIX, nearCache={"enabled": True},
        timeouts={"operation": "1s", "connect": "500ms", **timeouts},
    ))


def near_of(cache: Cache) -> NearCache:
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    assert backend.near is not None
    return backend.near


def shards_of(cache: Cache) -> ShardChannels:
    shards = near_of(cache).channel
    assert isinstance(shards, ShardChannels)
    return shards


async def wait_for(predicate: Callable[[], Any], *, within: float = 10.0, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within}s")
        await asyncio.sleep(0.01)


async def started(cache: Cache) -> Cache:
    cache.start()
    await wait_for(lambda: near_of(cache).channel.up, what="every shard's channel up")
    return cache


@contextlib.asynccontextmanager
async def caches(topology: ClusterTopology, count: int, **timeouts: str,
                 ) -> AsyncIterator[list[Cache]]:
    made = [new_cache(config(topology, **timeouts)) for _ in range(count)]
    try:
        for cache in made:
            await started(cache)
        yield made
    finally:
        for cache in made:
            await cache.stop()


def keys_on_every_shard(topology: ClusterTopology, per_shard: int = 2) -> dict[int, list[str]]:
    """Primary port -> keys (without the prefix) whose slot it owns."""
    primaries = {p.port for p in topology.primaries()}
    found: dict[int, list[str]] = {port: [] for port in primaries}
    i = 0
    while any(len(keys) < per_shard for keys in found.values()):
        key = f"k{i}"
        owner = topology.primary_for_key(PREFIX + key).port
        if len(found[owner]) < per_shard:
            found[owner].append(key)
        i += 1
    return found


async def replica_of(topology: ClusterTopology, primary: Node) -> Node:
    """A replica of ``primary`` in sync (right after the cluster is created, gossip may
    not have told the primary yet)."""
    def ready() -> bool:
        return any(r.info("replication").get("master_link_status") == "up"
                   for r in topology.replicas_of(primary))
    await asyncio.to_thread(wait_until, ready, timeout=15, what="a replica in sync")
    return next(r for r in topology.replicas_of(primary)
                if r.info("replication").get("master_link_status") == "up")


def write(node: Node, key: str, value: bytes) -> None:
    """Another client's write, straight on the node that owns the key."""
    node.command("SET", PREFIX + key, value, "PX", TTL_MS)


async def cached(cache: Cache, key: str, value: bytes) -> None:
    """Read ``key`` until the near cache holds it (a GET it answers itself). A reply may
    be left unkept once: the invalidation of the write before it can arrive after it."""
    near = near_of(cache)
    await wait_for(lambda: near.channel.up, what="channels up")
    for _ in range(20):
        hits = near.hits
        assert await cache.get(key) == value
        if near.hits == hits + 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} was never kept")


async def watch_reads(cache: Cache, key: str, *, seconds: float,
                      until: bytes | None = None) -> list[tuple[float, bytes | None]]:
    """(time, value) of GETs of ``key`` for ``seconds`` (None: Redis unavailable), or until
    ``until`` was read five times in a row."""
    seen: list[tuple[float, bytes | None]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value: bytes | None
        try:
            value = await asyncio.wait_for(cache.get(key), 0.5)
        except (BackendUnavailable, TimeoutError):
            value = None  # the failover window
        seen.append((time.monotonic(), value))
        if until is not None and [v for _, v in seen[-5:]] == [until] * 5:
            break
        await asyncio.sleep(0.01)
    return seen


def stale_after(seen: list[tuple[float, bytes | None]], old: bytes, since: float,
                ) -> list[float]:
    return [round(at - since, 3) for at, value in seen if value == old and at > since]


# -- coherence across shards ------------------------------------------------------------


async def test_write_through_one_seen_by_the_other_on_every_shard(
    cluster_topology: ClusterTopology,
) -> None:
    async with caches(cluster_topology, 2) as (a, b):
        assert len(shards_of(b).channels) == 3  # one channel per primary
        keys = [key for shard in keys_on_every_shard(cluster_topology).values()
                for key in shard]
        for key in keys:
            await a.set(key, b"old")
            await cached(b, key, b"old")
        for key in keys:
            await a.set(key, b"new")
        written = time.monotonic()
        for key in keys:
            while (value := await b.get(key)) != b"new":
                assert value == b"old"
                assert time.monotonic() - written < BOUND, f"b still serves old {key}"
                await asyncio.sleep(0.001)
        await a.delete(keys[0])
        deleted = time.monotonic()
        while True:
            try:
                await b.get(keys[0])
            except CacheMiss:
                break
            assert time.monotonic() - deleted < BOUND, "b still serves a deleted key"
            await asyncio.sleep(0.001)
        assert near_of(b).invalidations >= 2 * len(keys)
        assert near_of(b).flushes["topology"] == 0  # nothing changed in the cluster


async def test_client_kill_of_one_shard_channel(cluster_topology: ClusterTopology) -> None:
    async with caches(cluster_topology, 1) as (a,):
        near = near_of(a)
        by_shard = keys_on_every_shard(cluster_topology)
        for port, keys in by_shard.items():
            for key in keys:
                write(cluster_topology.node_at(port), key, b"1")
                await cached(a, key, b"1")
        victim = cluster_topology.node_at(next(iter(by_shard)))
        connects = near.channel.connects
        listed = victim.command("CLIENT", "LIST").decode().splitlines()
        ids = [line.split()[0].removeprefix("id=") for line in listed
               if "name=podcache-near-cache" in line]
        assert len(ids) == 1, listed
        victim.command("CLIENT", "KILL", "ID", ids[0])
        # Written while that channel is gone: Redis will never announce these.
        for port, keys in by_shard.items():
            for key in keys:
                write(cluster_topology.node_at(port), key, b"2")
        await wait_for(lambda: near.flushes["channel_down"] >= 1, what="loss seen")
        for keys in by_shard.values():
            for key in keys:
                assert await a.get(key) == b"2"  # every shard's copies went, not only one
        await wait_for(lambda: near.channel.up and near.channel.connects > connects,
                       what="channel back")
        for keys in by_shard.values():
            for key in keys:
                await cached(a, key, b"2")


# -- failovers --------------------------------------------------------------------------


async def test_shard_failover_no_stale_read(cluster_topology: ClusterTopology) -> None:
    """CLUSTER FAILOVER: the old primary is demoted (its connections stay open)."""
    async with caches(cluster_topology, 1) as (a,):
        near, shards = near_of(a), shards_of(a)
        victim = cluster_topology.primary_for_key(PREFIX + "k0")
        write(victim, "k0", b"old")
        await cached(a, "k0", b"old")
        replica = await replica_of(cluster_topology, victim)
        replica.command("CLUSTER", "FAILOVER")
        await asyncio.to_thread(
            wait_until, lambda: replica.info("replication").get("role") == "master",
            timeout=15, what="the replica promoted")
        write(replica, "k0", b"new")
        written = time.monotonic()
        seen = await watch_reads(a, "k0", seconds=10, until=b"new")
        values = [v for _, v in seen]
        assert values[-5:] == [b"new"] * 5, values
        assert b"old" not in values[values.index(b"new"):], values
        assert not stale_after(seen, b"old", written + EPOCH_BOUND)
        assert near.flushes["topology"] >= 1
        # The channels follow the new primary, and its keys are kept again.
        await wait_for(lambda: near.channel.up and replica.address in shards.channels,
                       what="a channel on the new primary")
        assert victim.address not in shards.channels
        await cached(a, "k0", b"new")
        write(replica, "k0", b"newer")
        seen = await watch_reads(a, "k0", seconds=BOUND, until=b"newer")
        assert seen[-1][1] == b"newer", seen


async def test_failover_of_a_frozen_primary_no_stale_read(
    cluster_topology: ClusterTopology,
) -> None:
    """The primary frozen (SIGSTOP) and its replica promoted by force: the frozen node
    announces nothing, and its channel's probe would only give up after HEALTH_INTERVAL +
    the operation timeout (5 s here). The epoch rise, seen on the other shards' channels,
    must drop the copies well before."""
    async with caches(cluster_topology, 1, operation="5s", connect="300ms") as (a,):
        near, shards = near_of(a), shards_of(a)
        victim = cluster_topology.primary_for_key(PREFIX + "k0")
        replica = await replica_of(cluster_topology, victim)
        write(victim, "k0", b"old")
        await cached(a, "k0", b"old")
        victim.pause()
        try:
            frozen = time.monotonic()
            replica.command("CLUSTER", "FAILOVER", "FORCE")
            await asyncio.to_thread(
                wait_until, lambda: replica.info("replication").get("role") == "master",
                timeout=15, what="the replica promoted")
            write(replica, "k0", b"new")
            written = time.monotonic()
            assert written - frozen < 3, "the failover took too long to tell the paths apart"
            # Still frozen: its channel cannot have given up before frozen + 5.5 s.
            seen = await watch_reads(a, "k0", seconds=frozen + 5 - time.monotonic())
        finally:
            victim.resume()
        stale = stale_after(seen, b"old", written + EPOCH_BOUND)
        assert not stale, f"old value served {stale} s after the write (primary frozen)"
        # And once copies are served again (on the new primary's channel): never old.
        await wait_for(lambda: near.channel.up and replica.address in shards.channels,
                       within=20, what="a channel on the new primary")
        seen += await watch_reads(a, "k0", seconds=0.5)
        stale = stale_after(seen, b"old", written + EPOCH_BOUND)
        assert not stale, f"old value served {stale} s after the write"
        assert seen[-1][1] == b"new", seen
        assert near.flushes["topology"] >= 1


# -- slot migrations --------------------------------------------------------------------


async def test_slot_migrated_no_stale_read(cluster_topology: ClusterTopology) -> None:
    async with caches(cluster_topology, 1) as (a,):
        near = near_of(a)
        source = cluster_topology.primary_for_key(PREFIX + "k0")
        target = next(p for p in cluster_topology.primaries() if p.port != source.port)
        write(source, "k0", b"old")
        await cached(a, "k0", b"old")
        slot = int(source.command("CLUSTER", "KEYSLOT", PREFIX + "k0"))
        await asyncio.to_thread(cluster_topology.migrate_slot, slot, target)
        write(target, "k0", b"moved")
        moved = time.monotonic()
        seen = await watch_reads(a, "k0", seconds=5, until=b"moved")
        assert seen[-1][1] == b"moved", seen
        assert not stale_after(seen, b"old", moved), seen
        await wait_for(lambda: near.flushes["topology"] >= 1, within=EPOCH_BOUND,
                       what="the migration dropped the copies")
        await cached(a, "k0", b"moved")
        write(target, "k0", b"newer")
        seen = await watch_reads(a, "k0", seconds=BOUND, until=b"newer")
        assert seen[-1][1] == b"newer", seen


async def test_slot_migrated_to_a_new_primary(cluster_topology: ClusterTopology) -> None:
    """A node added and given a slot: it gets a channel of its own; until it has one, its
    keys are served from Redis, never kept."""
    async with caches(cluster_topology, 1) as (a,):
        shards = shards_of(a)
        source = cluster_topology.primary_for_key(PREFIX + "k0")
        write(source, "k0", b"old")
        await cached(a, "k0", b"old")
        added = await asyncio.to_thread(cluster_topology.add_primary)
        slot = int(source.command("CLUSTER", "KEYSLOT", PREFIX + "k0"))
        await asyncio.to_thread(cluster_topology.migrate_slot, slot, added)
        write(added, "k0", b"moved")
        moved = time.monotonic()
        seen = await watch_reads(a, "k0", seconds=5, until=b"moved")
        assert seen[-1][1] == b"moved", seen
        assert not stale_after(seen, b"old", moved), seen
        await wait_for(lambda: added.address in shards.channels and shards.up,
                       what="a channel on the added primary")
        assert len(shards.channels) == 4
        await cached(a, "k0", b"moved")
        write(added, "k0", b"newer")  # announced only on the added node's channel
        seen = await watch_reads(a, "k0", seconds=BOUND, until=b"newer")
        assert seen[-1][1] == b"newer", seen


async def test_one_channel_per_primary_per_cache(cluster_topology: ClusterTopology) -> None:
    """What the near cache costs on Cluster: one connection per primary per sidecar."""
    async with caches(cluster_topology, 2):
        for primary in cluster_topology.primaries():
            listed = primary.command("CLIENT", "LIST").decode()
            channels = [line for line in listed.splitlines() if "name=podcache-near-cache" in line]
            assert len(channels) == 2, listed
        for replica in set(cluster_topology.nodes) - set(cluster_topology.primaries()):
            assert b"name=podcache-near-cache" not in replica.command("CLIENT", "LIST")


async def test_a_tenant_acl_user_without_admin_commands(
    cluster_topology: ClusterTopology,
) -> None:
    """The channels' probes need no @admin command (ROLE is one): a tenant's ACL user
    limited to its keys still gets a working near cache."""
    for node in cluster_topology.nodes:
        node.command("ACL", "SETUSER", "tenant", "on", ">tenant-secret",
                     f"~{PREFIX}*", "+@all", "-@admin")
    raw = cluster_topology.config(keyPrefix=PREFIX, nearCache={"enabled": True},
                                  username="tenant", password="tenant-secret")
    cache = new_cache(Config(type="redis", config=raw))
    try:
        await started(cache)
        await wait_for(lambda: shards_of(cache).refreshes >= 1, what="slot map read")
        write(cluster_topology.primary_for_key(PREFIX + "k0"), "k0", b"1")
        await cached(cache, "k0", b"1")
    finally:
        await cache.stop()


@contextlib.contextmanager
def sidecars(topology: ClusterTopology, count: int) -> Iterator[list[SidecarProcess]]:
    config = {"type": "redis", "config": topology.config(
        keyPrefix=PREFIX, nearCache={"enabled": True})}
    with tempfile.TemporaryDirectory(dir="/tmp") as root:  # short: Unix socket paths
        made: list[SidecarProcess] = []
        try:
            for i in range(count):
                workdir = Path(root) / f"s{i}"
                workdir.mkdir()
                made.append(SidecarProcess(workdir, config))
            for process in made:
                process.wait_socket()
            yield made
        finally:
            for process in made:
                process.kill()


def test_two_sidecar_processes(cluster_topology: ClusterTopology) -> None:
    keys = [key for shard in keys_on_every_shard(cluster_topology).values() for key in shard]
    with sidecars(cluster_topology, 2) as (a, b):
        client_a, client_b = Client(a.socket_path), Client(b.socket_path)
        try:
            with contextlib.suppress(CacheMiss):
                client_b.get("warm-up")  # opens b's channels (on first use)
            b.wait_metric("lab_near_cache_channel_up", 1.0)
            for key in keys:
                client_a.set(key, b"old")
            for _ in range(5):
                for key in keys:
                    assert client_b.get(key) == b"old"
            assert b.metric("lab_near_cache_hits_total") >= 3 * len(keys)
            for key in keys:
                client_a.set(key, b"new")
            written = time.monotonic()
            for key in keys:
                while (value := client_b.get(key)) != b"new":
                    assert value == b"old"
                    assert time.monotonic() - written < BOUND, f"b still serves old {key}"
        finally:
            client_a.stop()
            client_b.stop()
