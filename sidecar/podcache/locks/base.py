"""The lock service interface, the ``Lease`` it hands out, and the parts every backend shares.

A lock is a named lease: ``acquire`` returns a ``Lease`` with a random token (the
proof of ownership for ``refresh``/``release``) and a fencing token (``fence``), an
integer strictly greater than every fence handed out before for that name. A lease
expires by itself after ``ttl`` seconds; holders doing long work ``refresh`` it.

BEWARE: a lease is advisory. A holder that stalls (GC pause, lost network) past its
ttl keeps running while someone else holds the lock. Whatever the lock protects must
check the fence (reject writes carrying a fence lower than one already seen); that is
what fences are for.

``LockService`` implements the parts both backends share (argument checks, the
blocking-wait loop, metrics); a backend supplies four primitives: try once, wait for
a release, refresh and release.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import time
from typing import NamedTuple

from prometheus_client import CollectorRegistry

from podcache import validation
from podcache.errors import BackendUnavailable, InvalidKey, InvalidTTL, TooManyWaiters
from podcache.locks import metrics as lock_metrics
from podcache.locks import tokens

MAX_NAME_BYTES = 1024
"""Same limit as cache keys: names travel as URL path segments on the socket API."""

_PRUNE_FLOOR = 1024
"""Below this many tracked leases we never bother pruning expired bookkeeping."""


@dataclasses.dataclass(frozen=True)
class Lease:
    """Proof of holding a lock, as returned by ``acquire`` and ``refresh``."""

    token: str
    """Random per acquisition; required to refresh or release. Keep it secret-ish."""
    fence: int
    """Fencing token: strictly greater than every earlier fence for this lock name."""
    ttl: float
    """Seconds the lease lasts from ``acquired_at`` unless refreshed."""
    replicated: bool | None = None
    """Whether a replica acknowledged the write (Redis with a replica-ack timeout);
    None when not asked (memory backend, or no replica-ack timeout configured)."""
    acquired_at: float = dataclasses.field(default=0.0, compare=False)
    """``time.monotonic()`` taken just before the granting request was sent, so the
    lease is valid at least until ``acquired_at + ttl`` (the conservative deadline)."""

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` value until which the lease is certainly still ours."""
        return self.acquired_at + self.ttl


class Busy(NamedTuple):
    """An attempt found the lock held by someone else."""

    expires_in: float
    """Seconds until the holder's lease runs out (``math.inf`` if it never does)."""


def check_name(name: object) -> str:
    """Return ``name`` if it is a non-empty str of at most 1024 UTF-8 bytes."""
    return validation.check_name(name, what="lock name", max_bytes=MAX_NAME_BYTES)


