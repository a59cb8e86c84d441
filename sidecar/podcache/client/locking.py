"""Lock context managers: acquire, refresh in the background while held, release on exit.

``HeldLock`` (a thread refreshes it) serves ``Client.lock``;
``async_locking.AsyncHeldLock`` (a task refreshes it, same rules) serves
``AsyncClient.lock``. Both refresh every ttl/3 and, when a refresh fails, retry
quickly until the lease would have expired.

The lock is LOST, and the holder told (``lost`` turns true, ``lost_event`` is set,
``on_lost`` is called, ``check()`` raises ``LockLost``), when the sidecar refuses a
refresh (another holder has the lock) or when no refresh succeeded before the
lease's deadline. The deadline is counted from the moment the last successful
request was SENT (plus, for a blocking acquire, the wait the sidecar reports in
``waited_ms``), never from when its reply arrived: a reply delayed by a paused
sidecar or a busy Redis may arrive after the lease already ended in Redis. So
``lost`` and ``check()`` consult the deadline themselves at the moment they are
called (the refresh thread may be late), and entering ``lock()`` raises
``LockLost`` rather than hand out a lease already past its deadline. A holder
that writes to shared storage should pass ``fence`` along so the storage can
refuse stale writers: a lost signal can never be instant.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from podcache.client import models, protocol
from podcache.errors import LockLost, NotOwner, PodcacheError

if TYPE_CHECKING:
    from podcache.client.sync_client import Client

logger = logging.getLogger("podcache.client")

REFRESH_FRACTION = 1 / 3  # refresh at ttl/3: two more tries fit before the lease ends
RETRY_FRACTION = 1 / 10  # after a failed refresh, try again soon but not in a tight loop
MAX_RETRY_DELAY = 0.5


class LeaseState:
    """The held lease, its deadline as the holder must assume it, and why it was lost."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lease: models.Lease | None = None
        self.expires_at = 0.0
        self.lost_reason: str | None = None

    def granted(self, lease: models.Lease, *, sent_at: float) -> None:
        """Note a lease from a request sent at ``sent_at`` (``time.monotonic()``)."""
        self.lease = lease
        self.expires_at = sent_at + lease.waited + lease.ttl

    def lost_at(self, now: float) -> str | None:
        """Why the lease is lost at ``now``, or None; a passed deadline is recorded for good."""
        if self.lost_reason is None and self.lease is not None and now >= self.expires_at:
            # Sticky: a refresh answered later must not make a holder that was told
            # "lost" believe it held the lock all along.
            self.lost_reason = (f"its {self.lease.ttl:g}s lease passed its deadline "
                                f"{now - self.expires_at:.3g}s ago with no refresh confirmed")
        return self.lost_reason

    def current(self) -> models.Lease:
        if self.lease is None:
            raise RuntimeError(f"lock {self.name!r} is not held: use it as a context manager")
        return self.lease

    def refresh_delay(self) -> float:
        return self.current().ttl * REFRESH_FRACTION

    def retry_delay(self, now: float) -> float:
        delay = min(self.current().ttl * RETRY_FRACTION, MAX_RETRY_DELAY)
        return max(0.0, min(delay, self.expires_at - now))

    def request_timeout(self, now: float, client_timeout: float) -> float:
        # A refresh answered after the expiry is worthless: never wait past it.
        return max(0.001, min(client_timeout, self.expires_at - now))


def stale_on_arrival(name: str, lease: models.Lease, *, sent_at: float) -> LockLost | None:
    """``LockLost`` when the lease from a request sent at ``sent_at`` is already past its
    deadline (the reply came too late to be of use), else None."""
    state = LeaseState(name)
    state.granted(lease, sent_at=sent_at)
    late = time.monotonic() - state.expires_at
    if late < 0:
        return None
    return LockLost(f"lock {name!r} was granted, but its {lease.ttl:g}s lease ran out "
                    f"{late:.3g}s before the reply arrived: another holder may have it now",
                    lock_name=name)


