"""Locks with fencing tokens, on the memory backend and on a real Redis.

Aspects tested (both backends unless marked):
- acquire / refresh / release round trip; positional ttl; lease fields
- contention: a held lock is refused (wait=0), released locks can be taken again
- fences strictly increasing for one name, across release and expiry
- expiry and takeover; the lapsed owner's release/refresh are refused and leave
  the new owner's lock untouched; non-owner release/refresh refused
- refresh extends the lease and returns the same fence
- blocking acquire: woken promptly by a release, notices an expiry, times out after ~wait
- bad input (names, ttl, wait, token) raises a clear error; the service keeps working
- metrics: acquisitions by outcome, releases by outcome, hold and contention histograms,
  held gauge
- stop(): later calls fail with BackendUnavailable, a blocked acquire gives up
- Redis: key layout with one hash tag per lock (also for names with braces), key
  prefix isolation, build_locks on the real backends, replica acknowledgement (WAIT),
  outage (stopped or paused Redis) surfaces as BackendUnavailable fast and counted as
  error, recovery without restarting anything; a cancelled call stays cancelled even
  where redis-py swallows the cancellation
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from podcache.config import MemorySettings, RedisSettings
from podcache.errors import BackendUnavailable, InvalidKey, InvalidTTL
from podcache.locks import LockService, MemoryLocks, RedisLocks, build_locks
from podcache.locks.base import Lease
from podcache.locks.redis import lock_keys
from tests.redis_server import RedisServer

NS = "t"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture(params=["memory", "redis"])
async def locks(request: pytest.FixtureRequest) -> AsyncIterator[LockService]:
    registry = CollectorRegistry()
    if request.param == "memory":
        service: LockService = MemoryLocks(registry=registry, namespace=NS)
        yield service
        await service.stop()
        return
    url = request.getfixturevalue("redis_url")
    client = redis.asyncio.Redis.from_url(url)
    service = RedisLocks(client, key_prefix="app:", registry=registry, namespace=NS,
                         operation_timeout=1.0)
    yield service
    await service.stop()
    await client.aclose()


# -- basics ------------------------------------------------------------------------------


async def test_acquire_refresh_release_round_trip(locks: LockService) -> None:
    lease = await locks.acquire("job", ttl=10, wait=0)
    assert isinstance(lease, Lease)
    assert len(lease.token) == 32
    assert int(lease.token, 16) >= 0
    assert lease.fence >= 1
    assert lease.ttl == 10
    assert lease.deadline == pytest.approx(time.monotonic() + 10, abs=1)

    refreshed = await locks.refresh("job", lease.token, ttl=20)
    assert refreshed is not None
    assert (refreshed.token, refreshed.fence, refreshed.ttl) == (lease.token, lease.fence, 20)

    assert await locks.release("job", lease.token) is True
    assert await locks.release("job", lease.token) is False  # already released


async def test_positional_ttl(locks: LockService) -> None:
    lease = await locks.acquire("job", 10)
    assert lease is not None
    assert await locks.refresh("job", lease.token, 5) is not None
    assert await locks.release("job", lease.token)


async def test_held_lock_is_refused_and_free_after_release(locks: LockService) -> None:
    first = await locks.acquire("job", ttl=10)
    assert first is not None
    assert await locks.acquire("job", ttl=10) is None
    assert await locks.acquire("other", ttl=10) is not None  # names are independent
    assert await locks.release("job", first.token)
    second = await locks.acquire("job", ttl=10)
    assert second is not None
    assert second.token != first.token


async def test_fences_strictly_increase(locks: LockService) -> None:
    fences = []
    for _ in range(20):
        lease = await locks.acquire("job", ttl=10)
        assert lease is not None
        fences.append(lease.fence)
        assert await locks.release("job", lease.token)
    assert all(a < b for a, b in itertools.pairwise(fences))


async def test_refresh_extends_the_lease(locks: LockService) -> None:
    lease = await locks.acquire("job", ttl=0.3)
    assert lease is not None
    await asyncio.sleep(0.15)
    assert await locks.refresh("job", lease.token, ttl=2) is not None
    await asyncio.sleep(0.3)  # past the original ttl
    assert await locks.acquire("job", ttl=1) is None
    assert await locks.release("job", lease.token)


# -- expiry, takeover and ownership ------------------------------------------------------


async def test_expiry_and_takeover_refuse_the_lapsed_owner(locks: LockService) -> None:
    old = await locks.acquire("job", ttl=0.2)
    assert old is not None
    started = time.monotonic()
    new = await locks.acquire("job", ttl=10, wait=3)
    took = time.monotonic() - started
    assert new is not None
    assert 0.1 < took < 0.6, took  # noticed the expiry, not the end of wait
    assert new.fence > old.fence

    assert await locks.release("job", old.token) is False
    assert await locks.refresh("job", old.token, ttl=10) is None
    # The new owner's lock is untouched by the refused calls.
    assert await locks.acquire("job", ttl=1) is None
    assert await locks.refresh("job", new.token, ttl=10) is not None
    assert await locks.release("job", new.token) is True


async def test_non_owner_is_refused(locks: LockService) -> None:
    lease = await locks.acquire("job", ttl=10)
    assert lease is not None
    assert await locks.release("job", "f" * 32) is False
    assert await locks.refresh("job", "f" * 32, ttl=10) is None
    assert await locks.release("other", lease.token) is False  # token of another name
    assert await locks.acquire("job", ttl=1) is None  # still held
    assert await locks.release("job", lease.token) is True


async def test_release_after_expiry_is_refused(locks: LockService) -> None:
    lease = await locks.acquire("job", ttl=0.1)
    assert lease is not None
    await asyncio.sleep(0.2)
    assert await locks.refresh("job", lease.token, ttl=1) is None
    assert await locks.release("job", lease.token) is False


# -- blocking acquire --------------------------------------------------------------------


async def test_blocking_acquire_is_woken_by_release(locks: LockService) -> None:
    holder = await locks.acquire("job", ttl=10)
    assert holder is not None
    waiter = asyncio.create_task(locks.acquire("job", ttl=10, wait=5))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    released_at = time.monotonic()
    assert await locks.release("job", holder.token)
    lease = await asyncio.wait_for(waiter, 5)
    woken_after = time.monotonic() - released_at
    assert lease is not None
    assert lease.fence > holder.fence
    assert woken_after < 0.3, woken_after


async def test_many_waiters_all_get_the_lock_in_turn(locks: LockService) -> None:
    holder = await locks.acquire("job", ttl=10)
    assert holder is not None
    got: list[Lease] = []

    async def take_and_release() -> None:
        lease = await locks.acquire("job", ttl=10, wait=5)
        assert lease is not None
        got.append(lease)
        await asyncio.sleep(0.01)
        assert await locks.release("job", lease.token)

    started = time.monotonic()
    waiters = [asyncio.create_task(take_and_release()) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert await locks.release("job", holder.token)
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert len(got) == 5
    assert time.monotonic() - started < 2.5  # handed over by wake-ups, not by expiry
    fences = [lease.fence for lease in got]
    assert fences == sorted(fences)
    assert len(set(fences)) == 5


async def test_blocking_acquire_times_out(locks: LockService) -> None:
    holder = await locks.acquire("job", ttl=10)
    assert holder is not None
    started = time.monotonic()
    assert await locks.acquire("job", ttl=10, wait=0.5) is None
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.0, elapsed


async def test_cancelled_waiter_does_not_strand_others(locks: LockService) -> None:
    holder = await locks.acquire("job", ttl=10)
    assert holder is not None
    doomed = asyncio.create_task(locks.acquire("job", ttl=10, wait=5))
    survivor = asyncio.create_task(locks.acquire("job", ttl=10, wait=5))
    await asyncio.sleep(0.1)
    doomed.cancel()
    assert await locks.release("job", holder.token)
    lease = await asyncio.wait_for(survivor, 3)
    assert lease is not None


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("", "empty"), (b"job", "string"), (None, "string"), ("é" * 513, "1026 bytes")],
)
async def test_bad_names(locks: LockService, name: object, fragment: str) -> None:
    with pytest.raises(InvalidKey, match=fragment):
        await locks.acquire(name, ttl=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        await locks.release(name, "t")  # type: ignore[arg-type]
    assert await locks.acquire("fine", ttl=1) is not None  # still serving


async def test_name_at_the_limit_is_fine(locks: LockService) -> None:
    lease = await locks.acquire("x" * 1024, ttl=1)
    assert lease is not None
    assert await locks.release("x" * 1024, lease.token)


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, "10", True, None])
async def test_bad_ttl(locks: LockService, ttl: object) -> None:
    with pytest.raises(InvalidTTL, match="ttl"):
        await locks.acquire("job", ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(InvalidTTL, match="ttl"):
        await locks.refresh("job", "t", ttl=ttl)  # type: ignore[arg-type]
    assert await locks.acquire("job", ttl=1) is not None  # nothing was taken


@pytest.mark.parametrize("wait", [-1, math.nan, math.inf, "2s"])
async def test_bad_wait(locks: LockService, wait: object) -> None:
    with pytest.raises(InvalidTTL, match="wait"):
        await locks.acquire("job", ttl=1, wait=wait)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["", None, 5])
async def test_bad_token(locks: LockService, token: object) -> None:
    with pytest.raises(InvalidKey, match="token"):
        await locks.release("job", token)  # type: ignore[arg-type]


# -- metrics -----------------------------------------------------------------------------


async def test_metrics(locks: LockService) -> None:
    reg = locks.registry
    lease = await locks.acquire("job", ttl=10)
    assert lease is not None
    assert sample(reg, "t_lock_held") == 1
    assert await locks.acquire("job", ttl=10) is None
    assert await locks.acquire("job", ttl=10, wait=0.05) is None
    assert await locks.release("job", "nobody") is False
    assert await locks.refresh("job", lease.token, ttl=10) is not None
    assert await locks.release("job", lease.token) is True
    assert sample(reg, "t_lock_held") == 0

    assert sample(reg, "t_lock_acquisitions_total", outcome="acquired") == 1
    assert sample(reg, "t_lock_acquisitions_total", outcome="contended") == 1
    assert sample(reg, "t_lock_acquisitions_total", outcome="timeout") == 1
    assert sample(reg, "t_lock_acquisitions_total", outcome="error") == 0
    assert sample(reg, "t_lock_releases_total", outcome="released") == 1
    assert sample(reg, "t_lock_releases_total", outcome="not_owner") == 1
    assert sample(reg, "t_lock_refreshes_total", outcome="refreshed") == 1
    assert sample(reg, "t_lock_hold_seconds_count") == 1
    assert sample(reg, "t_lock_contention_wait_seconds_count") == 1
    assert sample(reg, "t_lock_contention_wait_seconds_sum") >= 0.05


async def test_held_gauge_drops_lapsed_leases(locks: LockService) -> None:
    assert await locks.acquire("job", ttl=0.1) is not None
    assert sample(locks.registry, "t_lock_held") == 1
    await asyncio.sleep(0.15)
    assert sample(locks.registry, "t_lock_held") == 0


async def test_two_services_share_one_registry() -> None:
    registry = CollectorRegistry()
    a = MemoryLocks(registry=registry, namespace=NS)
    b = MemoryLocks(registry=registry, namespace=NS)  # no duplicate-registration error
    assert await a.acquire("x", ttl=5) is not None
    assert await b.acquire("y", ttl=5) is not None
    assert sample(registry, "t_lock_held") == 2
    assert sample(registry, "t_lock_acquisitions_total", outcome="acquired") == 2


# -- stop --------------------------------------------------------------------------------


async def test_stop(locks: LockService) -> None:
    holder = await locks.acquire("job", ttl=10)
    assert holder is not None
    waiter = asyncio.create_task(locks.acquire("job", ttl=10, wait=10))
    await asyncio.sleep(0.1)
    await locks.stop()
    assert await asyncio.wait_for(waiter, 2) is None  # gave up well before its wait
    with pytest.raises(BackendUnavailable, match="stopped"):
        await locks.acquire("job", ttl=1)
    await locks.stop()  # idempotent


# -- memory specifics --------------------------------------------------------------------


async def test_build_locks_on_a_memory_backend_shares_the_table() -> None:
    from podcache.backends.memory import MemoryBackend

    backend = MemoryBackend(MemorySettings())
    a = build_locks(backend, registry=CollectorRegistry(), namespace=NS)
    b = build_locks(backend, registry=CollectorRegistry(), namespace=NS)
    other = build_locks(MemoryBackend(MemorySettings()), registry=CollectorRegistry(),
                        namespace=NS)
    assert isinstance(a, MemoryLocks)
    lease = await a.acquire("job", ttl=10)
    assert lease is not None
    assert await b.acquire("job", ttl=10) is None  # same backend, same locks
    assert await other.acquire("job", ttl=10) is not None  # another backend, other locks
    assert await b.release("job", lease.token)
    await backend.stop()


# -- redis specifics ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["job", "a{b}c", "}x{", "ünï"])
async def test_redis_keys_share_one_slot(redis_url: str, name: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    locks = RedisLocks(client, key_prefix="app:", namespace=NS)
    try:
        lease = await locks.acquire(name, ttl=10)
        assert lease is not None
        waiter = asyncio.create_task(locks.acquire(name, ttl=10, wait=2))
        await asyncio.sleep(0.05)
        assert await locks.release(name, lease.token)
        second = await waiter
        assert second is not None
        assert second.fence == lease.fence + 1
        owner, fence, signal = lock_keys("app:", name)
        assert {key_slot(k.encode()) for k in (owner, fence, signal)} == {key_slot(owner.encode())}
        assert await client.get(owner) == second.token.encode()
        assert int(await client.hget(fence, "n")) == second.fence  # counter hash {n, epoch}
        assert all(k.startswith(b"app:") for k in await client.keys("*"))
    finally:
        await locks.stop()
        await client.aclose()


async def test_redis_key_prefixes_isolate_tenants(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    a = RedisLocks(client, key_prefix="a:", namespace=NS)
    b = RedisLocks(client, key_prefix="b:", namespace=NS)
    try:
        assert await a.acquire("job", ttl=10) is not None
        assert await b.acquire("job", ttl=10) is not None
    finally:
        await client.aclose()


async def test_redis_works_with_decoded_responses(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    locks = RedisLocks(client, namespace=NS)
    try:
        lease = await locks.acquire("job", ttl=10)
        assert lease is not None
        refreshed = await locks.refresh("job", lease.token, ttl=10)
        assert refreshed is not None
        assert refreshed.fence == lease.fence
        assert await locks.release("job", lease.token)
    finally:
        await client.aclose()


async def test_build_locks_on_the_redis_backend(redis_url: str) -> None:
    from podcache.backends.redis import RedisBackend

    backend = RedisBackend(RedisSettings(url=redis_url, key_prefix="tenant:"))
    registry = CollectorRegistry()
    try:
        locks = build_locks(backend, registry=registry, namespace=NS)
        assert isinstance(locks, RedisLocks)
        lease = await locks.acquire("job", ttl=10)
        assert lease is not None
        assert lease.replicated is None
        assert await backend.client.exists("tenant:podcache:lock:{job}") == 1
        assert await locks.release("job", lease.token)
    finally:
        await backend.stop()


async def test_redis_replica_acknowledgement(redis_server: RedisServer) -> None:
    primary = redis.asyncio.Redis.from_url(redis_server.url)
    await primary.config_set("repl-diskless-sync-delay", 0)  # the 5 s default only slows us
    replica = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(redis_server.port)))
    replica.start()
    try:
        deadline = time.monotonic() + 10
        while (await primary.info("replication")).get("slave0", {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica never connected"
            await asyncio.sleep(0.05)
        locks = RedisLocks(primary, namespace=NS, replica_ack_timeout=1.0)
        lease = await locks.acquire("job", ttl=10)
        assert lease is not None
        assert lease.replicated is True
        refreshed = await locks.refresh("job", lease.token, ttl=10)
        assert refreshed is not None
        assert refreshed.replicated is True
        await primary.script_flush()  # EVALSHA in the pipeline must recover from NOSCRIPT
        assert (await locks.acquire("other", ttl=10)) is not None

        replica.stop()
        impatient = RedisLocks(primary, namespace=NS, replica_ack_timeout=0.2)
        lonely = await impatient.acquire("lonely", ttl=10)
        assert lonely is not None
        assert lonely.replicated is False
    finally:
        await primary.aclose()
        replica.close()


async def test_redis_outage_fails_fast_and_recovers(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=0.5,
                                          socket_connect_timeout=0.5)
    registry = CollectorRegistry()
    locks = RedisLocks(client, registry=registry, namespace=NS, operation_timeout=0.5)
    try:
        lease = await locks.acquire("job", ttl=10)
        assert lease is not None
        redis_server.stop()
        for call in (locks.acquire("job", ttl=1), locks.release("job", lease.token),
                     locks.refresh("job", lease.token, ttl=1),
                     locks.acquire("job", ttl=1, wait=2)):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="redis"):
                await call
            assert time.monotonic() - started < 1.5
        assert sample(registry, "t_lock_acquisitions_total", outcome="error") == 2
        assert sample(registry, "t_lock_releases_total", outcome="error") == 1
        assert sample(registry, "t_lock_refreshes_total", outcome="error") == 1

        redis_server.start()  # empty again: the script cache too
        lease = await locks.acquire("job", ttl=10)
        assert lease is not None
        assert await locks.release("job", lease.token)
    finally:
        await client.aclose()


async def test_redis_paused_fails_within_the_operation_timeout(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)  # no socket timeout of its own
    locks = RedisLocks(client, namespace=NS, operation_timeout=0.3)
    try:
        assert await locks.acquire("job", ttl=10) is not None
        redis_server.pause()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await locks.acquire("job", ttl=10, wait=5)
        assert time.monotonic() - started < 1.0
    finally:
        redis_server.resume()
        await client.aclose()


async def test_redis_calls_honour_cancellation(redis_url: str) -> None:
    # redis-py on Python 3.11 can swallow a cancellation (asyncio.wait_for, gh-86296);
    # the lock service must re-raise it, or a cancelled acquire would carry on.
    client = redis.asyncio.Redis.from_url(redis_url)
    locks = RedisLocks(client, namespace=NS)
    try:
        for i in range(40):
            async def churn(name: str = f"churn-{i}") -> None:
                while True:
                    lease = await locks.acquire(name, ttl=5)
                    assert lease is not None
                    await locks.release(name, lease.token)

            task = asyncio.create_task(churn())
            await asyncio.sleep(0.0001 * (i % 8))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1)
            assert done, f"cancellation lost in round {i}"
            assert task.cancelled()
    finally:
        await client.aclose()


def test_lock_tokens_are_fresh_hex_and_not_shared_with_a_forked_child() -> None:
    from podcache.locks import tokens

    made = [tokens.new_token() for _ in range(3000)]  # several blocks of the pool
    assert len(set(made)) == len(made)
    assert all(len(token) == 32 and int(token, 16) >= 0 for token in made)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first tokens, then out without running any cleanup
        os.write(write_end, "".join(tokens.new_token() for _ in range(4)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 4096).decode()
    os.close(read_end)
    parent = [tokens.new_token() for _ in range(4)]
    assert len(child) == 128
    assert not {child[i:i + 32] for i in range(0, 128, 32)} & set(parent)
