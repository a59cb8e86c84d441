"""Leader election through failovers and network faults, on real Redis processes.

Aspects:
- Sentinel, primary killed under three campaigning electors: at no sampled moment do
  two electors lead with the same term; a term is never held by two identities; a
  leader exists again after the failover and its term is larger;
- Sentinel failover that lost two changes of leader (replica cut off): the promoted
  replica's counter is behind, yet the next term is above every lost one;
- Sentinel, primary paused (SIGSTOP) longer than the lease, so the sentinels fail
  over: the leader steps down within its renew deadline, before anyone else is
  elected; the new leader's term is larger;
- a single Redis paused longer than the lease: the leader steps down before another
  is elected;
- Cluster: electors elect one leader and a successor takes over on resign.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

from podcache.cache import Cache, new_cache
from podcache.config import Config
from podcache.election.redis import election_keys
from tests.redis_server import RedisServer
from tests.redis_topologies import ClusterTopology, SentinelTopology

LEASE, DEADLINE, RETRY = 2.0, 1.5, 0.2
"""Short election timings so faults play out in seconds (client-go's ratios)."""

TIMEOUTS = {"operation": "300ms", "connect": "300ms"}


def _config(topology: SentinelTopology | ClusterTopology) -> Config:
    return Config(type="redis", config=topology.config(keyPrefix="e:", timeouts=TIMEOUTS))


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float
    leaders: tuple[tuple[str, int], ...]
    """(identity, term) of every elector that believed it led at that moment."""


class Campaign:
    """Electors on their own caches (like pods), sampled every few milliseconds."""

    def __init__(self, config: Config, *, count: int = 3, name: str = "scheduler") -> None:
        self.caches: list[Cache] = [new_cache(config) for _ in range(count)]
        self.electors = [
            cache.elector(name, identity=f"pod-{i}", lease_duration=LEASE,
                          renew_deadline=DEADLINE, retry_period=RETRY)
            for i, cache in enumerate(self.caches)
        ]
        self.samples: list[Sample] = []
        self._sampler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Campaign:
        for elector in self.electors:
            await elector.start()
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._sampler is not None
        self._sampler.cancel()
        for elector in self.electors:
            await elector.stop()
        for cache in self.caches:
            await cache.stop()

    async def _sample(self) -> None:
        while True:
            leaders = tuple((e.identity, e.term) for e in self.electors if e.is_leader)
            self.samples.append(Sample(time.monotonic(), leaders))
            await asyncio.sleep(0.01)

    def leaders(self) -> list[Any]:
        return [e for e in self.electors if e.is_leader]

    async def until(self, predicate: Callable[[], bool], *, within: float, what: str) -> float:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for {what}")
            await asyncio.sleep(0.01)
        return time.monotonic()

    def check_history(self) -> None:
        """No two leaders with one term at any sample; no term held by two identities."""
        holders: dict[int, str] = {}
        for sample in self.samples:
            terms = [term for _, term in sample.leaders]
            assert len(terms) == len(set(terms)), f"two leaders with one term: {sample}"
            for identity, term in sample.leaders:
                assert holders.setdefault(term, identity) == identity, (
                    f"term {term} held by {holders[term]} and {identity}")
        ordered = [term for sample in self.samples for _, term in sample.leaders]
        changes = [t for i, t in enumerate(ordered) if i == 0 or t != ordered[i - 1]]
        assert changes == sorted(changes), f"a leader term went backwards: {changes}"


@pytest.mark.slow
async def test_primary_killed_never_two_leaders_with_one_term(
    sentinel_topology: SentinelTopology,
) -> None:
    config = _config(sentinel_topology)
    async with Campaign(config) as campaign:
        await campaign.until(lambda: len(campaign.leaders()) == 1, within=10, what="a leader")
        before = campaign.leaders()[0].term
        old = sentinel_topology.primary_port()
        await asyncio.to_thread(sentinel_topology.kill_primary)
        await asyncio.to_thread(sentinel_topology.wait_for_failover, old)
        await campaign.until(
            lambda: len(campaign.leaders()) == 1 and campaign.leaders()[0].term > before,
            within=15, what="a leader with a larger term after the failover",
        )
        await asyncio.sleep(0.5)
    campaign.check_history()


@pytest.mark.slow
async def test_terms_never_reused_after_a_failover_that_lost_writes(
    sentinel_topology: SentinelTopology,
) -> None:
    async with Campaign(_config(sentinel_topology), count=2) as campaign:
        await campaign.until(lambda: len(campaign.leaders()) == 1, within=10, what="a leader")
        kept = campaign.leaders()[0].term
        replica, primary = sentinel_topology.replicas()[0], sentinel_topology.primary()
        # Cut the replica off (frozen, link closed): the next changes of leader exist on
        # the primary only and are lost when it dies.
        replica.pause()
        primary.command("CLIENT", "KILL", "TYPE", "replica")
        lost = []
        for _ in range(2):
            leader = campaign.leaders()[0]
            assert await leader.resign() is True
            await campaign.until(
                lambda old=leader: [e for e in campaign.leaders() if e is not old] != [],
                within=5, what="a successor")
            lost.append(campaign.leaders()[0].term)
        assert lost == [kept + 1, kept + 2]
        sentinel_topology.kill_primary()
        replica.resume()
        # Read the survivor before Sentinel promotes it (that takes down-after-milliseconds):
        # once it is primary, an elector may advance the counter before the test looks.
        _, term_key, _ = election_keys("e:", "scheduler")
        assert int(replica.command("HGET", term_key, "n")) == kept  # it never got the lost terms
        await asyncio.to_thread(sentinel_topology.wait_for_failover, primary.port)
        await campaign.until(
            lambda: len(campaign.leaders()) == 1 and campaign.leaders()[0].term > max(lost),
            within=15, what="a leader with a term above the lost ones")
        await asyncio.sleep(0.3)
    campaign.check_history()


@pytest.mark.slow
async def test_primary_paused_past_the_lease_leader_steps_down_first(
    sentinel_topology: SentinelTopology,
) -> None:
    config = _config(sentinel_topology)
    async with Campaign(config) as campaign:
        await campaign.until(lambda: len(campaign.leaders()) == 1, within=10, what="a leader")
        leader = campaign.leaders()[0]
        before = leader.term
        primary = sentinel_topology.primary()
        primary.pause()
        try:
            paused_at = time.monotonic()
            stepped_down = await campaign.until(lambda: not leader.is_leader, within=5,
                                                what="the leader to step down")
            assert stepped_down - paused_at <= DEADLINE + RETRY + 0.3
            assert not campaign.leaders(), "someone was elected while the primary was paused"
            await asyncio.to_thread(sentinel_topology.wait_for_failover, primary.port)
            elected = await campaign.until(lambda: len(campaign.leaders()) == 1, within=15,
                                           what="a leader on the new primary")
            assert elected > stepped_down
            assert campaign.leaders()[0].term > before
        finally:
            primary.resume()
        await asyncio.sleep(0.5)
    campaign.check_history()


@pytest.mark.slow
async def test_single_redis_paused_past_the_lease(redis_server: RedisServer) -> None:
    config = Config(type="redis", config={"url": redis_server.url, "keyPrefix": "e:",
                                          "timeouts": TIMEOUTS})
    async with Campaign(config, count=2) as campaign:
        await campaign.until(lambda: len(campaign.leaders()) == 1, within=5, what="a leader")
        leader = campaign.leaders()[0]
        before = leader.term
        redis_server.pause()
        try:
            paused_at = time.monotonic()
            stepped_down = await campaign.until(lambda: not leader.is_leader, within=5,
                                                what="the leader to step down")
            assert stepped_down - paused_at <= DEADLINE + RETRY + 0.3
            await asyncio.sleep(LEASE + 0.5 - (time.monotonic() - paused_at))
            assert not campaign.leaders()
        finally:
            redis_server.resume()
        await campaign.until(lambda: len(campaign.leaders()) == 1, within=10,
                             what="a leader once Redis answers")
        assert campaign.leaders()[0].term > before
    campaign.check_history()


async def test_election_on_cluster(cluster_topology: ClusterTopology) -> None:
    config = _config(cluster_topology)
    async with Campaign(config) as campaign:
        await campaign.until(lambda: len(campaign.leaders()) == 1, within=10, what="a leader")
        leader = campaign.leaders()[0]
        before = leader.term
        await leader.stop()
        await campaign.until(
            lambda: len(campaign.leaders()) == 1 and campaign.leaders()[0] is not leader,
            within=5, what="a successor",
        )
        assert campaign.leaders()[0].term == before + 1
    campaign.check_history()
