"""The Redis backend: one tenant's keys on a shared Redis, with bounded waits.

Isolation: every key is stored as ``key_prefix + key``; the item count SCANs only
``<escaped prefix>*``. Two CacheConfigs with different prefixes never read, write or
count each other's keys (a prefix that is itself a prefix of another tenant's, e.g.
``a`` and ``ab``, is the operator's business: use a separator such as ``shop:``).

Failure policy: a dead or paused Redis gives ``BackendUnavailable`` within
``operation_timeout`` instead of a hang, and every error is mapped to it (chained with
``from``). Calls through redis-py run under ``asyncio.timeout(operation_timeout)`` on top
of its socket timeouts; calls through ``pipeline`` carry one deadline each that the
pipelined connection enforces itself. Both reconnect by themselves when Redis comes
back: nothing needs to be recreated.

Reads: ``get`` goes to Sentinel replicas only when ``readFromReplicas`` is set (they
lag); conditional writes, locks and elections always use the primary.

Connections, by kind of traffic, so that no kind can starve another:

- ``pipeline``: one auto-pipelined connection (``redis_pipeline``, issue 11) for the
  hot path: GET, SET (plain, NX, compare-and-set), DEL and ``/readyz``'s PING.
  Standalone and Sentinel only; on Cluster it is None and these go through ``client``
  (redis-py's slot routing; the near cache's GETs too, see ``near_cluster``), and with
  ``readFromReplicas`` GETs stay on ``_reader``.
- ``client`` (and ``_reader``): a pool of ``poolSize`` for short commands: lock and
  election scripts, the item count's SCAN, and the hot path on Cluster. Nothing holds
  one of its connections longer than one command.
- ``waits``: ``waitPoolSize`` connections for lock waiters blocked in ``BLPOP``
  (``redis_waits``); a waiter beyond them is refused, not queued on ``client``.
- ``notices``: one pub/sub connection shared by every election's change notices
  (``redis_notices``), open only while an election listens.

``client``, ``waits``, ``notices``, ``key_prefix``, ``settings`` and ``key()`` are
public: the Redis locks and elections (``podcache.locks``, ``podcache.election``)
build on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from podcache import validation
from podcache.backends import (
    near_cache,
    near_cluster,
    redis_connection,
    redis_notices,
    redis_pipeline,
    redis_waits,
)
from podcache.backends.base import Backend
from podcache.config import RedisSettings
from podcache.errors import BackendUnavailable, CacheMiss

T = TypeVar("T")

SCAN_COUNT = 1000
"""Keys Redis examines per SCAN step: big enough to be quick, small enough not to block it."""

_GLOB_SPECIAL = frozenset("*?[]\\^-")  # ^ and - only matter inside [...]; escaping is harmless

INTERNAL_KEY_SPACES = ("podcache:lock:", "podcache:leader:")
"""Lock and election keys (``podcache.locks``, ``podcache.election``) share the tenant
prefix; they are not cache items, so the item count leaves them out."""


def escape_glob(text: str) -> str:
    """Escape Redis MATCH metacharacters so ``text`` matches only itself."""
    return "".join("\\" + char if char in _GLOB_SPECIAL else char for char in text)


def ttl_ms(seconds: float) -> int:
    """Seconds as whole milliseconds for PX, rounded up so a tiny TTL is not 0 (refused)."""
    return max(1, math.ceil(seconds * 1000))


def _named(what: str, exc: BackendUnavailable) -> BackendUnavailable:
    """A pipelined call's failure, naming the command like ``RedisBackend.call`` does."""
    if isinstance(exc, redis_pipeline.ReplyError):
        return BackendUnavailable(f"redis {what} failed: {exc.reply}")
    return BackendUnavailable(f"redis {what}: {exc}")


