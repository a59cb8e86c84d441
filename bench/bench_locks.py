"""Lock throughput and latency: memory locks, Redis locks, and redis-py's own ``Lock``.

Why: acquiring and releasing a podcache lock on Redis is one Lua script each way
(SET NX PX + INCR of the fence; token-checked DEL + release signal). The figures to
quote are the ratio to redis-py's ``Lock`` on the same Redis in the same run, and the
hand-over latency: how long a blocked waiter takes to get a lock after its holder
releases it (podcache wakes waiters through a signal list; redis-py polls every
``sleep`` = 0.1 s by default).

Phases per target:
- sequential: acquire + release of one name, one at a time: p50/p99 of each call and
  cycles/s;
- concurrent: ``--concurrency`` tasks cycling over their own names: cycles/s;
- hand-over: a holder releases while a waiter is blocked; p50/p99 from the release
  call to the waiter holding the lock.

Redis is a ``redis-server`` started here on a free port (``tests/redis_server.py``),
or ``REDIS_URL``. The default run takes about 20 s.

    .venv/bin/python bench/bench_locks.py [--ops 2000] [--handovers 40] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.redis_server when run as a script

import redis.asyncio  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from tests.redis_server import find_redis  # noqa: E402

from podcache.backends.redis_pipeline import PipelinedConnection  # noqa: E402
from podcache.config import RedisSettings, parse_settings  # noqa: E402
from podcache.locks import LockService, MemoryLocks, RedisLocks  # noqa: E402

Acquire = Callable[[str, float], Awaitable[Any]]
Release = Callable[[str, Any], Awaitable[Any]]


@dataclasses.dataclass
class Target:
    """How to take and give back a lock with one implementation."""

    label: str
    acquire: Callable[[str, float], Awaitable[Any]]
    """(name, wait) -> a handle, or None when not acquired."""
    release: Callable[[str, Any], Awaitable[Any]]


def podcache_target(label: str, locks: LockService) -> Target:
    async def acquire(name: str, wait: float) -> Any:
        return await locks.acquire(name, ttl=30, wait=wait)

    async def release(name: str, lease: Any) -> None:
        await locks.release(name, lease.token)

    return Target(label, acquire, release)


def redis_py_target(client: redis.asyncio.Redis) -> Target:
    async def acquire(name: str, wait: float) -> Any:
        lock = client.lock(f"redispy:{name}", timeout=30, blocking=wait > 0,
                           blocking_timeout=wait or None)
        return lock if await lock.acquire() else None

    async def release(name: str, lock: Any) -> None:
        await lock.release()

    return Target("redis-py Lock", acquire, release)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sequential(target: Target, ops: int) -> dict[str, float]:
    acquire_us: list[float] = []
    release_us: list[float] = []
    started = time.perf_counter()
    for _ in range(ops):
        t0 = time.perf_counter_ns()
        handle = await target.acquire("seq", 0)
        t1 = time.perf_counter_ns()
        assert handle is not None
        await target.release("seq", handle)
        t2 = time.perf_counter_ns()
        acquire_us.append((t1 - t0) / 1000)
        release_us.append((t2 - t1) / 1000)
    elapsed = time.perf_counter() - started
    return {
        "cycles/s": ops / elapsed,
        "acq p50": pct(acquire_us, 0.5), "acq p99": pct(acquire_us, 0.99),
        "rel p50": pct(release_us, 0.5), "rel p99": pct(release_us, 0.99),
    }


async def concurrent(target: Target, ops: int, concurrency: int) -> float:
    per_task = max(1, ops // concurrency)

    async def cycle(i: int) -> None:
        for _ in range(per_task):
            handle = await target.acquire(f"conc-{i}", 0)
            assert handle is not None
            await target.release(f"conc-{i}", handle)

    started = time.perf_counter()
    await asyncio.gather(*(cycle(i) for i in range(concurrency)))
    return per_task * concurrency / (time.perf_counter() - started)


async def handovers(target: Target, count: int) -> tuple[float, float]:
    latencies_ms: list[float] = []
    for _ in range(count):
        holder = await target.acquire("handover", 0)
        assert holder is not None
        waiter = asyncio.create_task(target.acquire("handover", 10))
        await asyncio.sleep(0.02)  # let the waiter block
        released_at = time.perf_counter()
        await target.release("handover", holder)
        handle = await waiter
        latencies_ms.append((time.perf_counter() - released_at) * 1000)
        assert handle is not None
        await target.release("handover", handle)
    return pct(latencies_ms, 0.5), pct(latencies_ms, 0.99)


async def run(args: argparse.Namespace, url: str) -> None:
    client = redis.asyncio.Redis.from_url(url, max_connections=args.concurrency + 8)
    await client.flushdb()
    settings = parse_settings("redis", {"url": url})
    assert isinstance(settings, RedisSettings)
    pipe = PipelinedConnection(settings)
    targets = [
        podcache_target("podcache memory", MemoryLocks(registry=CollectorRegistry())),
        # As the Cache facade builds it (locks.build_locks): the scripts ride the
        # backend's auto-pipelined connection.
        podcache_target("podcache redis", RedisLocks(client, key_prefix="bench:",
                                                     registry=CollectorRegistry(),
                                                     pipeline=pipe)),
        # Given only a redis-py client, as a library user may build it: the pool's path.
        podcache_target("podcache redis-py", RedisLocks(client, key_prefix="bench-pool:",
                                                        registry=CollectorRegistry())),
        redis_py_target(client),
    ]
    print(f"sequential acquire+release x{args.ops}, concurrent x{args.concurrency} tasks, "
          f"{args.handovers} hand-overs; latencies in microseconds unless noted")
    header = (f"{'target':<18}{'cycles/s':>10}{'acq p50':>9}{'acq p99':>9}{'rel p50':>9}"
              f"{'rel p99':>9}{'conc cyc/s':>12}{'handover p50/p99 ms':>22}")
    print(header)
    rates: dict[str, float] = {}
    for target in targets:
        seq = await sequential(target, args.ops)
        conc = await concurrent(target, args.ops, args.concurrency)
        hand50, hand99 = await handovers(target, args.handovers)
        rates[target.label] = seq["cycles/s"]
        print(f"{target.label:<18}{seq['cycles/s']:>10.0f}{seq['acq p50']:>9.0f}"
              f"{seq['acq p99']:>9.0f}{seq['rel p50']:>9.0f}{seq['rel p99']:>9.0f}"
              f"{conc:>12.0f}{f'{hand50:.1f} / {hand99:.1f}':>22}")
    ratio = rates["podcache redis"] / rates["redis-py Lock"]
    print(f"podcache redis / redis-py Lock sequential cycles: {ratio:.2f}x "
          "(podcache also returns a fence and counts metrics)")
    ratio = rates["podcache redis-py"] / rates["redis-py Lock"]
    print(f"podcache redis-py (no pipelined connection) / redis-py Lock: {ratio:.2f}x")
    await pipe.aclose()
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--handovers", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with find_redis() as url:  # REDIS_URL, else a redis-server of its own
        asyncio.run(run(args, url))


if __name__ == "__main__":
    main()
