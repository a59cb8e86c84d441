"""The near cache (issue 13): Redis GETs saved, invalidation delay, GET rate, stale reads.

Why: the near cache is only worth its risk if it saves most Redis round trips on a
skewed load, invalidates within milliseconds, and never serves a stale value once the
invalidation delay has passed. This prints one figure per question:

- ``modes``: BCAST with the tenant's prefix vs default tracking with OPTIN (the choice
  written down in ``podcache/backends/near_cache.py``): invalidation messages, Redis CPU
  and Redis memory for the same writes while a reader holds a hot set.
- ``zipf``: Zipf(s) reads over ``--keys`` keys through the Redis backend + near cache:
  the share of GETs that never reached Redis.
- ``delay``: a write through cache A returns -> cache B has dropped its copy (B's
  invalidation processed), p50/p99 over ``--delay-samples`` writes (0 when B had it
  before A's reply was read).
- ``rate``: GET ops/s of a hot key set with ``--concurrency`` tasks: memory backend,
  Redis backend + near cache, Redis backend, redis-py directly; targets interleaved over
  ``--rounds`` rounds, medians reported (the machine is shared).
- ``check``: two caches on one Redis, ``--check-seconds`` of mixed reads and writes on
  1,000 keys; a linearizability-style checker: every value read was written, and no read
  that started more than ``--bound-ms`` after a newer version was acknowledged returned an
  older one. Per key one writer at a time (alternating A and B), so acknowledgement order
  is Redis's order.

Library level, one process, one event loop (not through the sidecar's socket): both
"sidecars" are ``Cache`` objects, so scheduling between them is the event loop's.
``--cluster`` runs the same on a Redis Cluster of three primaries started for the run
(``tests.redis_topologies``: one invalidation channel per primary per cache; ``modes``
is left out, it measures one server).
Run it under the machine's bench lock:

    flock /tmp/podcache-bench.lock .venv/bin/python bench/bench_near_cache.py [--quick] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.redis_server when run as a script

import hiredis  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode  # noqa: E402
from redis.cluster import ClusterNode  # noqa: E402
from tests.redis_server import find_redis  # noqa: E402
from tests.redis_topologies import ClusterTopology  # noqa: E402

from podcache.backends.near_cache import NearCache  # noqa: E402
from podcache.backends.redis import RedisBackend  # noqa: E402
from podcache.cache import Cache, new_cache  # noqa: E402
from podcache.config import Config  # noqa: E402
from podcache.errors import CacheMiss  # noqa: E402

PREFIX = "bench-near:"


class Target:
    """The Redis under test: one server (``url``) or a cluster (``nodes``, host:port)."""

    def __init__(self, *, url: str | None = None, nodes: list[str] | None = None) -> None:
        self.url = url
        self.nodes = [(host, int(port)) for host, _, port in
                      (node.rpartition(":") for node in nodes or [])]
        self.config: dict[str, Any] = {"url": url} if url else {"cluster": {"nodes": nodes}}

    def client(self) -> Any:
        """A synchronous redis-py client (close it after use)."""
        if self.url:
            return redis.Redis.from_url(self.url)
        return redis.RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes])

    def async_client(self, *, max_connections: int) -> Any:
        if self.url:
            return redis.asyncio.Redis.from_url(self.url, max_connections=max_connections)
        return redis.asyncio.RedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in self.nodes],
            max_connections=max_connections)

    def flushall(self) -> None:
        with self.client() as raw:
            if self.url:
                raw.flushall()
            else:
                raw.flushall(target_nodes=redis.RedisCluster.PRIMARIES)


def redis_config(target: Target, *, near: bool, **near_settings: Any) -> Config:
    config: dict[str, Any] = {**target.config, "keyPrefix": PREFIX}
    if near:
        config["nearCache"] = {"enabled": True, **near_settings}
    return Config(type="redis", config=config)


def near_of(cache: Cache) -> NearCache:
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    assert backend.near is not None
    return backend.near


async def started(cache: Cache) -> Cache:
    cache.start()
    near = near_of(cache)
    while not near.channel.up:  # noqa: ASYNC110 - polls a flag set by callbacks
        await asyncio.sleep(0.01)
    return cache


def populate(target: Target, keys: int, value: bytes) -> None:
    with target.client() as raw:
        pipe = raw.pipeline(transaction=False)
        for i in range(keys):
            pipe.set(f"{PREFIX}k{i}", value, px=600_000)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()


# -- modes ---------------------------------------------------------------------------------


def _cpu(raw: redis.Redis) -> float:
    info = raw.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def modes(url: str, *, keys: int, writes: int, hot: int) -> None:
    """The same writes under BCAST-with-prefix and under default mode with OPTIN."""
    print(f"\n== tracking modes: {writes} SETs over {keys} keys, a reader holding {hot} hot keys")
    rng = random.Random(1)
    order = [rng.randrange(keys) for _ in range(writes)]
    host, port = redis.Redis.from_url(url).connection_pool.connection_kwargs["host"], int(
        redis.Redis.from_url(url).connection_pool.connection_kwargs["port"])
    for mode in ("bcast", "optin"):
        with redis.Redis.from_url(url) as raw, socket.create_connection((host, port)) as tracker:
            raw.flushall()
            populate(Target(url=url), keys, b"v")
            parser = hiredis.Reader()
            tracker.sendall(b"CLIENT ID\r\nSUBSCRIBE __redis__:invalidate\r\n")
            replies: list[Any] = []
            while len(replies) < 2:
                parser.feed(tracker.recv(65536))
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
            listener_id = int(replies[0])
            reader = redis.Redis.from_url(url, single_connection_client=True)
            memory_before = int(raw.info("memory")["used_memory"])
            if mode == "bcast":
                reader.execute_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", PREFIX,
                                       "REDIRECT", listener_id)
            else:
                reader.execute_command("CLIENT", "TRACKING", "ON", "OPTIN",
                                       "REDIRECT", listener_id)
                for i in range(hot):
                    reader.execute_command("CLIENT", "CACHING", "YES")
                    reader.get(f"{PREFIX}k{i}")
            memory_tracking = int(raw.info("memory")["used_memory"]) - memory_before
            cpu = _cpu(raw)
            started_at = time.perf_counter()
            pipe = raw.pipeline(transaction=False)
            for n, i in enumerate(order):
                pipe.set(f"{PREFIX}k{i}", b"w", px=600_000)
                if n % 1000 == 999:
                    pipe.execute()
            pipe.execute()
            seconds = time.perf_counter() - started_at
            cpu = _cpu(raw) - cpu
            messages = keys_invalidated = 0
            tracker.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                while chunk := tracker.recv(1 << 20):
                    parser.feed(chunk)
                    while (message := parser.gets()) is not False:
                        if isinstance(message, list) and message[0] == b"message":
                            messages += 1
                            keys_invalidated += len(message[2] or [])
            tracked = raw.info("all").get("tracking_total_keys", "?")
            print(f"{mode:>6}: {messages} messages ({keys_invalidated} keys) for {writes} "
                  f"writes; Redis CPU {cpu * 1000:.0f} ms for the writes ({seconds:.2f} s wall); "
                  f"tracking memory {memory_tracking / 1024:.0f} KiB, tracking_total_keys "
                  f"{tracked}")
            reader.close()


# -- zipf ----------------------------------------------------------------------------------


def zipf_cumulative(keys: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, keys + 1)))


async def zipf(target: Target, *, keys: int, reads: int, s: float, max_items: int) -> None:
    print(f"\n== Zipf({s}) reads over {keys} keys, {reads} GETs, nearCache maxItems {max_items}")
    populate(target, keys, b"x" * 100)
    cumulative = zipf_cumulative(keys, s)
    total = cumulative[-1]
    rng = random.Random(2)
    draws = [bisect.bisect_left(cumulative, rng.random() * total) for _ in range(reads)]
    cache = await started(new_cache(redis_config(target, near=True, maxItems=max_items)))
    near = near_of(cache)
    try:
        async def worker(part: list[int]) -> None:
            for i in part:
                await cache.get(f"k{i}")

        await asyncio.gather(*(worker(draws[w::16]) for w in range(16)))
        saved = near.hits / (near.hits + near.misses)
        print(f"Redis GETs saved: {saved * 100:.1f}% ({near.hits} local of {reads}; "
              f"{near.store.evictions} evictions, {near.item_count} copies held)")
    finally:
        await cache.stop()


# -- delay ---------------------------------------------------------------------------------


async def delay(target: Target, *, samples: int) -> list[float]:
    """B lives on its own event loop in a thread (as another sidecar would in its own
    process), so its invalidations are not processed in A's loop turns."""
    b_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=b_loop.run_forever, daemon=True)
    thread.start()

    def on_b(coroutine: Awaitable[Any]) -> Any:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, b_loop))

    async def make_b() -> Cache:
        return await started(new_cache(redis_config(target, near=True)))

    a = await started(new_cache(redis_config(target, near=True)))
    b: Cache = await on_b(make_b())
    near_b = near_of(b)
    dropped: dict[str, float] = {}
    original = near_b.invalidated

    def recording(keys: list[bytes] | None) -> None:
        original(keys)
        now = time.perf_counter()
        for key in keys or []:
            dropped.setdefault(key.decode(), now)

    near_b.invalidated = recording  # type: ignore[method-assign]
    delays: list[float] = []
    try:
        for n in range(samples):
            key = f"d{n % 50}"
            await a.set(key, b"old")
            assert await on_b(b.get(key)) == b"old"
            await on_b(b.get(key))
            dropped.clear()
            await a.set(key, b"new")
            returned = time.perf_counter()
            while PREFIX + key not in dropped:  # noqa: ASYNC110 - set in B's thread
                await asyncio.sleep(0.0001)
            delays.append(max(0.0, dropped[PREFIX + key] - returned))
            assert await on_b(b.get(key)) == b"new"
    finally:
        await a.stop()
        await on_b(b.stop())
        b_loop.call_soon_threadsafe(b_loop.stop)
        thread.join()
        b_loop.close()
    return delays


