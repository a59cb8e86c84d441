"""Failover figures: how long podcache fails, how many calls fail, when it recovers.

Why: Sentinel and Cluster promise automatic failover; what a user feels is the
window in which calls fail and the time until they succeed again, with the
sidecar's client following the new primary by itself. These figures are what to
quote (they depend on the topology's detection timeouts, set short here:
sentinel ``down-after-milliseconds 1000``, cluster ``cluster-node-timeout 1000``).

What it does, on real processes on loopback (``tests/redis_topologies.py``), each
scenario ``--runs`` times under a steady load of set/get/lock rounds through the
``Cache`` API (``tests/topologies/probe.py``):

- sentinel: SIGKILL the primary (1 primary, 1 replica, 3 sentinels);
- cluster: SIGKILL one of 3 primaries (each with a replica);
- cluster: migrate a slot under load (MOVED/ASK followed);
- election on sentinel: SIGKILL the primary under a leader; time until a leader
  is known again (when ``podcache.election`` is available).

Printed per run: failover window (first to last failed call), operations failed,
recovery time (fault to first success after the last failure), and whether lock
fences stayed strictly increasing. Takes about 15 s per run.

    .venv/bin/python bench/bench_failover.py [--runs 1] [--only sentinel,cluster,migration,election]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.* when run as a script

from tests.redis_topologies import ClusterTopology, SentinelTopology  # noqa: E402
from tests.topologies.probe import Figures, LoadProbe  # noqa: E402

from podcache.cache import new_cache  # noqa: E402
from podcache.config import Config  # noqa: E402
from podcache.locks.redis import lock_keys  # noqa: E402

TIMEOUTS = {"operation": "500ms", "connect": "300ms"}
"""Short enough that a dead primary is noticed quickly, long enough for loopback."""

SETTLE = 1.5
"""Seconds of load kept after the topology healed, to show calls succeed again."""


async def _under_load(config: Config, fault: object, label: str) -> tuple[Figures, bool]:
    cache = new_cache(config)
    probe = LoadProbe(cache)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        await asyncio.to_thread(fault)  # type: ignore[arg-type]
        await asyncio.sleep(SETTLE)
    finally:
        probe.stop()
        await task
        await cache.stop()
    figures = probe.figures(fault_at)
    monotonic = probe.fences == sorted(set(probe.fences))
    print(f"  {figures.line(label)}; fences strictly increasing: {monotonic} "
          f"({len(probe.fences)} leases)", flush=True)
    return figures, monotonic


async def sentinel_kill() -> tuple[Figures, bool]:
    with SentinelTopology() as topology:
        config = Config(type="redis", config=topology.config(keyPrefix="b:", timeouts=TIMEOUTS))

        def fault() -> None:
            old = topology.primary_port()
            topology.kill_primary()
            topology.wait_for_failover(old)

        return await _under_load(config, fault, "sentinel primary SIGKILL")


async def cluster_kill() -> tuple[Figures, bool]:
    with ClusterTopology(primaries=3, replicas=1) as topology:
        config = Config(type="redis", config=topology.config(keyPrefix="b:", timeouts=TIMEOUTS))

        def fault() -> None:
            replicas = topology.kill(topology.primary_for_key("b:probe-1"))
            topology.wait_for_failover(replicas)

        return await _under_load(config, fault, "cluster primary SIGKILL")


async def cluster_migration() -> tuple[Figures, bool]:
    with ClusterTopology(primaries=3, replicas=0) as topology:
        config = Config(type="redis", config=topology.config(keyPrefix="b:", timeouts=TIMEOUTS))
        owner, _, _ = lock_keys("b:", "probe-lock")

        def fault() -> None:
            for key in (owner, "b:probe-1", "b:probe-2"):
                slot = int(topology.nodes[0].command("CLUSTER", "KEYSLOT", key))
                source = topology.primary_for_key(key)
                target = next(p for p in topology.primaries() if p.port != source.port)
                topology.migrate_slot(slot, target)

        return await _under_load(config, fault, "cluster slot migration")


async def election_failover() -> tuple[Figures, bool] | None:
    try:
        from podcache import election  # noqa: F401
    except ImportError:
        print("  election: podcache.election not available, skipped")
        return None
    with SentinelTopology() as topology:
        config = Config(type="redis", config=topology.config(keyPrefix="e:", timeouts=TIMEOUTS))
        caches = [new_cache(config) for _ in range(2)]
        electors = [
            cache.elector("bench", identity=f"pod-{i}", lease_duration=2.0,
                          renew_deadline=1.5, retry_period=0.2)
            for i, cache in enumerate(caches)
        ]
        for elector in electors:
            await elector.start()
        try:
            await _wait_for(lambda: any(e.is_leader for e in electors), 10)
            term_before = max(e.term for e in electors)
            old = topology.primary_port()
            fault_at = time.monotonic()
            await asyncio.to_thread(topology.kill_primary)
            lost_at = await _wait_for(lambda: not any(e.is_leader for e in electors), 20)
            elected_at = await _wait_for(lambda: any(e.is_leader for e in electors), 30)
            await asyncio.to_thread(topology.wait_for_failover, old)
            term_after = max(e.term for e in electors if e.is_leader)
        finally:
            for elector in electors:
                await elector.stop()
            for cache in caches:
                await cache.stop()
        print(f"  election on sentinel primary SIGKILL: leader stepped down after "
              f"{lost_at - fault_at:.2f}s, new leader after {elected_at - fault_at:.2f}s, "
              f"term {term_before} -> {term_after} (grew: {term_after > term_before})", flush=True)
        figures = Figures(window=elected_at - lost_at, failed=0, total=0,
                          recovery=elected_at - fault_at)
        return figures, term_after > term_before


async def _wait_for(predicate: object, within: float) -> float:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic()


SCENARIOS = {
    "sentinel": sentinel_kill,
    "cluster": cluster_kill,
    "migration": cluster_migration,
    "election": election_failover,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    options = parser.parse_args()
    # Failed renewals and campaigns during the window are expected here: keep the output to figures.
    logging.getLogger("podcache").setLevel(logging.ERROR)
    for name in options.only.split(","):
        print(f"{name}:", flush=True)
        results = []
        for _ in range(options.runs):
            result = await SCENARIOS[name]()
            if result is not None:
                results.append(result)
        if len(results) > 1:
            windows = [f.window for f, _ in results]
            recoveries = [f.recovery for f, _ in results if f.recovery is not None]
            print(f"  median over {len(results)} runs: window {statistics.median(windows):.2f}s, "
                  f"recovery {statistics.median(recoveries):.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