class HeldLockBase:
    """What both held-lock flavours expose to the holder."""

    _state: LeaseState

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def lease(self) -> models.Lease:
        return self._state.current()

    @property
    def token(self) -> str:
        return self._state.current().token

    @property
    def fence(self) -> int:
        """The fencing token: strictly greater than that of every earlier holder."""
        return self._state.current().fence

    @property
    def ttl(self) -> float:
        return self._state.current().ttl

    @property
    def lost_reason(self) -> str | None:
        return self._state.lost_at(time.monotonic())

    @property
    def lost(self) -> bool:
        """True once the lock may be someone else's: checked against the deadline now."""
        return self._state.lost_at(time.monotonic()) is not None

    def check(self) -> None:
        """Raise ``LockLost`` if the lock is no longer certainly ours (at this very moment)."""
        reason = self._state.lost_at(time.monotonic())
        if reason is not None:
            raise LockLost(f"lock {self.name!r} was lost: {reason}", lock_name=self.name)


class HeldLock(HeldLockBase):
    """``with client.lock("job", ttl=10) as held:`` (sync; a daemon thread refreshes it)."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl: protocol.Duration,
        wait: protocol.Duration,
        on_lost: Callable[[HeldLock], object] | None = None,
    ) -> None:
        self._client = client
        self._state = LeaseState(name)
        self._ttl = protocol.seconds(ttl)
        self._wait = protocol.seconds(wait, field="wait")
        self._on_lost = on_lost
        self.lost_event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HeldLock:
        sent_at = time.monotonic()
        lease = self._client.acquire_lock(self.name, ttl=self._ttl, wait=self._wait)
        stale = stale_on_arrival(self.name, lease, sent_at=sent_at)
        if stale is not None:
            self._release_quietly(lease.token)  # ours or not, the token check keeps this safe
            raise stale
        self._state.granted(lease, sent_at=sent_at)
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                        name=f"podcache-lock-{self.name}")
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost:
            # Past its deadline it may still be ours in Redis: free it for the next holder.
            self._release_quietly(self.token)
            return
        try:
            self._client.release_lock(self.name, token=self.token)
        except NotOwner:
            self._mark_lost("the sidecar no longer knew our token at release")
        except PodcacheError as error:
            # The lease runs out by itself; never mask the body's own exception for this.
            logger.warning("releasing lock %r failed (it expires by its ttl): %s", self.name, error)

    def _release_quietly(self, token: str) -> None:
        # Not ours any more, or the sidecar is away: either way the lease ends by its ttl.
        with contextlib.suppress(PodcacheError):
            self._client.release_lock(self.name, token=token)

    def _refresh_loop(self) -> None:
        delay = self._state.refresh_delay()
        last_error: Exception | None = None
        while not self._stop.wait(delay):
            now = time.monotonic()
            if self._state.lost_reason is None and now >= self._state.expires_at:
                self._mark_lost(f"no refresh succeeded within the {self.ttl:g}s ttl"
                                + (f" (last error: {last_error})" if last_error else ""))
                return
            if self._state.lost_reason is not None:  # a check() saw the deadline pass first
                self._mark_lost(self._state.lost_reason)
                return
            try:
                lease = self._client.refresh_lock(
                    self.name, token=self.token, ttl=self.ttl,
                    request_timeout=self._state.request_timeout(now, self._client.timeout))
            except NotOwner as error:
                self._mark_lost(f"the sidecar refused the refresh: {error}")
                return
            except PodcacheError as error:
                last_error = error
                delay = self._state.retry_delay(time.monotonic())
                continue
            self._state.granted(lease, sent_at=now)
            last_error = None
            delay = self._state.refresh_delay()

    def _mark_lost(self, reason: str) -> None:
        if self.lost_event.is_set():
            return
        if self._state.lost_reason is None:
            self._state.lost_reason = reason
        logger.warning("lock %r lost: %s", self.name, self._state.lost_reason)
        self.lost_event.set()
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                logger.exception("the on_lost callback of lock %r failed", self.name)
