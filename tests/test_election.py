"""Leader election on the memory backend and on a real Redis.

Aspects tested (both backends unless marked):
- three electors: exactly one leader at every observed moment, the others agree on
  holder and term
- the leader stops (resigns) -> a new leader within 1 s, also with a long retry period
  (woken by the resignation notice, not by polling); the term grows by one
- the leader is killed without resigning -> a new leader after about the lease duration
  (also with the leader in another OS process killed by SIGKILL, on Redis)
- resign() hands leadership over and campaigns again
- renew deadline: renewals failing (Redis paused; a failing store) make the leader step
  down locally before its lease could pass on, and nobody else leads before that
- a lease lost to someone else is noticed at the next renewal
- callbacks: sync and async, on_elected once per leadership, on_revoked only after
  on_elected; an async on_elected is cancelled when leadership ends
- observation: subscribe() and wait_for_change(), read_state() without start()
- the same identity twice never yields two leaders (leases are owned by a nonce)
- metrics: is_leader, term, transitions, step_downs, renew failures
- bad configuration is a ConfigError naming the field
- Redis: key layout with one hash tag, the term survives resignations, build_elector
  on both real backends, stop() with Redis down returns promptly
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from podcache.config import MemorySettings, RedisSettings
from podcache.election import (
    Elector,
    LeaderState,
    MemoryLeaseStore,
    RedisLeaseStore,
    build_elector,
)
from podcache.election.redis import election_keys
from podcache.errors import BackendUnavailable, ConfigError
from tests.redis_server import RedisServer

NS = "t"
FAST = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.2}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def until(condition: Callable[[], bool], *, within: float, step: float = 0.005) -> float:
    """Wait until ``condition()`` holds; return how long it took; fail after ``within``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(step)
    return time.monotonic() - started