# -- rate ----------------------------------------------------------------------------------


async def rate(target: Target, *, concurrency: int, hot: int, seconds: float, rounds: int) -> None:
    print(f"\n== hot-key GET ops/s: {concurrency} tasks, {hot} hot keys, {rounds} rounds"
          f" of {seconds:g}s, medians")
    memory = new_cache(Config(type="memory", config={}))
    near = await started(new_cache(redis_config(target, near=True)))
    plain = new_cache(redis_config(target, near=False))
    raw = target.async_client(max_connections=concurrency)
    for i in range(hot):
        await memory.set(f"h{i}", b"x" * 100, ttl=600)
        await plain.set(f"h{i}", b"x" * 100, ttl=600)
    targets: dict[str, Callable[[str], Awaitable[Any]]] = {
        "memory backend": memory.get,
        "redis + near cache": near.get,
        "redis backend": plain.get,
        "redis-py direct": lambda key: raw.get(PREFIX + key),
    }
    results: dict[str, list[float]] = {name: [] for name in targets}

    async def run(get: Callable[[str], Awaitable[Any]]) -> float:
        done = 0
        stop_at = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            n = offset
            while time.perf_counter() < stop_at:
                for _ in range(50):
                    await get(f"h{n % hot}")
                    n += 1
                done += 50
                # A local hit never suspends: yield like a server between requests, or
                # one task runs the whole round and the channel's health PING starves.
                await asyncio.sleep(0)

        started_at = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return done / (time.perf_counter() - started_at)

    try:
        # Connections made before the clock runs; the first GET alone (redis-py 8.1's
        # RedisCluster initialized by 32 tasks at once failed in send_packed_command).
        for get in targets.values():
            await get("h0")
            await asyncio.gather(*(get(f"h{i % hot}") for i in range(concurrency)))
        for _ in range(rounds):
            for name, get in targets.items():
                results[name].append(await run(get))
        medians = {name: statistics.median(values) for name, values in results.items()}
        for name, value in medians.items():
            print(f"{name:>20}: {value:10.0f} GET/s")
        near_rate = medians["redis + near cache"]
        print(f"near / memory backend: {near_rate / medians['memory backend']:.2f}x "
              "(target >= 0.9)")
        print(f"near / redis-py direct: {near_rate / medians['redis-py direct']:.2f}x "
              "(target >= 1.5)")
        print(f"near / redis backend: {near_rate / medians['redis backend']:.2f}x")
    finally:
        await memory.stop()
        await near.stop()
        await plain.stop()
        await raw.aclose()


