"""Lock context managers: acquire, refresh in the background while held, release on exit.

``HeldLock`` (a thread refreshes it) serves ``Client.lock``;
``async_locking.AsyncHeldLock`` (a task refreshes it, same rules) serves
``AsyncClient.lock``. Both refresh every ttl/3 and, when a refresh fails, retry
quickly until the lease would have expired.

The lock is LOST, and the holder told (``lost`` turns true, ``lost_event`` is set,
``on_lost`` is called, ``check()`` raises ``LockLost``), when the sidecar refuses a
refresh (another holder has the lock) or when no refresh succeeded before the
lease's expiry. The expiry is counted from the moment the last successful request
was SENT, never from when its reply arrived, so the holder always learns of a loss
no later than the sidecar's own clock would let the lock go. A holder that writes
to shared storage should pass ``fence`` along so the storage can refuse stale
writers: a lost signal can never be instant.
"""

from __future__ import annotations

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
GRANT_MARGIN = 0.05  # after a blocking acquire: the grant came at most this long before its reply


def grant_time(*, sent_at: float, received_at: float, waited: bool) -> float:
    """When the lease began, as early as it could have: its expiry must never be overestimated.

    Without a wait the grant followed the send; after a blocking wait it came just
    before the reply (counting from the send would expire a lease that waited
    longer than its ttl before it was even used).
    """
    return max(sent_at, received_at - GRANT_MARGIN) if waited else sent_at


class LeaseState:
    """The held lease, its expiry as the holder must assume it, and the lost signal's data."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lease: models.Lease | None = None
        self.expires_at = 0.0
        self.lost_reason: str | None = None

    def granted(self, lease: models.Lease, *, sent_at: float) -> None:
        self.lease = lease
        self.expires_at = sent_at + lease.ttl

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
        return self._state.lost_reason

    @property
    def lost(self) -> bool:
        return self._state.lost_reason is not None

    def check(self) -> None:
        """Raise ``LockLost`` if the lock is no longer ours."""
        if self._state.lost_reason is not None:
            raise LockLost(f"lock {self.name!r} was lost: {self._state.lost_reason}",
                           lock_name=self.name)


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
        self._state.granted(lease, sent_at=grant_time(sent_at=sent_at, received_at=time.monotonic(),
                                                      waited=self._wait > 0))
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
            return
        try:
            self._client.release_lock(self.name, token=self.token)
        except NotOwner:
            self._mark_lost("the sidecar no longer knew our token at release")
        except PodcacheError as error:
            # The lease runs out by itself; never mask the body's own exception for this.
            logger.warning("releasing lock %r failed (it expires by its ttl): %s", self.name, error)

    def _refresh_loop(self) -> None:
        delay = self._state.refresh_delay()
        last_error: Exception | None = None
        while not self._stop.wait(delay):
            now = time.monotonic()
            if now >= self._state.expires_at:
                self._mark_lost(f"no refresh succeeded within the {self.ttl:g}s ttl"
                                + (f" (last error: {last_error})" if last_error else ""))
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
        if self._state.lost_reason is not None:
            return
        self._state.lost_reason = reason
        logger.warning("lock %r lost: %s", self.name, reason)
        self.lost_event.set()
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                logger.exception("the on_lost callback of lock %r failed", self.name)
