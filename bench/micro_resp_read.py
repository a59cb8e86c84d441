"""Python time per one-GET read through the RESP socket's protocol, in process.

Why: under ``redis-benchmark -c 32`` the sidecar's system calls are ~70 % of its CPU
and the two load generators share the machine's two cores with it, so a change to the
Python of the RESP path moves ``bench_resp.py``'s figures by less than their noise. This
feeds one unpipelined ``GET`` (a 100-byte hit) per ``data_received`` to a
``RespProtocol`` with a transport that only counts writes: no socket, no loop wake-up.
Run it from each tree in turn (PYTHONPATH at the tree's sidecar), alternating; the
minimum of the repeats is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import types
from typing import Any

from prometheus_client import CollectorRegistry

from podcache import configfile
from podcache.backends.memory import MemoryBackend
from podcache.config import MemorySettings
from podcache.metrics import CacheMetrics
from podcache.sidecar import resp_server


class _Transport:
    """Counts writes; pausing and closing are not exercised."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        pass


async def main(repeats: int, reads: int) -> None:
    store = MemoryBackend(MemorySettings(default_ttl=300))
    store.start()
    registry = CollectorRegistry()
    cache = types.SimpleNamespace(backend=store, metrics=CacheMetrics(registry))
    state: Any = types.SimpleNamespace(
        config=configfile.loads("type: memory\n"),
        slot=types.SimpleNamespace(cache=cache, never_blocks=True),
        metrics=types.SimpleNamespace(namespace="lab", registry=registry),
    )
    protocol = resp_server.RespProtocol(resp_server.RespServer(state, path="/unused.sock"))
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    store.store("key:000000000001", b"x" * 100, 300)
    command = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000001\r\n"
    received = protocol.data_received
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(reads):
            received(command)
        times.append((time.perf_counter() - started) / reads * 1e9)
    assert transport.writes == repeats * reads
    print(f"ns per one-GET read: min {min(times):.0f}, median {statistics.median(times):.0f}")
    await store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--reads", type=int, default=40_000)
    args = parser.parse_args()
    asyncio.run(main(args.repeats, args.reads))
