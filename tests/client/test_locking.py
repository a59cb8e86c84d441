"""Locks through the sidecar: the raw calls and the sync/async context managers, on both backends.

Aspects: a lock held longer than its ttl stays ours (background refresh) and keeps
others out; fences strictly increase; a blocking acquire gets the lock once it is
released; ``LockNotAcquired`` when held elsewhere; ``NotOwner`` for a wrong token;
the holder is told (``lost``, ``lost_event``, ``on_lost``, ``check()``) when the lock
is taken from it in Redis and when the sidecar stops answering past the ttl; and
leaving the block releases the lock.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

import podcache
from podcache.client.async_locking import AsyncHeldLock
from podcache.client.locking import HeldLock
from tests.client.conftest import steal
from tests.client.sidecars import SidecarProcess, memory_config


def test_held_lock_is_refreshed_past_its_ttl(client: podcache.Client, key: str) -> None:
    with client.lock(key, ttl=0.4) as held:
        fence = held.fence
        time.sleep(1.0)  # two and a half ttls: only the refreshes keep it ours
        assert not held.lost
        held.check()
        with pytest.raises(podcache.LockNotAcquired) as caught:
            client.acquire_lock(key, ttl=1)
        assert caught.value.lock_name == key
    lease = client.acquire_lock(key, ttl=1)  # released on exit
    assert lease.fence > fence
    client.release_lock(key, token=lease.token)


def test_fences_strictly_increase(client: podcache.Client, key: str) -> None:
    fences = []
    for _ in range(5):
        with client.lock(key, ttl=5) as held:
            fences.append(held.fence)
    assert fences == sorted(set(fences))
    assert len(fences) == 5


def test_context_manager_raises_when_held_elsewhere(client: podcache.Client, key: str) -> None:
    lease = client.acquire_lock(key, ttl=5)
    with pytest.raises(podcache.LockNotAcquired), client.lock(key, ttl=5, wait=0):
        pytest.fail("entered a lock held by someone else")
    client.release_lock(key, token=lease.token)


def test_blocking_acquire_gets_the_lock_after_release(client: podcache.Client, key: str) -> None:
    lease = client.acquire_lock(key, ttl=5)
    releaser = threading.Timer(0.3, lambda: client.release_lock(key, token=lease.token))
    releaser.start()
    started = time.monotonic()
    with client.lock(key, ttl=5, wait=3) as held:
        waited = time.monotonic() - started
        assert held.fence > lease.fence
    releaser.join()
    assert 0.2 <= waited < 2.5


def test_wrong_token_is_not_owner(client: podcache.Client, key: str) -> None:
    lease = client.acquire_lock(key, ttl=5)
    with pytest.raises(podcache.NotOwner):
        client.refresh_lock(key, token="not-the-token", ttl=5)
    with pytest.raises(podcache.NotOwner):
        client.release_lock(key, token="not-the-token")
    refreshed = client.refresh_lock(key, token=lease.token, ttl=5)
    assert refreshed.fence == lease.fence
    client.release_lock(key, token=lease.token)
    with pytest.raises(podcache.NotOwner):
        client.release_lock(key, token=lease.token)


def test_lock_names_with_odd_characters(client: podcache.Client, key: str) -> None:
    for name in (key + "/a/b", key + "%2F", key + " ? #"):
        with client.lock(name, ttl=5) as held:
            with pytest.raises(podcache.LockNotAcquired):
                client.acquire_lock(name)
            assert held.name == name


def test_stolen_lock_is_signalled(redis_sidecar: SidecarProcess, raw_redis: redis.Redis,
                                  key: str) -> None:
    called: list[HeldLock] = []
    with podcache.Client(redis_sidecar.socket_path, timeout=5.0) as client:
        with client.lock(key, ttl=0.6, on_lost=called.append) as held:
            assert steal(raw_redis, held.token) == 1
            thief = client.acquire_lock(key, ttl=5)
            assert thief.fence > held.fence
            assert held.lost_event.wait(timeout=2.0), "the loss was never signalled"
            assert held.lost
            assert called == [held]
            assert "refused" in (held.lost_reason or "")
            with pytest.raises(podcache.LockLost):
                held.check()
        # leaving the block did not release the thief's lock
        with pytest.raises(podcache.LockNotAcquired):
            client.acquire_lock(key)
        client.release_lock(key, token=thief.token)


@pytest.fixture
def pausable_sidecar() -> Iterator[SidecarProcess]:
    sidecar = SidecarProcess(memory_config(), pod_name="pod-pause")
    try:
        sidecar.start()
        yield sidecar
    finally:
        sidecar.close()


def test_unanswered_refreshes_lose_the_lock_by_its_ttl(pausable_sidecar: SidecarProcess) -> None:
    client = podcache.Client(pausable_sidecar.socket_path, timeout=5.0)
    with client, client.lock("job", ttl=0.6) as held:
        paused_at = time.monotonic()
        pausable_sidecar.send(signal.SIGSTOP)
        try:
            assert held.lost_event.wait(timeout=3.0), "the loss was never signalled"
            lost_after = time.monotonic() - paused_at
        finally:
            pausable_sidecar.send(signal.SIGCONT)
        assert lost_after <= 0.6 + 0.3  # no later than the lease itself (plus scheduling)
        assert "within the 0.6s ttl" in (held.lost_reason or "")


# -- async -----------------------------------------------------------------------------------

async def test_async_lock_is_refreshed_past_its_ttl(aclient: podcache.AsyncClient,
                                                    key: str) -> None:
    async with aclient.lock(key, ttl=0.4) as held:
        await asyncio.sleep(1.0)
        assert not held.lost
        with pytest.raises(podcache.LockNotAcquired):
            await aclient.acquire_lock(key)
        fence = held.fence
    async with aclient.lock(key, ttl=1) as again:
        assert again.fence > fence


async def test_async_lock_not_acquired(aclient: podcache.AsyncClient, key: str) -> None:
    lease = await aclient.acquire_lock(key, ttl=5)
    with pytest.raises(podcache.LockNotAcquired):
        async with aclient.lock(key, ttl=5, wait=0.2):
            pytest.fail("entered a lock held by someone else")
    await aclient.release_lock(key, token=lease.token)


async def test_async_stolen_lock_is_signalled(redis_sidecar: SidecarProcess,
                                              raw_redis: redis.Redis, key: str) -> None:
    called: list[AsyncHeldLock] = []

    async def on_lost(held: AsyncHeldLock) -> None:
        called.append(held)

    client = podcache.AsyncClient(redis_sidecar.socket_path, timeout=5.0)
    async with client, client.lock(key, ttl=0.6, on_lost=on_lost) as held:
        assert steal(raw_redis, held.token) == 1
        reason = await asyncio.wait_for(held.wait_lost(), timeout=2.0)
        assert "refused" in reason
        assert called == [held]
        with pytest.raises(podcache.LockLost):
            held.check()
