"""A steady load through the podcache ``Cache`` API that records what failed and when.

Used by the fault tests and by ``bench/bench_failover.py``: start ``LoadProbe.run``
as a task, inject a fault, stop the probe, then read ``figures(fault_at)``:

- failover window: from the first failed operation to the last one;
- operations failed: how many calls raised (``BackendUnavailable``);
- recovery time: from the fault to the first success after the last failure.

Each round is one ``set``, one ``get`` of the value just written (a hit, unless the
write was lost in the failover) and one lock ``acquire``/``release`` whose fences are
kept, so a test can check that fences never repeat nor go backwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from podcache.errors import BackendUnavailable, CacheMiss


@dataclasses.dataclass(frozen=True)
class Outcome:
    at: float
    """``time.monotonic()`` when the call returned or failed."""
    op: str
    ok: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Figures:
    window: float
    """Seconds from the first failed call to the last failed call (0 when none failed)."""
    failed: int
    total: int
    recovery: float | None
    """Seconds from the fault to the first success after the last failure."""

    def line(self, label: str) -> str:
        recovery = "n/a" if self.recovery is None else f"{self.recovery:.2f}s"
        return (f"{label}: failover window {self.window:.2f}s, operations failed "
                f"{self.failed}/{self.total}, recovery time {recovery}")


class LoadProbe:
    """Runs set/get/lock rounds against a cache until stopped; records every outcome."""

    def __init__(self, cache: Any, *, prefix: str = "probe", pause: float = 0.005,
                 lock_name: str = "probe-lock") -> None:
        self.cache = cache
        self.prefix = prefix
        self.pause = pause
        self.lock_name = lock_name
        self.outcomes: list[Outcome] = []
        self.fences: list[int] = []
        self.lost_writes = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        round_no = 0
        while not self._stop.is_set():
            round_no += 1
            key = f"{self.prefix}-{round_no % 50}"
            value = str(round_no).encode()
            stored, _ = await self._call("set", self.cache.set(key, value, ttl=30))
            if stored:
                try:
                    await self._call("get", self.cache.get(key))
                except CacheMiss:
                    self.lost_writes += 1  # written, then gone: a write lost in the failover
            _, lease = await self._call("lock", self.cache.locks.acquire(self.lock_name, ttl=1))
            if lease is not None:
                self.fences.append(int(lease.fence))
                await self._call("unlock", self.cache.locks.release(self.lock_name, lease.token))
            await asyncio.sleep(self.pause)

    async def _call(self, op: str, awaitable: Any) -> tuple[bool, Any]:
        """Await one call; return (succeeded, result). A miss is re-raised after recording."""
        try:
            result = await awaitable
        except BackendUnavailable as exc:
            self.outcomes.append(Outcome(time.monotonic(), op, False, str(exc)[:200]))
            return False, None
        except CacheMiss:
            self.outcomes.append(Outcome(time.monotonic(), op, True, "miss"))
            raise
        self.outcomes.append(Outcome(time.monotonic(), op, True))
        return True, result

    def figures(self, fault_at: float) -> Figures:
        failures = [o for o in self.outcomes if not o.ok]
        if not failures:
            return Figures(window=0.0, failed=0, total=len(self.outcomes), recovery=0.0)
        last_failure = failures[-1].at
        after = [o for o in self.outcomes if o.ok and o.at > last_failure]
        return Figures(
            window=last_failure - failures[0].at,
            failed=len(failures),
            total=len(self.outcomes),
            recovery=(after[0].at - fault_at) if after else None,
        )

    def successes_after(self, moment: float) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.at > moment)

    def failures_after(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok and o.at > moment]
