"""Elections inside one process, for the memory backend and for tests.

Every ``MemoryLeaseStore`` of one election name shares one ``_Lease`` from a
module-level registry, so several electors in a process contend for real. State
changes happen without an ``await`` in between, so each operation is atomic on
the event loop. Watchers park on futures of their own loop (never a shared
``asyncio.Event``, which would bind to whichever loop touched it first).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

from podcache.election.store import LeaseRecord, LeaseStore


@dataclasses.dataclass
class _Lease:
    holder: str | None = None
    nonce: str | None = None
    term: int = 0
    expires_at: float = 0.0
    watchers: list[asyncio.Future[None]] = dataclasses.field(default_factory=list)

    def vacate_if_expired(self, now: float) -> None:
        if self.nonce is not None and self.expires_at <= now:
            self.holder = self.nonce = None

    def record(self, now: float) -> LeaseRecord:
        expires_in = None if self.nonce is None else max(0.0, self.expires_at - now)
        return LeaseRecord(holder=self.holder, term=self.term, expires_in=expires_in)

    def notify(self) -> None:
        watchers, self.watchers = self.watchers, []
        for future in watchers:
            if not future.done() and not future.get_loop().is_closed():
                future.set_result(None)


_elections: dict[str, _Lease] = {}
"""Election name -> its lease, for the whole process (names are few: they come from config)."""


def reset(name: str | None = None) -> None:
    """Forget one election (or all): for tests that reuse names."""
    if name is None:
        _elections.clear()
    else:
        _elections.pop(name, None)


class MemoryLeaseStore(LeaseStore):
    """The in-process lease of election ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lease = _elections.setdefault(name, _Lease())

    async def try_acquire(
        self, *, identity: str, nonce: str, duration: float,
    ) -> tuple[bool, LeaseRecord]:
        now = time.monotonic()
        lease = self._lease
        lease.vacate_if_expired(now)
        if lease.nonce == nonce:  # ours already (an earlier campaign of this nonce won)
            lease.expires_at = now + duration
            return True, lease.record(now)
        if lease.nonce is not None:
            return False, lease.record(now)
        lease.holder, lease.nonce, lease.expires_at = identity, nonce, now + duration
        lease.term += 1
        lease.notify()
        return True, lease.record(now)

    async def renew(self, *, nonce: str, duration: float) -> int | None:
        now = time.monotonic()
        lease = self._lease
        lease.vacate_if_expired(now)
        if lease.nonce != nonce:
            return None
        lease.expires_at = now + duration
        return lease.term

    async def resign(self, *, nonce: str) -> bool:
        lease = self._lease
        lease.vacate_if_expired(time.monotonic())
        if lease.nonce != nonce:
            return False
        lease.holder = lease.nonce = None
        lease.notify()
        return True

    async def read(self) -> LeaseRecord:
        now = time.monotonic()
        self._lease.vacate_if_expired(now)
        return self._lease.record(now)

    async def wait_for_change(self, *, at_most: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lease.watchers.append(future)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most):
                    await future
        finally:
            with contextlib.suppress(ValueError):
                self._lease.watchers.remove(future)
