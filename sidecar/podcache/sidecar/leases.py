"""Locks acquired through the sidecar, remembered so they can be released at shutdown.

When the sidecar stops, its pod is going away and so are the applications that
held locks through it: releasing their leases lets another pod take over at once
instead of after the TTL. The sidecar never renews a lease on its own; holders
refresh explicitly (a holder that stops refreshing must lose the lock).

Entries past their TTL are forgotten lazily: they can no longer be released anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

RELEASE_TIMEOUT = 2.0
"""Seconds the shutdown spends releasing leases before giving up (they expire anyway)."""


class _Lease(Protocol):
    """What the book reads of a lease; read-only, as ``podcache.locks.Lease`` is frozen."""

    @property
    def token(self) -> str: ...

    @property
    def ttl(self) -> float: ...


class LeaseBook:
    """(lock name, token) → when the lease expires, for the leases this sidecar handed out."""

    def __init__(self, *, on_change: Callable[[int], None] | None = None) -> None:
        self._held: dict[tuple[str, str], float] = {}
        self._on_change = on_change
        self._prune_at = 64

    def __len__(self) -> int:
        return len(self._held)

    def held(self, name: str, lease: _Lease) -> None:
        """Record an acquired or refreshed lease."""
        self._held[(name, lease.token)] = time.monotonic() + float(lease.ttl)
        if len(self._held) >= self._prune_at:
            self._prune()
        self._changed()

    def discard(self, name: str, token: str) -> None:
        """Forget a lease that was released (or turned out not to be ours)."""
        if self._held.pop((name, token), None) is not None:
            self._changed()

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [key for key, expires in self._held.items() if expires <= now]:
            del self._held[key]
        self._prune_at = max(64, 2 * len(self._held))  # amortised O(1) per lease

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(len(self._held))

    async def release_all(self, locks: Any) -> int:
        """Release every unexpired lease through ``locks``; return how many were released."""
        self._prune()
        pending = list(self._held)
        self._held.clear()
        self._changed()
        if not pending:
            return 0
        results = await asyncio.gather(
            *(self._release(locks, name, token) for name, token in pending)
        )
        released = sum(results)
        logger.info("released %d of %d lock(s) held through the sidecar", released, len(pending))
        return released

    @staticmethod
    async def _release(locks: Any, name: str, token: str) -> bool:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                return bool(await locks.release(name, token))
        except Exception as exc:  # the lease expires by itself; shutdown must go on
            logger.warning("could not release lock %r at shutdown: %s", name, exc)
            return False
