"""The Redis backend on Sentinel: one primary, one replica, three sentinels, real processes.

Aspects:
- every cache operation through Sentinel with a data password and a sentinel password;
  the data lands on the primary the sentinels name;
- a wrong sentinel password or no reachable sentinel is ``BackendUnavailable``, fast;
- ``connect_sentinel_replica`` reads from a replica, never from the primary, and the
  backend serves ``get`` from it with ``readFromReplicas`` (writes stay on the primary);
- kill the primary under a steady load of sets, gets and lock acquisitions: calls fail
  only during the failover window, the same Cache then succeeds on the new primary
  without a restart, and lock fences never repeat nor go backwards;
- a failover that lost writes (the replica was cut off while fences were handed out)
  still never hands out a fence again: the lost leases reported ``replicated=False``,
  and the promoted replica's first fence is above every lost one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from podcache.backends import redis_topologies
from podcache.backends.redis import RedisBackend
from podcache.cache import new_cache
from podcache.config import Config
from podcache.errors import BackendUnavailable, CacheMiss
from podcache.locks.redis import lock_keys
from tests.redis_topologies import SentinelTopology
from tests.topologies.probe import LoadProbe


async def test_operations_through_sentinel_with_passwords(
    sentinel_topology: SentinelTopology,
) -> None:
    backend = RedisBackend(sentinel_topology.settings(keyPrefix="t:"))
    try:
        await backend.set("k", b"v", ttl=30)
        assert await backend.get("k") == b"v"
        assert await backend.set_nx("k", b"other") is False
        assert await backend.set_if_match("k", b"v2", b"v") is True
        assert await backend.get("k") == b"v2"
        assert await backend.count_items() == 1
        assert await backend.delete("k") is True
        with pytest.raises(CacheMiss):
            await backend.get("k")
        await backend.set("stays", b"1", ttl=30)
        primary = sentinel_topology.primary()
        assert primary.command("GET", "t:stays") == b"1"
    finally:
        await backend.stop()


async def test_wrong_sentinel_password_is_backend_unavailable(
    sentinel_topology: SentinelTopology,
) -> None:
    settings = sentinel_topology.settings(
        sentinel={"password": "wrong"}, timeouts={"operation": "500ms"}
    )
    backend = RedisBackend(settings)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await backend.set("k", b"v")
        assert time.monotonic() - started < 2.0
    finally:
        await backend.stop()


async def test_no_sentinel_reachable_is_backend_unavailable(
    sentinel_topology: SentinelTopology,
) -> None:
    for sentinel in sentinel_topology.sentinels:
        sentinel.stop()
    settings = sentinel_topology.settings(timeouts={"operation": "500ms", "connect": "200ms"})
    backend = RedisBackend(settings)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"master|sentinel|onnect"):
            await backend.get("k")
        assert time.monotonic() - started < 2.0
    finally:
        await backend.stop()


async def test_replica_client_reads_from_a_replica(sentinel_topology: SentinelTopology) -> None:
    settings = sentinel_topology.settings()
    primary = redis_topologies.connect_sentinel(settings)
    replica = redis_topologies.connect_sentinel_replica(settings)
    try:
        await primary.set("r", b"1")
        assert await primary.execute_command("WAIT", 1, 2000) == 1
        assert await replica.get("r") == b"1"
        role = await replica.execute_command("ROLE")
        assert role[0] in (b"slave", "slave")
        replica_ports = {node.port for node in sentinel_topology.replicas()}
        pool_ports = {c.port for c in replica.connection_pool._available_connections}  # type: ignore[attr-defined]
        assert pool_ports <= replica_ports
    finally:
        await primary.aclose()
        await replica.aclose()


async def test_backend_reads_from_replicas_when_asked(sentinel_topology: SentinelTopology) -> None:
    settings = sentinel_topology.settings(keyPrefix="t:", sentinel={"readFromReplicas": True})
    backend = RedisBackend(settings)
    replica = sentinel_topology.replicas()[0]
    primary = sentinel_topology.primary()

    def gets(node: Any) -> int:
        return int(node.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

    try:
        await backend.set("k", b"v", ttl=30)
        primary.command("WAIT", 1, 2000)
        before_replica, before_primary = gets(replica), gets(primary)
        for _ in range(5):
            assert await backend.get("k") == b"v"
        assert gets(replica) - before_replica == 5
        assert gets(primary) == before_primary
        assert await backend.set_if_match("k", b"w", b"v") is True  # writes: the primary
        assert primary.command("GET", "t:k") == b"w"
    finally:
        await backend.stop()


@pytest.mark.slow
async def test_primary_killed_under_load_fails_over_without_restart(
    sentinel_topology: SentinelTopology,
) -> None:
    config = Config(type="redis", config=sentinel_topology.config(
        keyPrefix="load:", timeouts={"operation": "500ms", "connect": "300ms"},
    ))
    cache = new_cache(config)
    probe = LoadProbe(cache)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.sleep(1.0)
        assert probe.successes_after(0) > 20
        assert not probe.failures_after(0)
        old = sentinel_topology.primary_port()
        fault_at = time.monotonic()
        await asyncio.to_thread(sentinel_topology.kill_primary)
        new = await asyncio.to_thread(sentinel_topology.wait_for_failover, old)
        healed_at = time.monotonic()
        await asyncio.sleep(1.5)
    finally:
        probe.stop()
        await task
    figures = probe.figures(fault_at)
    print(figures.line("sentinel primary killed"))
    assert figures.failed > 0, "killing the primary went unnoticed: was the load running?"
    assert figures.recovery is not None
    assert figures.recovery < 15
    assert not probe.failures_after(healed_at + 1.0), "calls still fail after the failover"
    assert probe.successes_after(healed_at + 1.0) > 20
    assert await cache.get("probe-1") is not None
    assert new.command("EXISTS", "load:probe-1") == 1
    pipeline = getattr(cache.backend, "pipeline", None)
    assert pipeline is not None
    assert pipeline.connects >= 2  # the pipelined connection followed the new primary
    assert probe.fences == sorted(set(probe.fences)), "a fence repeated or went backwards"
    await cache.stop()


async def _acquire_until_served(cache: Any, name: str, *, within: float) -> Any:
    """Acquire ``name``, retrying while the backend is unavailable (a failover window).

    An attempt that failed with ``BackendUnavailable`` may still have run (its reply was
    lost with the connection), leaving the lock held by nobody who knows it: then
    "held" is retried too, until that lease's TTL (5 s) has run out."""
    deadline = time.monotonic() + within
    unanswered = False
    while True:
        try:
            lease = await cache.locks.acquire(name, ttl=5)
        except BackendUnavailable:
            unanswered = True
            lease = None
        else:
            assert lease is not None or unanswered, "held, and no attempt of ours was lost"
        if lease is not None:
            return lease
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not acquired within {within}s")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_fences_never_reused_after_a_failover_that_lost_writes(
    sentinel_topology: SentinelTopology,
) -> None:
    config = Config(type="redis", config=sentinel_topology.config(
        keyPrefix="f:", replicaAckTimeout="300ms",
        timeouts={"operation": "500ms", "connect": "300ms"},
    ))
    cache = new_cache(config)
    name = "payments"
    _, counter, _ = lock_keys("f:", name)
    try:
        kept = []
        for _ in range(3):
            lease = await cache.locks.acquire(name, ttl=5)
            assert lease.replicated is True
            assert await cache.locks.release(name, lease.token)
            kept.append(lease.fence)
        # Cut the replica off: frozen, and its link closed by the primary, so the next
        # writes exist on the primary only (not even in the replica's socket buffer).
        replica = sentinel_topology.replicas()[0]
        primary = sentinel_topology.primary()
        replica.pause()
        primary.command("CLIENT", "KILL", "TYPE", "replica")
        lost = []
        for _ in range(5):
            lease = await cache.locks.acquire(name, ttl=5)
            assert lease.replicated is False  # visible: no replica acknowledged it
            assert await cache.locks.release(name, lease.token)
            lost.append(lease.fence)
        assert kept + lost == sorted(set(kept + lost))
        sentinel_topology.kill_primary()
        replica.resume()
        new = await asyncio.to_thread(sentinel_topology.wait_for_failover, primary.port)
        assert new.port == replica.port
        survived = int(new.command("HGET", counter, "n"))
        assert survived < max(lost), "the promoted replica did not lose the writes"
        after = await _acquire_until_served(cache, name, within=15)
        print(f"fences: kept {kept}, lost {lost}, survived counter {survived}, "
              f"after failover {after.fence}")
        assert after.fence > max(lost)
        again = await _acquire_until_served(cache, name + "-other", within=5)
        assert again.fence > 0
        assert await cache.locks.release(name, after.token)
        following = await cache.locks.acquire(name, ttl=5)
        assert following.fence == after.fence + 1  # back to counting by one
    finally:
        await cache.stop()
