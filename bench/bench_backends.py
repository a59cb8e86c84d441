"""Throughput and latency of get/set: memory backend, Redis backend, raw redis-py.

Why: the Redis backend adds validation, a key prefix, an asyncio timeout and metrics
on top of redis-py. The figure to quote is the ratio between ``podcache redis`` and
``redis-py`` on the same Redis in the same run (absolute numbers depend on the machine).

What it does: for each target, a sequential phase (one call at a time: per-call
latency p50/p99 and ops/s) and a concurrent phase (``--concurrency`` tasks: ops/s).
Targets alternate over ``--rounds`` so machine noise hits them alike. Redis is a
``redis-server`` started here on a free port (``tests/redis_server.py``), or
``REDIS_URL``. The default run takes well under 30 s.

    .venv/bin/python bench/bench_backends.py [--ops 3000] [--rounds 3] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.redis_server when run as a script

import redis.asyncio  # noqa: E402
from tests.redis_server import find_redis  # noqa: E402

from podcache.cache import Cache, new_cache  # noqa: E402
from podcache.config import Config  # noqa: E402
from podcache.errors import BackendUnavailable  # noqa: E402

Op = Callable[[int], Awaitable[object]]


@dataclasses.dataclass
class Result:
    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    sequential_seconds: float = 0.0
    sequential_ops: int = 0
    concurrent_seconds: float = 0.0
    concurrent_ops: int = 0

    def percentile_us(self, q: float) -> float:
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    @property
    def sequential_rate(self) -> float:
        return self.sequential_ops / self.sequential_seconds

    @property
    def concurrent_rate(self) -> float:
        return self.concurrent_ops / self.concurrent_seconds


@dataclasses.dataclass
class Target:
    name: str
    get: Op
    set: Op


async def run_sequential(op: Op, ops: int, result: Result) -> None:
    perf = time.perf_counter_ns
    started = perf()
    for i in range(ops):
        t0 = perf()
        await op(i)
        result.latencies_ns.append(perf() - t0)
    result.sequential_seconds += (perf() - started) / 1e9
    result.sequential_ops += ops


async def run_concurrent(op: Op, ops: int, concurrency: int, result: Result) -> None:
    per_task = ops // concurrency

    async def worker(offset: int) -> None:
        for i in range(per_task):
            await op(offset + i)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n * per_task) for n in range(concurrency)))
    result.concurrent_seconds += time.perf_counter() - started
    result.concurrent_ops += per_task * concurrency


def cache_target(name: str, cache: Cache, value: bytes, keys: int) -> Target:
    async def get(i: int) -> object:
        return await cache.get(f"k{i % keys}")

    async def set_(i: int) -> object:
        await cache.set(f"k{i % keys}", value, ttl=300)
        return None

    return Target(name, get, set_)


def raw_target(client: redis.asyncio.Redis, prefix: str, value: bytes, keys: int) -> Target:
    async def get(i: int) -> object:
        return await client.get(f"{prefix}k{i % keys}")

    async def set_(i: int) -> object:
        return await client.set(f"{prefix}k{i % keys}", value, px=300_000)

    return Target("redis-py (direct)", get, set_)


async def bench(args: argparse.Namespace, url: str) -> None:
    value = os.urandom(args.value_size)
    keys = 1000
    memory = new_cache(Config(type="memory", config={"defaultTTL": "5m"}), "bench")
    podcache_redis = new_cache(
        Config(type="redis", config={"url": url, "keyPrefix": "bench:pc:", "poolSize": 64}), "bench"
    )
    raw = redis.asyncio.Redis.from_url(url, max_connections=64)
    targets = [
        cache_target("podcache memory", memory, value, keys),
        cache_target("podcache redis", podcache_redis, value, keys),
        raw_target(raw, "bench:raw:", value, keys),
    ]
    results = {(t.name, op): Result() for t in targets for op in ("set", "get")}
    try:
        for target in targets:  # warm up: connections, scripts, key space filled for gets
            for i in range(keys):
                await target.set(i)
        for _ in range(args.rounds):
            for target in targets:
                ops = args.ops * (5 if target.name == "podcache memory" else 1)
                for op_name in ("set", "get"):
                    op = target.set if op_name == "set" else target.get
                    result = results[(target.name, op_name)]
                    await run_sequential(op, ops, result)
                    await run_concurrent(op, ops, args.concurrency, result)
    except BackendUnavailable as exc:
        sys.exit(f"Redis failed during the benchmark: {exc}")
    finally:
        await memory.stop()
        await podcache_redis.stop()
        await raw.aclose()
    report(args, results)


def report(args: argparse.Namespace, results: dict[tuple[str, str], Result]) -> None:
    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"podcache backend benchmark: value {args.value_size} B, {args.rounds} rounds, "
          f"event loop {loop}, concurrency {args.concurrency}, Python {sys.version.split()[0]}")
    header = (f"{'target':<20} {'op':<4} {'seq ops/s':>10} {'p50 us':>8} {'p99 us':>8} "
              f"{'conc ops/s':>11}")
    print(header)
    print("-" * len(header))
    for (name, op), result in results.items():
        print(f"{name:<20} {op:<4} {result.sequential_rate:>10,.0f} "
              f"{result.percentile_us(0.50):>8.1f} {result.percentile_us(0.99):>8.1f} "
              f"{result.concurrent_rate:>11,.0f}")
    print()
    print("podcache redis vs redis-py direct (same Redis, same run; 1.00 = no overhead):")
    for op in ("get", "set"):
        ours, theirs = results[("podcache redis", op)], results[("redis-py (direct)", op)]
        print(f"  {op}: sequential ops/s x{ours.sequential_rate / theirs.sequential_rate:.2f}, "
              f"p50 x{ours.percentile_us(0.5) / theirs.percentile_us(0.5):.2f}, "
              f"p99 x{ours.percentile_us(0.99) / theirs.percentile_us(0.99):.2f}, "
              f"concurrent ops/s x{ours.concurrent_rate / theirs.concurrent_rate:.2f}")
    spread = statistics.median(r.sequential_rate for r in results.values())
    print(f"(median sequential rate over all rows: {spread:,.0f} ops/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=3000,
                        help="calls per op and phase and round on Redis (memory does 5x)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    with find_redis() as url:  # REDIS_URL, else a redis-server of its own
        asyncio.run(bench(args, url))


if __name__ == "__main__":
    main()
