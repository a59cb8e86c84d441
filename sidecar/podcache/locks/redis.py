"""Locks on Redis: ``SET NX PX`` plus a fence ``INCR`` in one script, token-checked
release and refresh, and waiters woken through a signal list.

Keys of one lock share a Cluster hash tag, so every script touches one slot:

- ``<prefix>podcache:lock:{<name>}``         owner: the holder's token, expires with the lease
- ``<prefix>podcache:lock:{<name>}:fence``   fence counter, never expires
- ``<prefix>podcache:lock:{<name>}:signal``  release signal: at most one element, short-lived

A key of another type under these names (podcache never writes one: a tenant with an
overlapping ``keyPrefix``, or a hand-made key) does not wedge the lock: the scripts
replace it (an owner key that is not a string cannot be a lease; a fence counter is
re-seeded so that fences keep increasing, see ``redis_topologies.MONOTONIC_COUNTER_LUA``)
and the replacement is logged at ERROR.

Why a signal list rather than pub/sub: a list keeps the signal until someone pops it,
so a release that lands between a waiter's failed attempt and its ``BLPOP`` is not
lost; Redis serves blocked clients first-come first-served; and it needs no
subscription connection. Waiting tasks of one process share one ``BLPOP`` per lock
name, and those ``BLPOP``s run on connections of their own, never the command pool's
(``podcache.backends.redis_waits.WaitLane``): at most ``waitPoolSize`` names are
waited on at once, and a waiter beyond that is refused with ``TooManyWaiters``
while the cache and every other lock call keep their connections.
A waiter blocks for at most the remaining wait, the holder's
remaining PTTL (so a lease that lapses without a release is noticed on time) and a
slice shorter than the operation timeout (the client's socket timeout must not fire
on a legitimately blocked read).

Acquire, refresh and release go through the backend's auto-pipelined connection when
it has one and no replica ack is asked for (``redis_pipeline``: no pool checkout, no
per-command timers, written together with the cache's commands); ``WAIT`` must follow
its write on one connection of its own, so with ``replicaAckTimeout`` (and on Cluster)
they use ``client``.

Improvements over redis-py's ``Lock``: the token is returned to the caller rather
than kept in thread-local state, waiters are woken instead of polling every 100 ms,
refresh and acquire return the fence, and every call is bounded by an operation
timeout and surfaces as ``BackendUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from podcache.backends import redis_pipeline, redis_topologies, redis_waits
from podcache.errors import BackendUnavailable
from podcache.locks.base import Busy, Lease, LockService

T = TypeVar("T")
logger = logging.getLogger(__name__)

SIGNAL_TTL_MS = 5000
"""A release signal nobody pops is dropped after this: waiters re-check the lock far
more often than that, and a stale signal costs at most one spurious retry."""

_MIN_BLOCK = 0.01
"""BLPOP with timeout 0 blocks forever; never send less than this."""


def hash_tag(name: str) -> str:
    """The Cluster hash tag for ``name``: the name itself unless braces would break it."""
    if "{" in name or "}" in name:  # a brace in the tag would end it early or start a new one
        return "sha1:" + hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()
    return name


def lock_keys(prefix: str, name: str) -> tuple[str, str, str]:
    """Owner, fence counter and release-signal keys of lock ``name``."""
    base = f"{prefix}podcache:lock:{{{hash_tag(name)}}}"
    return base, f"{base}:fence", f"{base}:signal"


async def bounded(awaitable: Awaitable[T], *, seconds: float, what: str) -> T:
    """Await a Redis call for at most ``seconds``; any failure is BackendUnavailable.

    BEWARE: on Python 3.11, redis-py sends every command through ``asyncio.wait_for``,
    which swallows a cancellation that lands just as the send completes (CPython
    gh-86296): a ``task.cancel()`` (a ``stop()``, a client that went away) can vanish
    and the task carry on as if nothing happened. The task's ``cancelling()`` count
    still records the request, so we check it after the call and re-raise.
    """
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    try:
        async with asyncio.timeout(seconds):
            result = await awaitable
    except (RedisError, OSError, TimeoutError) as exc:
        _reraise_swallowed_cancel(task, cancels)
        detail = str(exc) or f"timed out after {seconds:.3g}s"
        raise BackendUnavailable(f"redis {what} failed: {detail}") from exc
    _reraise_swallowed_cancel(task, cancels)
    return result


def _reraise_swallowed_cancel(task: asyncio.Task[Any] | None, cancels: int) -> None:
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError("cancelled during a Redis call")


# --- Fence generation: the ONE place that decides how a fence is derived. --------------
# A per-lock counter that never expires, advanced in the same script as the SET NX, so a
# fence is handed out only together with the lock. The counter (a hash {n, epoch}) is
# failover-safe: when the server that advances it is not the one that last did (a
# promoted replica that may have missed the latest writes, a restart, a lost or evicted
# counter), it first jumps to the server clock in microseconds, so a fence already
# handed out is never handed out again. See redis_topologies.MONOTONIC_COUNTER_LUA for
# the guarantee and its clock assumption.
FENCE_LUA = redis_topologies.MONOTONIC_COUNTER_LUA + """
local function next_fence(counter_key)
  return next_counter(counter_key)
