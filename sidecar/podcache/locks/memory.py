"""Locks inside one process, for the memory backend.

Same API and semantics as the Redis locks, without a network: the lock table is a
dict guarded by the event loop itself (no ``await`` between reading and writing an
entry, so every operation is atomic). Waiters park on futures and are woken by a
release; a waiter's sleep is also bounded by the holder's expiry, so a lease that
lapses without a release is noticed on time.

The table belongs to the backend object (``table_for``), so two lock services built
on the same ``MemoryBackend`` see the same locks. Fences come from one counter for the
whole process, shared by every table: strictly increasing for every name even when a
sidecar reload replaces the backend (memory -> redis -> memory), so a fence never goes
backwards while the process lives.

BEWARE: one event loop. The table must not be shared between threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import time
import weakref

from prometheus_client import CollectorRegistry

from podcache.locks.base import Busy, Lease, LockService

_PRUNE_FLOOR = 1024
"""Expired entries of names nobody touches again are dropped once the table grows past this."""

_FENCES = itertools.count(1)
"""The process-wide fence counter (see the module docstring); next() on it is atomic."""


@dataclasses.dataclass
class _Owner:
    token: str
    fence: int
    expires_at: float


class LockTable:
    """The locks of one memory backend: owners, the fence counter, parked waiters."""

    def __init__(self) -> None:
        self.owners: dict[str, _Owner] = {}
        self.fences = _FENCES
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._prune_at = _PRUNE_FLOOR

    def live_owner(self, name: str, now: float) -> _Owner | None:
        owner = self.owners.get(name)
        if owner is not None and owner.expires_at <= now:
            del self.owners[name]
            return None
        return owner

    def wake(self, name: str) -> None:
        # Wake every waiter: one wins, the others park again. Waking only one would
        # strand the rest if that one was cancelled before it could retry.
        for future in self.waiters.pop(name, ()):
            if not future.done() and not future.get_loop().is_closed():
                future.set_result(None)

    def prune(self, now: float) -> None:
        if len(self.owners) < self._prune_at:
            return
        for name in [n for n, o in self.owners.items() if o.expires_at <= now]:
            del self.owners[name]
        self._prune_at = max(_PRUNE_FLOOR, 2 * len(self.owners))


_tables: weakref.WeakKeyDictionary[object, LockTable] = weakref.WeakKeyDictionary()


def table_for(owner: object) -> LockTable:
    """The lock table attached to ``owner`` (a backend), created on first use."""
    table = _tables.get(owner)
    if table is None:
        table = _tables[owner] = LockTable()
    return table


class MemoryLocks(LockService):
    """In-process locks with fences; see the module docstring."""

    def __init__(
        self,
        table: LockTable | None = None,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "lab",
    ) -> None:
        super().__init__(registry=registry, namespace=namespace)
        self._table = table if table is not None else LockTable()
        self._parked: set[asyncio.Future[None]] = set()

    async def _try_acquire(self, name: str, *, token: str, ttl: float) -> Lease | Busy:
        now = time.monotonic()
        owner = self._table.live_owner(name, now)
        if owner is not None:
            return Busy(expires_in=max(0.0, owner.expires_at - now))
        self._table.prune(now)
        fence = next(self._table.fences)
        self._table.owners[name] = _Owner(token=token, fence=fence, expires_at=now + ttl)
        return Lease(token=token, fence=fence, ttl=ttl, acquired_at=now)

    async def _wait_released(self, name: str, *, at_most: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._table.waiters.setdefault(name, []).append(future)
        self._parked.add(future)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(at_most) else at_most):
                    await future
        finally:
            self._parked.discard(future)
            waiters = self._table.waiters.get(name)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(future)
                if not waiters:
                    del self._table.waiters[name]

    async def _refresh(self, name: str, *, token: str, ttl: float) -> Lease | None:
        now = time.monotonic()
        owner = self._table.live_owner(name, now)
        if owner is None or owner.token != token:
            return None
        owner.expires_at = now + ttl
        return Lease(token=token, fence=owner.fence, ttl=ttl, acquired_at=now)

    async def _release(self, name: str, *, token: str) -> bool:
        owner = self._table.live_owner(name, time.monotonic())
        if owner is None or owner.token != token:
            return False
        del self._table.owners[name]
        self._table.wake(name)
        return True

    async def _close(self) -> None:
        for future in list(self._parked):  # our own waiters give up at once
            if not future.done():
                future.set_result(None)
