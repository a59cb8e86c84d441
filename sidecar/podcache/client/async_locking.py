"""The asyncio flavour of ``locking.HeldLock``: ``async with client.lock(...) as held``.

Same rules as the sync one (see ``locking``): refresh every ttl/3, retry quickly
after a failed refresh, signal the loss when the sidecar refuses the refresh or no
refresh succeeded before the lease's deadline (counted from the send), and never
hand out a lease already past its deadline. Kept apart so the sync client
and the CLI never import asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from podcache.client import protocol
from podcache.client.locking import HeldLockBase, LeaseState, logger, stale_on_arrival
from podcache.errors import NotOwner, PodcacheError

if TYPE_CHECKING:
    from podcache.client.async_client import AsyncClient


class AsyncHeldLock(HeldLockBase):
    """``async with client.lock("job", ttl=10) as held:`` (a task refreshes it)."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        ttl: protocol.Duration,
        wait: protocol.Duration,
        on_lost: Callable[[AsyncHeldLock], object | Awaitable[object]] | None = None,
    ) -> None:
        self._client = client
        self._state = LeaseState(name)
        self._ttl = protocol.seconds(ttl)
        self._wait = protocol.seconds(wait, field="wait")
        self._on_lost = on_lost
        self.lost_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncHeldLock:
        sent_at = time.monotonic()
        lease = await self._client.acquire_lock(self.name, ttl=self._ttl, wait=self._wait)
        stale = stale_on_arrival(self.name, lease, sent_at=sent_at)
        if stale is not None:
            await self._release_quietly(lease.token)  # the token check keeps this safe
            raise stale
        self._state.granted(lease, sent_at=sent_at)
        self._task = asyncio.create_task(self._refresh_loop(), name=f"podcache-lock-{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.lost:
            # Past its deadline it may still be ours in Redis: free it for the next holder.
            await self._release_quietly(self.token)
            return
        try:
            await self._client.release_lock(self.name, token=self.token)
        except NotOwner:
            await self._mark_lost("the sidecar no longer knew our token at release")
        except PodcacheError as error:
            logger.warning("releasing lock %r failed (it expires by its ttl): %s", self.name, error)

    async def _release_quietly(self, token: str) -> None:
        # Not ours any more, or the sidecar is away: either way the lease ends by its ttl.
        with contextlib.suppress(PodcacheError):
            await self._client.release_lock(self.name, token=token)

    async def wait_lost(self) -> str:
        """Wait until the lock is lost; return why (handy in ``asyncio.wait`` next to the work)."""
        await self.lost_event.wait()
        return self._state.lost_reason or ""

    async def _refresh_loop(self) -> None:
        delay = self._state.refresh_delay()
        last_error: Exception | None = None
        while True:
            await asyncio.sleep(delay)
            now = time.monotonic()
            if self._state.lost_reason is None and now >= self._state.expires_at:
                await self._mark_lost(f"no refresh succeeded within the {self.ttl:g}s ttl"
                                      + (f" (last error: {last_error})" if last_error else ""))
                return
            if self._state.lost_reason is not None:  # a check() saw the deadline pass first
                await self._mark_lost(self._state.lost_reason)
                return
            try:
                lease = await self._client.refresh_lock(
                    self.name, token=self.token, ttl=self.ttl,
                    request_timeout=self._state.request_timeout(now, self._client.timeout))
            except NotOwner as error:
                await self._mark_lost(f"the sidecar refused the refresh: {error}")
                return
            except PodcacheError as error:
                last_error = error
                delay = self._state.retry_delay(time.monotonic())
                continue
            self._state.granted(lease, sent_at=now)
            last_error = None
            delay = self._state.refresh_delay()

    async def _mark_lost(self, reason: str) -> None:
        if self.lost_event.is_set():
            return
        if self._state.lost_reason is None:
            self._state.lost_reason = reason
        logger.warning("lock %r lost: %s", self.name, self._state.lost_reason)
        self.lost_event.set()
        if self._on_lost is not None:
            try:
                result: Any = self._on_lost(self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("the on_lost callback of lock %r failed", self.name)