# -- check ---------------------------------------------------------------------------------


async def check(target: Target, *, seconds: float, keys: int, bound_ms: float) -> int:
    """Mixed load on two caches and the stale-read checker; returns the stale reads found."""
    print(f"\n== checker: 2 caches, {seconds:g}s mixed load on {keys} keys, bound {bound_ms} ms")
    a = await started(new_cache(redis_config(target, near=True)))
    b = await started(new_cache(redis_config(target, near=True)))
    caches = (a, b)
    bound = bound_ms / 1000
    acked: dict[int, list[tuple[float, int]]] = {k: [(0.0, 0)] for k in range(keys)}
    """Per key: (ack time, version) in acknowledgement order."""
    issued: dict[int, int] = dict.fromkeys(range(keys), 0)
    for k in range(keys):
        await a.set(f"c{k}", b"0", ttl=600)
    stop_at = time.perf_counter() + seconds
    reads = 0
    stale: list[str] = []
    unknown: list[str] = []
    rng = random.Random(3)
    hot = max(1, keys // 20)

    def pick() -> int:  # a skewed choice so that copies exist and get invalidated
        return rng.randrange(hot) if rng.random() < 0.8 else rng.randrange(keys)

    async def writer(w: int, writers: int) -> None:
        own = list(range(w, keys, writers))
        n = 0
        while time.perf_counter() < stop_at:
            k = own[rng.randrange(len(own))] if rng.random() < 0.5 else own[n % min(len(own), 5)]
            version = issued[k] + 1
            issued[k] = version
            await caches[n % 2].set(f"c{k}", str(version).encode(), ttl=600)
            acked[k].append((time.perf_counter(), version))
            n += 1
            await asyncio.sleep(0.002)

    async def reader(cache: Cache) -> None:
        nonlocal reads
        while time.perf_counter() < stop_at:
            k = pick()
            began = time.perf_counter()
            try:
                value = int(await cache.get(f"c{k}"))
            except CacheMiss:
                unknown.append(f"c{k}: miss")
                continue
            reads += 1
            if value > issued[k]:
                unknown.append(f"c{k}: read {value}, never written")
            history = acked[k]
            # The newest version acknowledged more than `bound` before this read began.
            i = bisect.bisect_right(history, (began - bound, float("inf"))) - 1
            floor = history[i][1] if i >= 0 else 0
            if value < floor:
                stale.append(f"c{k}: read {value} while {floor} was acknowledged "
                             f"{(began - history[i][0]) * 1000:.1f} ms before")

    try:
        await asyncio.gather(
            *(writer(w, 8) for w in range(8)),
            *(reader(cache) for cache in caches for _ in range(8)),
        )
    finally:
        hits = near_of(a).hits + near_of(b).hits
        await a.stop()
        await b.stop()
    writes = sum(len(h) - 1 for h in acked.values())
    print(f"{reads} reads ({hits} from near caches), {writes} writes: "
          f"{len(stale)} stale reads, {len(unknown)} reads of unwritten values")
    for line in (stale + unknown)[:5]:
        print("  ", line)
    return len(stale) + len(unknown)


# -- main ----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, target: Target) -> int:
    if "modes" in args.only and target.url:
        modes(target.url, keys=args.mode_keys, writes=args.mode_writes, hot=args.hot)
    if "zipf" in args.only:
        target.flushall()
        await zipf(target, keys=args.keys, reads=args.reads, s=args.zipf, max_items=args.max_items)
    if "delay" in args.only:
        delays = sorted(await delay(target, samples=args.delay_samples))
        p50 = delays[len(delays) // 2] * 1000
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000
        print(f"\n== invalidation delay (write through A returns -> B dropped its copy), "
              f"{len(delays)} writes: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
              f"max {delays[-1] * 1000:.2f} ms (target p99 <= 5 ms)")
    if "rate" in args.only:
        target.flushall()  # the items gauge's SCAN of 100k keys would weigh on the loop
        await rate(target, concurrency=args.concurrency, hot=args.hot, seconds=args.seconds,
                   rounds=args.rounds)
    if "check" in args.only:
        return await check(target, seconds=args.check_seconds, keys=1000, bound_ms=args.bound_ms)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="modes,zipf,delay,rate,check")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=200_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--max-items", type=int, default=10_000)
    parser.add_argument("--mode-keys", type=int, default=20_000)
    parser.add_argument("--mode-writes", type=int, default=20_000)
    parser.add_argument("--hot", type=int, default=100)
    parser.add_argument("--delay-samples", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check-seconds", type=float, default=5.0)
    parser.add_argument("--bound-ms", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="smaller figures, ~15 s")
    parser.add_argument("--cluster", action="store_true",
                        help="on a Redis Cluster of 3 primaries started for the run")
    args = parser.parse_args()
    if args.quick:
        args.reads, args.delay_samples, args.rounds, args.seconds = 50_000, 200, 2, 0.5
        args.check_seconds, args.mode_writes = 3.0, 5000
    if args.cluster:
        with ClusterTopology(primaries=3) as topology:
            nodes = [node.address for node in topology.nodes]
            failures = asyncio.run(bench(args, Target(nodes=nodes)))
    else:
        with find_redis() as url:
            failures = asyncio.run(bench(args, Target(url=url)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