end
local function current_fence(counter_key)
  return current_counter(counter_key)
end
"""


class RedisLocks(LockService):
    """Distributed locks with fencing tokens on one Redis (standalone, Sentinel or Cluster)."""

    ACQUIRE_LUA = FENCE_LUA + """
-- KEYS[1] - owner key (holds the owner's token, expires with the lease)
-- KEYS[2] - fence counter (never expires)
-- KEYS[3] - release-signal list
-- ARGV[1] - the new owner's token
-- ARGV[2] - lease ttl in milliseconds
-- return {1, fence, damage} when acquired; {0, pttl, damage} when held (pttl -1: the
--        holder never expires); damage names keys of another type replaced ('' if none)
foreign_key(KEYS[1], 'string')  -- only a string can be a lease: anything else is not one
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3])
  local fence = next_fence(KEYS[2])
  return {1, fence, damage}
end
return {0, redis.call('PTTL', KEYS[1]), damage}
"""

    REFRESH_LUA = FENCE_LUA + """
-- KEYS[1] - owner key
-- KEYS[2] - fence counter
-- ARGV[1] - the caller's token
-- ARGV[2] - new lease ttl in milliseconds
-- return {fence, damage} when extended; nil when the token does not own the lock
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local fence = current_fence(KEYS[2])
  return {fence, damage}
end
return false
"""

    RELEASE_LUA = """