def check_ttl(ttl: object, *, what: str = "ttl") -> float:
    """Return ``ttl`` as float seconds if it is a finite number > 0."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidTTL(f"lock {what} must be a number of seconds, got {ttl!r}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise InvalidTTL(f"lock {what} must be a finite number of seconds > 0, got {ttl!r}")
    return float(ttl)


def check_wait(wait: object) -> float:
    """Return ``wait`` as float seconds if it is a finite number >= 0."""
    if wait is None:
        return 0.0
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        raise InvalidTTL(f"lock wait must be a number of seconds, got {wait!r}")
    if not math.isfinite(wait) or wait < 0:
        raise InvalidTTL(f"lock wait must be a finite number of seconds >= 0, got {wait!r}")
    return float(wait)


def check_token(token: object) -> str:
    if not isinstance(token, str) or not token:
        raise InvalidKey(f"lock token must be a non-empty string, got {type(token).__name__}")
    return token


@dataclasses.dataclass
class _Held:
    acquired_at: float
    expires_at: float


def _held_from(lease: Lease) -> _Held:
    return _Held(acquired_at=lease.acquired_at, expires_at=lease.deadline)


class LockService(abc.ABC):
    """Named leases with fencing tokens; see the module docstring for the semantics."""

    def __init__(
        self, *, registry: CollectorRegistry | None = None, namespace: str = "lab",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.namespace = namespace
        self._metrics = lock_metrics.LockMetrics.of(self.registry, namespace=namespace)
        self._metrics.track(self)
        # (name, token) -> when acquired / when it lapses, for the hold-time histogram and
        # the held gauge. Keyed by token, never kept in thread- or task-local state.
        self._held: dict[tuple[str, str], _Held] = {}
        self._prune_at = _PRUNE_FLOOR
        self._stopped = False

    # -- primitives a backend supplies ---------------------------------------------------

    @abc.abstractmethod
    async def _try_acquire(self, name: str, *, token: str, ttl: float) -> Lease | Busy:
        """One atomic attempt: grant a lease with a new fence, or report the holder's expiry."""

    @abc.abstractmethod
    async def _wait_released(self, name: str, *, at_most: float) -> None:
        """Return when the lock may have been released, or after ``at_most`` seconds."""

    @abc.abstractmethod
    async def _refresh(self, name: str, *, token: str, ttl: float) -> Lease | None:
        """Extend the lease if ``token`` still owns it; None otherwise."""

    @abc.abstractmethod
    async def _release(self, name: str, *, token: str) -> bool:
        """Delete the lock if ``token`` still owns it and wake waiters; False otherwise."""

    async def _close(self) -> None:  # noqa: B027  # optional hook
        """Backend-specific clean-up on stop."""

    # -- public API ----------------------------------------------------------------------

    async def acquire(self, name: str, ttl: float, *, wait: float = 0) -> Lease | None:
        """Take the lock for ``ttl`` seconds, waiting up to ``wait`` seconds for it.

        Returns None when the lock stayed held by someone else for the whole wait.
        Raises ``BackendUnavailable`` when the backend does not answer, and
        ``TooManyWaiters`` when it would have to wait but its wait budget is used up.
        """
        name = check_name(name)
        ttl = check_ttl(ttl)
        wait = check_wait(wait)
        self._check_running()
        token = tokens.new_token()
        started = time.monotonic()
        deadline = started + wait
        contended = False
        try:
            while True:
                attempt = await self._try_acquire(name, token=token, ttl=ttl)
                now = time.monotonic()
                if isinstance(attempt, Lease):
                    self._on_acquired(name, attempt)
                    if contended:
                        self._metrics.contention_wait.observe(now - started)
                    self._metrics.acquired.inc()
                    return attempt
                remaining = deadline - now
                if remaining <= 0 or self._stopped:
                    break
                contended = True
                await self._wait_released(name, at_most=min(remaining, attempt.expires_in))
                if self._stopped:
                    break
        except BackendUnavailable:
            self._metrics.acquisitions.labels(outcome="error").inc()
            raise
        except TooManyWaiters:
            self._metrics.acquisitions.labels(outcome="too_many_waiters").inc()
            raise
        if contended:
            self._metrics.contention_wait.observe(time.monotonic() - started)
            self._metrics.acquisitions.labels(outcome="timeout").inc()
        else:
            self._metrics.acquisitions.labels(outcome="contended").inc()
        return None

    async def refresh(self, name: str, token: str, ttl: float) -> Lease | None:
        """Extend a held lease to ``ttl`` seconds from now; None if not owner or expired."""
        name = check_name(name)
        token = check_token(token)
        ttl = check_ttl(ttl)
        self._check_running()
        try:
            lease = await self._refresh(name, token=token, ttl=ttl)
        except BackendUnavailable:
            self._metrics.refreshes.labels(outcome="error").inc()
            raise
        held = self._held.get((name, token))
        if lease is None:
            self._held.pop((name, token), None)
            self._metrics.refreshes.labels(outcome="not_owner").inc()
            return None
        if held is not None:
            held.expires_at = lease.deadline
        else:  # acquired through another instance (e.g. before a config reload)
            self._held[(name, token)] = _held_from(lease)
        self._metrics.refreshed.inc()
        return lease

    async def release(self, name: str, token: str) -> bool:
        """Give the lock up; False if ``token`` does not (or no longer) own it."""
        name = check_name(name)
        token = check_token(token)
        self._check_running()
        try:
            released = await self._release(name, token=token)
        except BackendUnavailable:
            self._metrics.releases.labels(outcome="error").inc()
            raise
        held = self._held.pop((name, token), None)
        if released:
            if held is not None:
                self._metrics.hold.observe(time.monotonic() - held.acquired_at)
            self._metrics.released.inc()
        else:
            self._metrics.releases.labels(outcome="not_owner").inc()
        return released

    async def stop(self) -> None:
        """Stop serving; waiting acquires give up. Held leases are left to expire. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._held.clear()
        await self._close()

    # -- bookkeeping ---------------------------------------------------------------------

    def held_count(self) -> int:
        """How many leases acquired through this service are (as far as we know) held."""
        self._prune(force=True)
        return len(self._held)

    def _on_acquired(self, name: str, lease: Lease) -> None:
        self._held[(name, lease.token)] = _held_from(lease)
        self._prune(force=False)

    def _prune(self, *, force: bool) -> None:
        # Leases that lapse without a release would otherwise pile up; prune amortised.
        if not force and len(self._held) < self._prune_at:
            return
        now = time.monotonic()
        for key in [k for k, h in self._held.items() if h.expires_at <= now]:
            del self._held[key]
        self._prune_at = max(_PRUNE_FLOOR, 2 * len(self._held))

    def _check_running(self) -> None:
        if self._stopped:
            raise BackendUnavailable("the lock service is stopped")
