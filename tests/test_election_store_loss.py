"""Leader election when Redis loses its leases (FLUSHALL), on a real redis-server.

Aspects tested:
- two electors, FLUSHALL right after the leader renewed, the follower quicker to
  campaign than the leader to renew: sampled every ~2 ms, never two ``is_leader`` at
  once, and the follower leads after waiting out one lease duration
- a lone leader whose lease was flushed waits a lease out before leading again
- stopped while waiting: the held lease is resigned, no on_revoked for a leadership
  never claimed
- a first election on an empty Redis is led at once (no wait: nothing can be lost)
- a campaign whose reply was lost reports the fresh counter on its idempotent retry
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from prometheus_client import CollectorRegistry

from podcache.election import Elector, RedisLeaseStore
from tests.redis_server import RedisServer

LEASE = 1.0
TIMINGS = {"lease_duration": LEASE, "renew_deadline": 0.8}


async def until(condition: Any, *, within: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


class Renewals:
    """Wraps a store's renew so the test can act right after a successful renewal."""

    def __init__(self, store: RedisLeaseStore) -> None:
        self.done = asyncio.Event()
        self._renew = store.renew
        store.renew = self._wrapped  # type: ignore[method-assign]

    async def _wrapped(self, *, nonce: str, duration: float) -> int | None:
        term = await self._renew(nonce=nonce, duration=duration)
        if term is not None:
            self.done.set()
        return term


@contextlib.asynccontextmanager
async def electors(url: str) -> AsyncIterator[tuple[redis.asyncio.Redis, list[Elector]]]:
    clients: list[redis.asyncio.Redis] = []
    made: list[Elector] = []

    def make(identity: str, retry: float) -> Elector:
        client = redis.asyncio.Redis.from_url(url)
        clients.append(client)
        store = RedisLeaseStore(client, name="flushed", operation_timeout=0.3)
        elector = Elector(store, identity=identity, retry_period=retry, **TIMINGS,
                          registry=CollectorRegistry(), namespace="t")
        made.append(elector)
        return elector

    # The leader renews every 300 ms; the follower campaigns every 50 ms, so after a
    # FLUSHALL it finds the lease vacant well before the leader learns it is gone.
    make("a", 0.3)
    make("b", 0.05)
    admin = redis.asyncio.Redis.from_url(url)
    try:
        yield admin, made
    finally:
        for elector in made:
            await elector.stop()
        for client in [*clients, admin]:
            await client.aclose()


async def sample_leaders(found: list[str], seconds: float, elector_list: list[Elector]) -> None:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        leaders = [e.identity for e in elector_list if e.is_leader]
        if len(leaders) > 1:
            found.append(f"{time.monotonic() - ends + seconds:.3f}s: {leaders}")
        await asyncio.sleep(0.002)


async def test_flushall_never_two_leaders(redis_server: RedisServer) -> None:
    async with electors(redis_server.url) as (admin, (a, b)):
        renewals = Renewals(a._store)  # type: ignore[arg-type]
        await a.start()
        await until(lambda: a.is_leader, within=1)
        await b.start()
        await until(lambda: b.holder == "a", within=1)
        renewals.done.clear()
        await asyncio.wait_for(renewals.done.wait(), timeout=1)
        flushed = time.monotonic()
        await admin.flushall()

        overlaps: list[str] = []
        await sample_leaders(overlaps, LEASE + 0.5, [a, b])
        assert overlaps == [], f"two leaders after FLUSHALL: {overlaps[:5]}"
        leader = next(e for e in (a, b) if e.is_leader)
        # whoever took the flushed lease waited one lease duration before leading
        assert leader.state.leader
        assert leader.term > 0
        assert time.monotonic() - flushed >= LEASE


async def test_lone_leader_waits_out_its_flushed_lease(redis_server: RedisServer) -> None:
    async with electors(redis_server.url) as (admin, (a, _)):
        elected: list[float] = []
        a._on_elected = lambda: elected.append(time.monotonic())
        await a.start()
        await until(lambda: a.is_leader, within=1)
        await admin.flushall()
        flushed = time.monotonic()
        await until(lambda: not a.is_leader, within=1)  # its renewal found the lease gone
        assert a.holder in (None, "a")
        await until(lambda: a.is_leader, within=LEASE + 1)
        assert elected[-1] - flushed >= LEASE
        assert len(elected) == 2


async def test_first_election_is_led_at_once(redis_server: RedisServer) -> None:
    async with electors(redis_server.url) as (_, (a, _)):
        await a.start()
        took = await until(lambda: a.is_leader, within=LEASE)
        assert took < LEASE / 2


async def test_lost_campaign_reply_still_reports_the_fresh_counter(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        store = RedisLeaseStore(client, name="retried")
        won, first = await store.try_acquire(identity="a", nonce="n1", duration=5)
        assert won
        assert first.term_restarted == "absent"
        won, again = await store.try_acquire(identity="a", nonce="n1", duration=5)
        assert won
        assert again.term == first.term
        assert again.term_restarted == "absent"
        await store.resign(nonce="n1")
        won, next_lease = await store.try_acquire(identity="b", nonce="n2", duration=5)
        assert won
        assert next_lease.term == first.term + 1
        assert next_lease.term_restarted == ""
    finally:
        await client.aclose()


async def test_stop_while_waiting_resigns_without_callbacks(redis_server: RedisServer) -> None:
    async with electors(redis_server.url) as (admin, (a, _)):
        revoked: list[float] = []
        a._on_revoked = lambda: revoked.append(time.monotonic())
        await a.start()
        await until(lambda: a.is_leader, within=1)
        await admin.flushall()
        await until(lambda: not a.is_leader, within=1)
        await until(lambda: a.state.holder == "a", within=1)  # re-won, waiting to claim
        assert not a.state.leader
        assert await admin.exists("podcache:leader:{flushed}") == 1
        await a.stop()
        assert await admin.exists("podcache:leader:{flushed}") == 0
        assert len(revoked) == 1  # the flushed leadership only
        assert not a.is_leader