-- KEYS[1] - owner key
-- KEYS[2] - release-signal list
-- ARGV[1] - the caller's token
-- ARGV[2] - lifetime of the release signal in milliseconds
-- return 1 when released (one waiter is woken); 0 when the token does not own the lock
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = "",
        registry: CollectorRegistry | None = None,
        namespace: str = "lab",
        operation_timeout: float = 1.0,
        replica_ack_timeout: float = 0.0,
        waits: redis_waits.WaitLane | None = None,
        pipeline: redis_pipeline.PipelinedConnection | None = None,
    ) -> None:
        """``client`` is a ``redis.asyncio`` Redis or RedisCluster; we never close it.

        ``replica_ack_timeout`` > 0 makes acquire and refresh ``WAIT`` for one replica
        up to that long and report it in ``Lease.replicated``. ``waits`` is where blocked
        waiters ``BLPOP`` (the backend's own lane); without one they use ``client``,
        still at most ``redis_waits.DEFAULT_LIMIT`` at once. ``pipeline`` (the backend's,
        as ``locks.build_locks`` passes it) carries the scripts; without one they go
        through ``client``'s pool, each under a timer of its own: about 0.8x redis-py's
        ``Lock`` per cycle here against 1.3x with it (bench/bench_locks.py).
        """
        super().__init__(registry=registry, namespace=namespace)
        self._client = client
        self._prefix = key_prefix
        self._timeout = operation_timeout
        self._ack_timeout = replica_ack_timeout
        # Blocked reads must end before the client's socket timeout would call them dead.
        self._max_block = max(_MIN_BLOCK, operation_timeout * 0.8)
        self._acquire_script = client.register_script(self.ACQUIRE_LUA)
        self._refresh_script = client.register_script(self.REFRESH_LUA)
        self._release_script = client.register_script(self.RELEASE_LUA)
        # WAIT counts the writes of its own connection: not through the shared pipeline.
        self._pipeline = pipeline if replica_ack_timeout <= 0 else None
        self._piped_scripts = {
            "acquire": redis_pipeline.Script(self.ACQUIRE_LUA),
            "refresh": redis_pipeline.Script(self.REFRESH_LUA),
            "release": redis_pipeline.Script(self.RELEASE_LUA),
        }
        self._waits = waits if waits is not None else redis_waits.WaitLane.sharing(client)
        self._watches: dict[str, asyncio.Future[None]] = {}
        """Per lock name, the wake-up of the one task of ours blocked on its signal list."""

    async def _try_acquire(self, name: str, *, token: str, ttl: float) -> Lease | Busy:
        owner, fence, signal = lock_keys(self._prefix, name)
        sent_at = time.monotonic()
        if self._pipeline is not None:  # the common case, without _write's frame
            reply = await self._piped(
                "acquire", keys=(owner, fence, signal), args=(token, _ms(ttl))
            )
            replicated = None
        else:
            reply, replicated = await self._write(
                self._acquire_script, keys=(owner, fence, signal), args=(token, _ms(ttl)),
                what="acquire",
            )
        acquired, number = int(reply[0]), int(reply[1])
        _report_damage(reply[2], lock=name)
        if not acquired:
            return Busy(expires_in=math.inf if number < 0 else number / 1000)
        return Lease(token=token, fence=number, ttl=ttl, replicated=replicated,
                     acquired_at=sent_at)

    async def _wait_released(self, name: str, *, at_most: float) -> None:
        shared = self._watches.get(name)
        if shared is not None:
            # Another task of ours already blocks on this lock's signal: ride along
            # rather than tie up one more pooled connection per waiting task.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most):
                    await asyncio.shield(shared)
            return
        shared = self._watches[name] = asyncio.get_running_loop().create_future()
        try:
            _, _, signal = lock_keys(self._prefix, name)
            block = max(_MIN_BLOCK, min(at_most, self._max_block))
            with self._waits.reserve(f"waiting for lock {name!r}") as client:
                await bounded(client.blpop([signal], timeout=block),
                              seconds=self._timeout + block, what="wait for release")
        finally:
            del self._watches[name]
            shared.set_result(None)  # riders retry too (and one of them watches next)

    async def _refresh(self, name: str, *, token: str, ttl: float) -> Lease | None:
        owner, fence, _ = lock_keys(self._prefix, name)
        sent_at = time.monotonic()
        if self._pipeline is not None:  # the common case, without _write's frame
            reply = await self._piped("refresh", keys=(owner, fence), args=(token, _ms(ttl)))
            replicated = None
        else:
            reply, replicated = await self._write(
                self._refresh_script, keys=(owner, fence), args=(token, _ms(ttl)),
                what="refresh",
            )
        if reply is None:
            return None
        _report_damage(reply[1], lock=name)
        return Lease(token=token, fence=int(reply[0]), ttl=ttl, replicated=replicated,
                     acquired_at=sent_at)

    async def _release(self, name: str, *, token: str) -> bool:
        owner, _, signal = lock_keys(self._prefix, name)
        if self._pipeline is not None:
            reply = await self._piped("release", keys=(owner, signal), args=(token, SIGNAL_TTL_MS))
            return bool(int(reply))
        call = self._release_script(keys=(owner, signal), args=(token, SIGNAL_TTL_MS))
        reply = await bounded(call, seconds=self._timeout, what="release")
        return bool(int(reply))

    async def _piped(self, what: str, *, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A script through the pipelined connection, which bounds it itself (no timer here)."""
        assert self._pipeline is not None
        try:
            return await self._pipeline.run_script(self._piped_scripts[what], keys, args)
        except redis_pipeline.ReplyError as exc:
            raise BackendUnavailable(f"redis {what} failed: {exc.reply}") from exc
        except BackendUnavailable as exc:
            raise BackendUnavailable(f"redis {what} failed: {exc}") from exc

    async def _write(
        self, script: Any, *, keys: Sequence[str], args: Sequence[object], what: str,
    ) -> tuple[Any, bool | None]:
        """Run a lease-writing script; with a replica-ack timeout, WAIT on the same connection."""
        if self._pipeline is not None:
            return await self._piped(what, keys=keys, args=args), None
        if self._ack_timeout <= 0:
            call = script(keys=keys, args=args)
            return await bounded(call, seconds=self._timeout, what=what), None
        # WAIT counts the writes of *its* connection, so both share one (also on Cluster).
        call = redis_topologies.eval_and_wait(
            self._client, script, keys=keys, args=args,
            replicas=1, timeout_ms=_ms(self._ack_timeout),
        )
        reply, acks = await bounded(call, seconds=self._timeout + self._ack_timeout, what=what)
        return reply, acks >= 1


def _report_damage(damage: bytes | str, *, lock: str) -> None:
    if damage:
        text = damage.decode("utf-8", "replace") if isinstance(damage, bytes) else damage
        logger.error(
            "lock %r: %s, which podcache never writes (another tenant with an overlapping"
            " keyPrefix, or a hand-made key?); replaced: fences keep increasing", lock, text,
        )


def _ms(seconds: float) -> int:
    # Rounded up: the server-side lease is never shorter than the one we report.
    return max(1, math.ceil(seconds * 1000))
