"""Memory per entry, and whether ``maxBytes`` bounds a sidecar's memory (issue 10, item 3).

Why: the memory backend promises that ``maxBytes`` bounds memory, not just payload,
and its entries should cost at most 1.3 times those of a plain dict. This prints,
from one run:

- bytes per entry for 100-byte values at 100k and 1M keys: a plain ``dict[str, bytes]``,
  podcache's memory backend (``podcache.backends.memory``), and Redis (a real
  ``redis-server``, ``used_memory`` of ``INFO memory``), each built in a fresh process
  and measured as RSS growth (Python) or ``used_memory`` growth (Redis), with the
  ratios backend/dict and backend/Redis;
- a real sidecar process (memory backend, ``maxBytes`` = ``--max-bytes``) flooded over
  its socket with tiny values (unique keys, 1 byte) and with large ones (1 MiB,
  ``--concurrency`` uploads at once): RSS growth and peak (VmHWM) growth over idle,
  as ratios to ``maxBytes``, and how many PUTs the in-flight budget answered 503.

Wrap runs in ``flock /tmp/podcache-bench.lock`` on a shared machine:

    flock /tmp/podcache-bench.lock .venv/bin/python bench/bench_memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.redis_server when run as a script

import aiohttp  # noqa: E402
import redis  # noqa: E402
import yaml  # noqa: E402
from tests.redis_server import find_redis  # noqa: E402

VALUE_SIZE = 100


def _status(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _key(i: int) -> str:
    return f"key:{i:010d}"


def _value(i: int) -> bytes:
    return b"%0*d" % (VALUE_SIZE, i)


# -- bytes per entry (each kind in a fresh process: RSS only grows) ------------------


def _child(kind: str, count: int) -> None:
    """Build ``count`` entries of ``kind``; print the RSS growth per entry as JSON."""
    import collections  # noqa: F401  # loaded before the baseline is taken

    from podcache.backends.memory import MemoryBackend
    from podcache.config import MemorySettings

    gc.collect()
    before = _status("self", "VmRSS")
    holder: Any
    if kind == "dict":
        holder = {}
        for i in range(count):
            holder[_key(i)] = _value(i)
    else:
        holder = MemoryBackend(
            MemorySettings(max_items=10**9, max_bytes=1 << 42, reap_interval=3600)
        )

        async def fill() -> None:
            for i in range(count):
                await holder.set(_key(i), _value(i), 300)

        asyncio.run(fill())
    gc.collect()
    grown = _status("self", "VmRSS") - before
    charged = holder.bytes_used / count if kind == "backend" else None
    print(json.dumps({"per_entry": grown / count, "charged": charged}))


def _per_entry(kind: str, count: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(count)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _redis_per_entry(url: str, count: int) -> float:
    client = redis.Redis.from_url(url)
    client.flushall()
    time.sleep(0.2)
    before = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(_key(i), _value(i), ex=300)  # with a TTL, as the cache's entries have
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    used = int(client.info("memory")["used_memory"]) - before
    client.flushall()
    client.close()
    return used / count


# -- a real sidecar under floods -----------------------------------------------------


class Sidecar:
    def __init__(self, workdir: Path, max_bytes: int) -> None:
        self.socket = str(workdir / "s.sock")
        config = workdir / "c.yaml"
        config.write_text(
            yaml.safe_dump({"type": "memory", "config": {"maxItems": 10**8, "maxBytes": max_bytes}})
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "podcache.sidecar.main",
                "--config",
                str(config),
                "--socket",
                self.socket,
                "--metrics-port",
                "0",
                "--log-level",
                "warning",
            ]
        )

    async def wait(self) -> None:
        deadline = time.monotonic() + 15
        while not await asyncio.to_thread(os.path.exists, self.socket):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the sidecar did not start")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)

    def rss(self) -> int:
        return _status(self.process.pid, "VmRSS")

    def peak(self) -> int:
        return _status(self.process.pid, "VmHWM")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


async def _flood(sidecar: Sidecar, *, count: int, size: int, concurrency: int) -> dict[str, int]:
    statuses: dict[str, int] = {}
    connector = aiohttp.UnixConnector(path=sidecar.socket, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        body = b"x" * size
        next_key = iter(range(count))

        async def worker() -> None:
            for i in next_key:
                async with session.put(f"http://s/v1/cache/f{i}", data=body) as response:
                    await response.read()
                    key = str(response.status)
                    statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def _sidecar_case(
    name: str, *, max_bytes: int, count: int, size: int, concurrency: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="pcb-") as tmp:
        sidecar = Sidecar(Path(tmp), max_bytes)
        try:
            await sidecar.wait()
            idle_rss, idle_peak = sidecar.rss(), sidecar.peak()
            started = time.monotonic()
            statuses = await _flood(sidecar, count=count, size=size, concurrency=concurrency)
            took = time.monotonic() - started
            grown, peak = sidecar.rss() - idle_rss, sidecar.peak() - idle_peak
        finally:
            sidecar.stop()
    mib = 1 << 20
    print(
        f"  {name:<34} idle {idle_rss / mib:5.1f} MiB  RSS +{grown / mib:6.1f} MiB "
        f"({grown / max_bytes:4.2f}x maxBytes)  peak +{peak / mib:6.1f} MiB "
        f"({peak / max_bytes:4.2f}x)  statuses {statuses}  {took:.1f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--counts", default="100000,1000000")
    parser.add_argument("--max-bytes", type=int, default=32 << 20)
    parser.add_argument("--tiny", type=int, default=200_000, help="PUTs of the tiny flood")
    parser.add_argument("--large", type=int, default=300, help="PUTs of the 1 MiB flood")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    print(f"bench_memory: python {sys.version.split()[0]}, {os.cpu_count()} cores, one run")
    print(f"bytes per entry, {VALUE_SIZE} B values, keys like {_key(0)!r} (RSS growth):")
    with find_redis() as url:
        for count in (int(c) for c in args.counts.split(",")):
            plain = _per_entry("dict", count)["per_entry"]
            backend = _per_entry("backend", count)
            in_redis = _redis_per_entry(url, count)
            print(
                f"  {count:>9,} keys: dict {plain:6.1f}  backend {backend['per_entry']:6.1f} "
                f"(charged {backend['charged']:.0f})  redis {in_redis:6.1f}   "
                f"backend/dict {backend['per_entry'] / plain:4.2f}x  "
                f"backend/redis {backend['per_entry'] / in_redis:4.2f}x"
            )
    print(f"sidecar process, maxBytes {args.max_bytes / (1 << 20):.0f} MiB:")
    asyncio.run(
        _sidecar_case(
            f"tiny flood ({args.tiny:,} x 1 B, 8 conns)",
            max_bytes=args.max_bytes,
            count=args.tiny,
            size=1,
            concurrency=8,
        )
    )
    asyncio.run(
        _sidecar_case(
            f"large flood ({args.large} x 1 MiB, {args.concurrency} conns)",
            max_bytes=args.max_bytes,
            count=args.large,
            size=1 << 20,
            concurrency=args.concurrency,
        )
    )


if __name__ == "__main__":
    main()