class Factory:
    """Makes electors of one election on one backend, and stops them all at the end."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.election = f"e-{uuid.uuid4().hex[:8]}"
        self.electors: list[Elector] = []
        self.clients: list[redis.asyncio.Redis] = []

    def store(self, *, url: str | None = None, operation_timeout: float = 0.3) -> Any:
        if self.kind == "memory":
            return MemoryLeaseStore(self.election)
        client = redis.asyncio.Redis.from_url(url or self.redis_url)
        self.clients.append(client)
        return RedisLeaseStore(client, name=self.election, key_prefix="app:",
                               operation_timeout=operation_timeout)

    def __call__(self, identity: str, *, store: Any = None, **kwargs: Any) -> Elector:
        options = {**FAST, "registry": CollectorRegistry(), "namespace": NS, **kwargs}
        elector = Elector(store or self.store(), identity=identity, **options)
        self.electors.append(elector)
        return elector

    async def close(self) -> None:
        for elector in self.electors:
            await elector.stop()
        for client in self.clients:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    factory = Factory(request.param, url)
    yield factory
    await factory.close()


@contextlib.asynccontextmanager
async def single_leader_watch(electors: list[Elector]) -> AsyncIterator[list[int]]:
    """Sample the electors every few ms; fail if two ever lead at once."""
    counts: list[int] = []

    async def watch() -> None:
        while True:
            leaders = [e.identity for e in electors if e.is_leader]
            assert len(leaders) <= 1, f"two leaders at once: {leaders}"
            counts.append(len(leaders))
            await asyncio.sleep(0.002)

    task = asyncio.create_task(watch())
    try:
        yield counts
    finally:
        if task.done():
            task.result()  # re-raise the violation
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def leader_of(electors: list[Elector]) -> Elector:
    leaders = [e for e in electors if e.is_leader]
    assert len(leaders) == 1, [e.identity for e in leaders]
    return leaders[0]


async def start_three(make: Factory, **kwargs: Any) -> list[Elector]:
    electors = [make(f"pod-{i}", **kwargs) for i in range(3)]
    for elector in electors:
        await elector.start()
    await until(lambda: any(e.is_leader for e in electors), within=2)
    return electors


# -- three electors ----------------------------------------------------------------------


async def test_three_electors_one_leader_and_agreement(make: Factory) -> None:
    electors = await start_three(make)
    async with single_leader_watch(electors) as counts:
        leader = leader_of(electors)
        await until(lambda: all(e.holder == leader.identity for e in electors), within=1)
        assert {e.term for e in electors} == {leader.term}
        await asyncio.sleep(1.5)  # several lease durations of renewals: nobody else takes over
        assert leader_of(electors) is leader
    assert counts
    assert min(counts[len(counts) // 2:]) == 1  # settled: always exactly one


async def test_leader_stop_hands_over_within_a_second(make: Factory) -> None:
    electors = await start_three(make)
    async with single_leader_watch(electors):
        leader = leader_of(electors)
        term = leader.term
        started = time.monotonic()
        await leader.stop()
        assert not leader.is_leader
        rest = [e for e in electors if e is not leader]
        took = await until(lambda: any(e.is_leader for e in rest), within=1)
        assert time.monotonic() - started < 1.0, took
        successor = leader_of(rest)
        assert successor.term == term + 1
        await until(lambda: all(e.holder == successor.identity for e in rest), within=1)


async def test_resignation_notice_beats_a_long_retry_period(make: Factory) -> None:
    slow = {"lease_duration": 30.0, "renew_deadline": 20.0, "retry_period": 10.0}
    electors = await start_three(make, **slow)
    leader = leader_of(electors)
    await asyncio.sleep(0.1)  # the others are parked in their (10 s) wait
    started = time.monotonic()
    await leader.stop()
    rest = [e for e in electors if e is not leader]
    await until(lambda: any(e.is_leader for e in rest), within=1)
    assert time.monotonic() - started < 0.5  # a notice, not the 10 s retry period
    successor = leader_of(rest)
    # The third elector learns the new holder from the "elected" notice too.
    third = next(e for e in rest if e is not successor)
    await until(lambda: third.holder == successor.identity, within=0.5)


async def test_killed_leader_is_replaced_after_the_lease(make: Factory) -> None:
    electors = await start_three(make)
    async with single_leader_watch(electors):
        leader = leader_of(electors)
        term = leader.term
        await leader.stop(resign=False)  # its lease stays behind, as after a crash
        started = time.monotonic()
        rest = [e for e in electors if e is not leader]
        await until(lambda: any(e.is_leader for e in rest), within=2.5)
        took = time.monotonic() - started
        # The lease had between lease_duration - retry_period and lease_duration to run.
        assert 0.6 <= took <= 1.5, took
        assert leader_of(rest).term == term + 1


async def test_resign_hands_over_and_campaigns_again(make: Factory) -> None:
    a, b = make("a"), make("b")
    await a.start()
    await until(lambda: a.is_leader, within=1)
    first = a.term  # 1 in memory; on Redis a fresh counter starts from the clock
    await b.start()
    await until(lambda: b.holder == "a", within=1)
    assert await a.resign() is True
    assert not a.is_leader
    await until(lambda: b.is_leader, within=0.5)
    assert b.term == first + 1
    assert await a.resign() is False  # not leading
    await b.stop()
    await until(lambda: a.is_leader, within=1)  # a kept campaigning
    assert a.term == first + 2


async def test_term_grows_with_every_change_of_leader(make: Factory) -> None:
    electors = [make(f"pod-{i}") for i in range(3)]
    terms = []
    for elector in electors:
        await elector.start()
    for _ in range(3):
        await until(lambda: any(e.is_leader for e in electors), within=2)
        leader = leader_of(electors)
        terms.append(leader.term)
        await asyncio.sleep(0.5)  # renewals happen, the term stays
        assert leader.term == terms[-1]
        await leader.stop()
        electors.remove(leader)
        if not electors:
            break
    assert terms == [terms[0], terms[0] + 1, terms[0] + 2]


async def test_same_identity_twice_never_leads_twice(make: Factory) -> None:
    twins = [make("pod-a"), make("pod-a")]
    for elector in twins:
        await elector.start()
    async with single_leader_watch(twins):
        await until(lambda: any(e.is_leader for e in twins), within=1)
        await asyncio.sleep(0.5)


# -- renew deadline and lost leases ------------------------------------------------------


class BreakableStore(MemoryLeaseStore):
    """A real in-process lease that this one elector can be cut off from (a partition)."""

    broken = False

    def _check(self) -> None:
        if self.broken:
            raise BackendUnavailable("simulated partition")

    async def renew(self, *, nonce: str, duration: float) -> int | None:
        self._check()
        return await super().renew(nonce=nonce, duration=duration)

    async def try_acquire(self, *, identity: str, nonce: str, duration: float) -> Any:
        self._check()
        return await super().try_acquire(identity=identity, nonce=nonce, duration=duration)

    async def resign(self, *, nonce: str) -> bool:
        self._check()
        return await super().resign(nonce=nonce)


async def test_renew_deadline_steps_down_before_the_lease_passes_on() -> None:
    election = f"e-{uuid.uuid4().hex[:8]}"
    events: list[tuple[str, float]] = []
    store = BreakableStore(election)
    registry = CollectorRegistry()
    a = Elector(store, identity="a", registry=registry, namespace=NS,
                on_revoked=lambda: events.append(("a revoked", time.monotonic())), **FAST)
    b = Elector(MemoryLeaseStore(election), identity="b", namespace=NS,
                on_elected=lambda: events.append(("b elected", time.monotonic())), **FAST)
    try:
        await a.start()
        await until(lambda: a.is_leader, within=1)
        await b.start()
        store.broken = True
        broke_at = time.monotonic()
        await until(lambda: not a.is_leader, within=1)
        stepped = time.monotonic() - broke_at
        assert 0.35 <= stepped <= 0.7, stepped  # renew_deadline after the last good renewal
        await until(lambda: b.is_leader, within=1.5)
        assert [name for name, _ in events] == ["a revoked", "b elected"]
        assert sample(registry, "t_leader_step_downs_total", election=election,
                      reason="deadline") == 1
        assert sample(registry, "t_leader_renew_failures_total", election=election) >= 2
    finally:
        await a.stop()
        await b.stop()


async def test_redis_paused_leader_steps_down_before_its_lease_expires(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    name = "paused"
    revoked: list[float] = []
    store = RedisLeaseStore(client, name=name, operation_timeout=0.3)
    elector = Elector(store, identity="a", namespace=NS,
                      on_revoked=lambda: revoked.append(time.monotonic()), **FAST)
    try:
        await elector.start()
        await until(lambda: elector.is_leader, within=1)
        await asyncio.sleep(0.3)  # a few renewals
        redis_server.pause()
        paused_at = time.monotonic()
        await until(lambda: not elector.is_leader, within=1.5)
        stepped = time.monotonic() - paused_at
        # The last good renewal was at most retry_period before the pause; the lease it
        # set lasts lease_duration (1 s) from then: stepping down at <= 0.6 s is in time.
        assert 0.35 <= stepped <= 0.75, stepped
        # is_leader turns False at the renew deadline by the clock; on_revoked comes when
        # the campaign loop sees the renewal fail, a moment later on a loaded machine. It
        # must still come before the lease can expire: at the earliest 1 s after a
        # renewal at most retry_period (0.2 s) before the pause.
        await until(lambda: bool(revoked), within=0.5)
        assert revoked[0] - paused_at < 0.8, revoked[0] - paused_at
        term = elector.term
        redis_server.resume()
        await until(lambda: elector.is_leader, within=3)  # alone: re-elected, new term
        assert elector.term > term
    finally:
        with contextlib.suppress(Exception):
            redis_server.resume()
        await elector.stop()
        await client.aclose()


async def test_redis_lost_lease_is_noticed_at_the_next_renewal(
    redis_url: str, redis_client: redis.asyncio.Redis,
) -> None:
    store = RedisLeaseStore(redis_client, name="lost", key_prefix="app:")
    registry = CollectorRegistry()
    a = Elector(store, identity="a", registry=registry, namespace=NS, **FAST)
    other = redis.asyncio.Redis.from_url(redis_url)
    b = Elector(RedisLeaseStore(other, name="lost", key_prefix="app:"), identity="b",
                namespace=NS, **FAST)
    try:
        await a.start()
        await until(lambda: a.is_leader, within=1)
        await b.start()
        lease_key, _, _ = election_keys("app:", "lost")
        await redis_client.delete(lease_key)  # an operator wiped it; b takes it next round
        await until(lambda: b.is_leader, within=1)
        await until(lambda: not a.is_leader, within=0.5)
        assert sample(registry, "t_leader_step_downs_total", election="lost", reason="lost") == 1
    finally:
        await a.stop()
        await b.stop()
        await other.aclose()


# -- callbacks ---------------------------------------------------------------------------


async def test_callbacks_sync_and_async(make: Factory) -> None:
    calls: list[str] = []
    leading = asyncio.Event()
    cancelled = asyncio.Event()

    async def lead() -> None:  # runs for the whole leadership
        calls.append("a elected")
        leading.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def revoked() -> None:
        await asyncio.sleep(0.01)
        calls.append("a revoked")

    a = make("a", on_elected=lead, on_revoked=revoked)
    b = make("b", on_elected=lambda: calls.append("b elected"),
             on_revoked=lambda: calls.append("b revoked"))
    await a.start()
    await asyncio.wait_for(leading.wait(), 1)
    await b.start()
    await asyncio.sleep(0.3)
    assert calls == ["a elected"]  # b never led: no on_revoked for it
    await a.stop()
    assert cancelled.is_set()  # leadership over: the long-running on_elected is cancelled
    # stop() let a's work end (on_elected cancelled, on_revoked done) before resigning.
    assert calls[:2] == ["a elected", "a revoked"]
    await until(lambda: "b elected" in calls, within=1)
    await b.stop()
    assert calls == ["a elected", "a revoked", "b elected", "b revoked"]


async def test_a_failing_callback_does_not_stop_the_elector(make: Factory) -> None:
    def explode() -> None:
        raise RuntimeError("boom")

    a = make("a", on_elected=explode)
    await a.start()
    await until(lambda: a.is_leader, within=1)
    await asyncio.sleep(0.5)
    assert a.is_leader  # still renewing


# -- observation -------------------------------------------------------------------------


async def test_subscribe_streams_changes_and_ends_on_stop(make: Factory) -> None:
    a = make("a")
    seen: list[LeaderState] = []

    async def consume() -> None:
        async for state in a.subscribe():
            seen.append(state)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    await a.start()
    await until(lambda: a.is_leader, within=1)
    await until(lambda: bool(seen) and seen[-1].leader, within=0.5)
    await a.stop()
    await asyncio.wait_for(consumer, 1)  # the stream ends with the elector
    assert seen[0] == LeaderState(leader=False, holder=None, term=0)
    assert LeaderState(leader=True, holder="a", term=a.term) in seen
    assert seen[-1].leader is False


async def test_wait_for_change(make: Factory) -> None:
    a = make("a")
    version = a.version
    await a.start()
    new_version, _state = await asyncio.wait_for(a.wait_for_change(version), 1)
    assert new_version > version
    await until(lambda: a.is_leader, within=1)
    assert a.state.leader


async def test_read_state_without_starting(make: Factory) -> None:
    a = make("a")
    observer = make("observer")
    assert await observer.read_state() == LeaderState(leader=False, holder=None, term=0)
    await a.start()
    await until(lambda: a.is_leader, within=1)
    assert await observer.read_state() == LeaderState(leader=False, holder="a", term=a.term)
    assert (await a.read_state()).leader is True
    await a.stop()
    state = await observer.read_state()
    assert state.holder is None
    assert state.term == a.term  # vacant: the last term stays


# -- metrics and configuration -----------------------------------------------------------


async def test_metrics(make: Factory) -> None:
    registry = CollectorRegistry()
    a = make("a", registry=registry)
    election = make.election
    assert sample(registry, "t_leader_is_leader", election=election) == 0
    await a.start()
    await until(lambda: a.is_leader, within=1)
    assert sample(registry, "t_leader_is_leader", election=election) == 1
    assert sample(registry, "t_leader_term", election=election) == a.term
    await a.stop()
    assert sample(registry, "t_leader_is_leader", election=election) == 0
    assert sample(registry, "t_leader_transitions_total", election=election) == 2
    assert sample(registry, "t_leader_step_downs_total", election=election,
                  reason="stopped") == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lease_duration": 1, "renew_deadline": 1, "retry_period": 0.2}, "renew_deadline"),
        ({"lease_duration": 1, "renew_deadline": 0.5, "retry_period": 0.5}, "retry_period"),
        ({"lease_duration": 0, "renew_deadline": 0.5, "retry_period": 0.1}, "lease_duration"),
        ({"lease_duration": float("nan"), "renew_deadline": 1, "retry_period": 0.1},
         "lease_duration"),
        ({"lease_duration": "15s", "renew_deadline": 1, "retry_period": 0.1}, "lease_duration"),
        ({"identity": ""}, "identity"),
        ({"identity": "x" * 1025}, "identity"),
        ({"on_elected": "not callable"}, "on_elected"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], field: str) -> None:
    options: dict[str, Any] = {"identity": "a", **FAST, **kwargs}
    with pytest.raises(ConfigError) as info:
        Elector(MemoryLeaseStore("cfg"), **options)
    assert info.value.field == field


def test_bad_election_name() -> None:
    with pytest.raises(ConfigError) as info:
        Elector(MemoryLeaseStore(""), identity="a")
    assert info.value.field == "name"


# -- build_elector and redis specifics ---------------------------------------------------


async def test_build_elector_on_both_backends(redis_url: str) -> None:
    from podcache.backends.memory import MemoryBackend
    from podcache.backends.redis import RedisBackend

    backends = [MemoryBackend(MemorySettings()),
                RedisBackend(RedisSettings(url=redis_url, key_prefix="tenant:"))]
    try:
        for backend, kind in zip(backends, ("memory", "redis"), strict=True):
            name = f"built-{uuid.uuid4().hex[:6]}"
            electors = [build_elector(backend, name=name, identity=f"{kind}-{i}",
                                      registry=CollectorRegistry(), namespace=NS, **FAST)
                        for i in range(2)]
            for elector in electors:
                await elector.start()
            await until(lambda es=electors: any(e.is_leader for e in es), within=1)
            leader_of(electors)
            for elector in electors:
                await elector.stop()
        redis_backend = backends[1]
        assert await redis_backend.client.exists(f"tenant:podcache:leader:{{{name}}}:term") == 1
    finally:
        for backend in backends:
            await backend.stop()


@pytest.mark.parametrize("name", ["scheduler", "a{b}", "ünï"])
async def test_redis_key_layout(redis_client: redis.asyncio.Redis, name: str) -> None:
    store = RedisLeaseStore(redis_client, name=name, key_prefix="app:")
    elector = Elector(store, identity="a", namespace=NS, **FAST)
    try:
        await elector.start()
        await until(lambda: elector.is_leader, within=1)
        lease_key, term_key, _channel = election_keys("app:", name)
        assert key_slot(lease_key.encode()) == key_slot(term_key.encode())
        assert await redis_client.hget(lease_key, "holder") == b"a"
        assert 0 < await redis_client.pttl(lease_key) <= 1000
        assert int(await redis_client.hget(term_key, "n")) == elector.term  # hash {n, epoch}
        assert await redis_client.ttl(term_key) == -1  # the term counter never expires
        term = elector.term
    finally:
        await elector.stop()
    assert await redis_client.exists(lease_key) == 0
    assert int(await redis_client.hget(term_key, "n")) == term


async def test_redis_stop_with_redis_down_returns_promptly(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_connect_timeout=0.3)
    revoked: list[bool] = []
    elector = Elector(RedisLeaseStore(client, name="down", operation_timeout=0.3),
                      identity="a", namespace=NS, on_revoked=lambda: revoked.append(True), **FAST)
    try:
        await elector.start()
        await until(lambda: elector.is_leader, within=1)
        redis_server.stop()
        started = time.monotonic()
        await elector.stop()
        assert time.monotonic() - started < 1.5
        assert revoked == [True]
        assert not elector.is_leader
    finally:
        await client.aclose()


async def test_redis_follower_survives_an_outage(redis_server: RedisServer) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_server.url, socket_connect_timeout=0.3)
               for _ in range(2)]
    electors = [Elector(RedisLeaseStore(c, name="outage", operation_timeout=0.3),
                        identity=f"pod-{i}", namespace=NS, **FAST)
                for i, c in enumerate(clients)]
    try:
        for elector in electors:
            await elector.start()
        await until(lambda: any(e.is_leader for e in electors), within=1)
        redis_server.stop()
        await until(lambda: not any(e.is_leader for e in electors), within=1.5)
        redis_server.start()  # empty: no lease, term counter gone
        await until(lambda: any(e.is_leader for e in electors), within=3)
        leader_of(electors)
    finally:
        for elector in electors:
            await elector.stop()
        for client in clients:
            await client.aclose()


def _lead_until_killed(url: str, elected: Any) -> None:
    async def lead() -> None:
        client = redis.asyncio.Redis.from_url(url)
        elector = Elector(RedisLeaseStore(client, name="killed"), identity="doomed",
                          on_elected=elected.set, namespace=NS, **FAST)
        await elector.start()
        await asyncio.Event().wait()  # until SIGKILL

    asyncio.run(lead())


async def test_redis_leader_process_killed(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    elected = ctx.Event()
    doomed = ctx.Process(target=_lead_until_killed, args=(redis_url, elected))
    doomed.start()
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    followers = [Elector(RedisLeaseStore(c, name="killed"), identity=f"pod-{i}", namespace=NS,
                         **FAST) for i, c in enumerate(clients)]
    try:
        assert await asyncio.to_thread(elected.wait, 30), "the child never led"
        for follower in followers:
            await follower.start()
        await until(lambda: all(f.holder == "doomed" for f in followers), within=1)
        doomed_term = followers[0].term
        await asyncio.sleep(0.3)
        doomed.kill()
        killed_at = time.monotonic()
        await until(lambda: any(f.is_leader for f in followers), within=2.5)
        took = time.monotonic() - killed_at
        # Its last renewal was at most retry_period before the kill; the lease lasts 1 s.
        assert 0.7 <= took <= 1.5, took
        assert leader_of(followers).term == doomed_term + 1
    finally:
        doomed.kill()
        doomed.join(10)
        for follower in followers:
            await follower.stop()
        for client in clients:
            await client.aclose()