class RedisBackend(Backend):
    """Key/value storage on Redis (standalone, Sentinel or Cluster) under a key prefix."""

    SET_IF_MATCH_SCRIPT = """
-- Compare-and-set of one cache entry.
-- KEYS[1] - the prefixed key
-- ARGV[1] - the value the caller expects to find
-- ARGV[2] - the new value
-- ARGV[3] - the new TTL in milliseconds
-- return 1 if the current value equals ARGV[1] and was replaced, 0 if absent or different
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
"""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.default_ttl = settings.default_ttl
        self.key_prefix: str = settings.key_prefix
        self.client = redis_connection.connect(settings)
        self._reader = redis_connection.connect_reader(settings, self.client)
        self.waits = redis_waits.WaitLane.for_settings(settings)
        self.notices = redis_notices.NoticeHub(self.client, timeout=settings.operation_timeout)
        # register_script computes the SHA once; calls run EVALSHA and load on NOSCRIPT.
        self._set_if_match = self.client.register_script(self.SET_IF_MATCH_SCRIPT)
        self.pipeline: redis_pipeline.PipelinedConnection | None = None
        if settings.cluster is None:
            self.pipeline = redis_pipeline.PipelinedConnection(settings)
        # Replicas lag: reads go to them only through redis-py's replica pool.
        self._piped_reads = self.pipeline if self._reader is self.client else None
        self.near: near_cache.NearCache | None = None
        """The near cache (issue 13), when ``config.nearCache.enabled``: on the pipelined
        connection, or on Cluster one invalidation channel per primary (``near_cluster``);
        config validation refuses it where reads go to replicas."""
        if settings.near_cache.enabled:
            if isinstance(self.client, RedisCluster):
                self.near = near_cluster.new_near_cache(settings, self.client)
            elif self._piped_reads is not None:
                self.near = near_cache.on_pipeline(settings, self._piped_reads)
        self._set_if_match_piped = redis_pipeline.Script(self.SET_IF_MATCH_SCRIPT)
        self._internal = tuple((self.key_prefix + space).encode() for space in INTERNAL_KEY_SPACES)
        self._stopped = False

    def key(self, name: str) -> str:
        """The Redis key for ``name`` under this tenant's prefix."""
        return self.key_prefix + name

    async def call(self, what: str, awaitable: Awaitable[T]) -> T:
        """Await a Redis command with the operation timeout, mapping failures to one error."""
        if self._stopped:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # never awaited: avoid the "coroutine was never awaited" warning
            raise BackendUnavailable("the redis backend has been stopped")
        timeout = self.settings.operation_timeout
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except TimeoutError as exc:
            raise BackendUnavailable(f"redis did not answer {what} within {timeout:g}s") from exc
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis {what} failed: {exc}") from exc

    async def piped(self, what: str, reply: Awaitable[T]) -> T:
        """Await a reply of ``pipeline``, naming ``what`` in its errors like ``call`` does."""
        try:
            return await reply
        except BackendUnavailable as exc:
            raise _named(what, exc) from exc

    def _pipe(self) -> redis_pipeline.PipelinedConnection | None:
        if self._stopped:
            raise BackendUnavailable("the redis backend has been stopped")
        return self.pipeline

    # -- operations --------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        validation.check_key(key)
        if self._stopped:
            raise BackendUnavailable("the redis backend has been stopped")
        near = self.near
        if near is not None:
            if near.serving:  # NearCache.local inlined: one frame less on the hit path
                copy = near.store.peek(key)
                if copy is not None:
                    near.hits += 1
                    return copy
            return await near.fetch(key)
        pipe = self._piped_reads
        if pipe is not None:
            try:  # inlined, not self.piped(): one frame less on the hottest call
                value = await pipe.execute(b"GET", self.key_prefix + key)
            except BackendUnavailable as exc:
                raise _named("GET", exc) from exc
        else:
            value = await self.call("GET", self._reader.get(self.key(key)))
        if value is None:
            raise CacheMiss(key)
        return value if isinstance(value, bytes) else value.encode()

    async def _do_set(self, key: str, value: bytes, ttl: float = 0) -> None:
        key, value, seconds = self._checked(key, value, ttl)
        pipe = self._pipe()
        if pipe is not None:
            try:
                await pipe.execute(b"SET", self.key_prefix + key, value, b"PX", ttl_ms(seconds))
            except BackendUnavailable as exc:
                raise _named("SET", exc) from exc
            return
        await self.call("SET", self.client.set(self.key(key), value, px=ttl_ms(seconds)))

    async def _do_set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        key, value, seconds = self._checked(key, value, ttl)
        pipe = self._pipe()
        if pipe is not None:
            stored = await self.piped(
                "SET NX",
                pipe.execute(b"SET", self.key(key), value, b"PX", ttl_ms(seconds), b"NX"),
            )
            return stored is not None
        stored = await self.call(
            "SET NX", self.client.set(self.key(key), value, px=ttl_ms(seconds), nx=True)
        )
        return bool(stored)

    async def _do_set_if_match(
        self, key: str, value: bytes, expected: bytes, ttl: float = 0
    ) -> bool:
        key, value, seconds = self._checked(key, value, ttl)
        expected = validation.check_value(expected)
        pipe = self._pipe()
        if pipe is not None:
            replaced = await self.piped(
                "set_if_match",
                pipe.run_script(self._set_if_match_piped, [self.key(key)],
                                [expected, value, ttl_ms(seconds)]),
            )
            return bool(replaced)
        replaced = await self.call(
            "set_if_match",
            self._set_if_match(keys=[self.key(key)], args=[expected, value, ttl_ms(seconds)]),
        )
        return bool(replaced)

    async def _do_delete(self, key: str) -> bool:
        validation.check_key(key)
        pipe = self._pipe()
        if pipe is not None:
            return bool(await self.piped("DEL", pipe.execute(b"DEL", self.key(key))))
        removed = await self.call("DEL", self.client.delete(self.key(key)))
        return bool(removed)

    # Writes through this sidecar drop the near cache's copy before they are sent (no
    # GET in flight may keep an older value) and again once answered (read-your-writes).

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None:
        near = self.near
        if near is None:
            return await self._do_set(key, value, ttl)
        near.forget(key)
        try:
            return await self._do_set(key, value, ttl)
        finally:
            near.forget(key)

    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        return await self.written((key,), self._do_set_nx(key, value, ttl))

    async def set_if_match(self, key: str, value: bytes, expected: bytes, ttl: float = 0) -> bool:
        return await self.written((key,), self._do_set_if_match(key, value, expected, ttl))

    async def delete(self, key: str) -> bool:
        return await self.written((key,), self._do_delete(key))

    async def written(self, keys: Sequence[str], write: Awaitable[T]) -> T:
        """Await ``write`` of ``keys`` with their near-cache copies dropped around it (the
        keyspace's writes use it too)."""
        near = self.near
        if near is None:
            return await write
        for key in keys:
            near.forget(key)
        try:
            return await write
        finally:
            for key in keys:
                near.forget(key)

    async def ping(self) -> None:
        pipe = self._pipe()
        if pipe is not None:
            # The hot path's own connection: /readyz says whether *it* can reach Redis.
            await self.piped("PING", pipe.execute(b"PING"))
            return
        await self.call("PING", self.client.ping())

    async def count_items(self) -> int:
        """Cache keys under the prefix, by an incremental SCAN (each step bounded by the timeout).

        Lock and election keys are not counted. SCAN may return a key twice while Redis
        resizes its table, so the figure is approximate: right for a gauge.
        """
        pattern = escape_glob(self.key_prefix) + "*"
        if isinstance(self.client, RedisCluster):
            return await self._count_cluster(pattern)
        count = 0
        cursor = 0
        while True:
            cursor, keys = await self.call(
                "SCAN", self.client.scan(cursor, match=pattern, count=SCAN_COUNT)
            )
            count += sum(1 for key in keys if not self._is_internal(key))
            if cursor == 0:
                return count

    async def _count_cluster(self, pattern: str) -> int:
        # scan_iter walks every primary; bound each step, not the whole walk.
        count = 0
        keys = self.client.scan_iter(match=pattern, count=SCAN_COUNT)
        while True:
            try:
                key = await self.call("SCAN", anext(keys))
            except StopAsyncIteration:
                return count
            if not self._is_internal(key):
                count += 1

    def _is_internal(self, key: bytes | str) -> bool:
        raw = key if isinstance(key, bytes) else key.encode()
        return raw.startswith(self._internal)

    def start(self) -> None:
        """Open the near cache's invalidation channel now (otherwise on the first GET)."""
        if self.near is not None:
            self.near.start()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.near is not None:
            await self.near.stop()
        await self.notices.stop()
        await self.waits.stop()
        if self.pipeline is not None:
            await self.pipeline.aclose()
        # Closing connections to a dead Redis has nothing left to release.
        with contextlib.suppress(RedisError, OSError):
            if self._reader is not self.client:
                await self._reader.aclose()
            await self.client.aclose()

    # -- internals ----------------------------------------------------------------

    def _checked(self, key: str, value: bytes, ttl: float) -> tuple[str, bytes, float]:
        key = validation.check_key(key)
        value = validation.check_value(value)
        return key, value, validation.resolve_ttl(ttl, self.default_ttl)
