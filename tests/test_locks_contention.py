"""Mutual exclusion across OS processes, on a real Redis.

Aspects tested:
- 4 processes x 250 contended acquisitions of one lock, each doing a deliberately
  non-atomic read-modify-write (GET, then SET value + 1) of a Redis counter under
  the lock: the final count is exactly 1000 and every intermediate value was seen
  exactly once (no two holders at once)
- fences are strictly increasing in acquisition order (the order is the counter
  value read under the lock)
- the processes really contended (blocking acquires waited, and were woken)
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import queue
import time
from typing import Any

import redis
import redis.asyncio
from prometheus_client import CollectorRegistry

from podcache.locks import RedisLocks

PROCESSES = 4
ROUNDS = 250
LOCK = "contended"
COUNTER = "contention:counter"


async def _work(url: str, rounds: int, index: int) -> dict[str, Any]:
    client = redis.asyncio.Redis.from_url(url)
    registry = CollectorRegistry()
    locks = RedisLocks(client, key_prefix="contention:", registry=registry, namespace="w",
                       operation_timeout=2.0)
    records: list[tuple[int, int, int]] = []
    try:
        for _ in range(rounds):
            lease = await locks.acquire(LOCK, ttl=10, wait=60)
            assert lease is not None, "a blocking acquire gave up"
            value = int(await client.get(COUNTER) or 0)  # read ...
            await client.set(COUNTER, value + 1)  # ... then write: racy without the lock
            records.append((value, lease.fence, index))
            assert await locks.release(LOCK, lease.token), "lost the lock while holding it"
    finally:
        await locks.stop()
        await client.aclose()
    waits = registry.get_sample_value("w_lock_contention_wait_seconds_count") or 0.0
    return {"records": records, "waits": waits}


def _worker(url: str, rounds: int, index: int, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)  # start together, so they contend from the first round
    try:
        results.put(asyncio.run(_work(url, rounds, index)))
    except BaseException as exc:
        results.put({"error": repr(exc)})


def test_four_processes_increment_exactly_under_the_lock(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(redis_url, ROUNDS, i, barrier, results))
               for i in range(PROCESSES)]
    for worker in workers:
        worker.start()
    outcomes = []
    try:
        deadline = time.monotonic() + 90
        while len(outcomes) < PROCESSES:
            try:
                outcomes.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"only {len(outcomes)} of {PROCESSES} workers finished") from None
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()

    errors = [o["error"] for o in outcomes if "error" in o]
    assert not errors, errors
    with redis.Redis.from_url(redis_url) as client:
        assert int(client.get(COUNTER)) == PROCESSES * ROUNDS

    records = sorted(itertools.chain.from_iterable(o["records"] for o in outcomes))
    assert [value for value, _, _ in records] == list(range(PROCESSES * ROUNDS))
    fences = [fence for _, fence, _ in records]
    assert all(a < b for a, b in itertools.pairwise(fences)), "fences out of acquisition order"
    assert sum(o["waits"] for o in outcomes) > 0, "the processes never contended"
    handovers = sum(a[2] != b[2] for a, b in itertools.pairwise(records))
    print(f"handovers between processes: {handovers}")
    assert handovers >= PROCESSES - 1  # the lock really passed between processes
