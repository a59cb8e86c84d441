"""The ``Cache`` facade: one backend, its metrics, its locks and electors.

``new_cache(config, namespace)`` is the library's entry point (the seed's
``cache.New``). The facade counts every call exactly once in
``<ns>_cache_requests_total`` and times it in ``<ns>_cache_operation_duration_seconds``;
backends know nothing about metrics. Anything other than a miss that makes a call
fail (Redis down, bad input) is counted with status ``error``.

``<ns>_cache_items``: the memory backend knows its size exactly, so the gauge reads
it at scrape time. For Redis the count costs an incremental SCAN of the tenant's
prefix, so a background task refreshes it every ``items_refresh_interval`` (never
DBSIZE, which would count other tenants, and never KEYS, which blocks Redis).

Locks and electors are built on first use from ``podcache.locks`` and
``podcache.election`` (imported lazily: a plain cache does not load them) and are
stopped by ``Cache.stop()`` before the backend they use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry

from podcache import tasks
from podcache.backends.base import Backend
from podcache.config import Config, MemorySettings, RedisSettings
from podcache.errors import CacheMiss
from podcache.metrics import CacheMetrics, Operation

if TYPE_CHECKING:  # imported lazily at run time: the locks and elections are optional
    from podcache.election.elector import Elector
    from podcache.locks.base import LockService

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Cache:
    """A backend wrapped with metrics; the object applications hold."""

    def __init__(
        self,
        *,
        backend: Backend,
        config: Config,
        namespace: str = "lab",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.namespace = namespace
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = CacheMetrics(self.registry, namespace)
        self._locks: LockService | None = None
        self._electors: list[Elector] = []
        self._items_task: asyncio.Task[None] | None = None
        self._stopped = False
        near = getattr(backend, "near", None)
        if near is not None:  # the Redis backend's near cache (issue 13): its own figures
            from podcache.backends import near_cache

            self.registry.register(near_cache.NearCacheCollector(near, namespace))
        item_count = getattr(backend, "item_count", None)
        if isinstance(item_count, int):
            # Exact and free to read: let each scrape ask the backend.
            self.metrics.track_items(lambda: float(backend.item_count))  # type: ignore[attr-defined]
            self._refresh_interval: float | None = None
        else:
            self._refresh_interval = getattr(config.settings, "items_refresh_interval", None)

    @property
    def default_ttl(self) -> float:
        return self.backend.default_ttl

    # -- cache operations ----------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """Return the value of ``key``; raise ``CacheMiss`` when absent or expired."""
        if self._refresh_interval is not None:  # the hot path skips the call when unused
            self._ensure_items_refresh()
        started = time.perf_counter()
        try:
            value = await self.backend.get(key)
        except CacheMiss:
            self.metrics.observe("get", "miss", time.perf_counter() - started)
            raise
        except Exception:  # a cancelled call did not finish: not counted
            self.metrics.observe("get", "error", time.perf_counter() - started)
            raise
        self.metrics.observe("get", "hit", time.perf_counter() - started)
        return value

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The value of ``key`` and its ETag, counted as a get; ``CacheMiss`` when absent."""
        if self._refresh_interval is not None:
            self._ensure_items_refresh()
        started = time.perf_counter()
        try:
            found = await self.backend.get_with_etag(key)
        except CacheMiss:
            self.metrics.observe("get", "miss", time.perf_counter() - started)
            raise
        except Exception:
            self.metrics.observe("get", "error", time.perf_counter() - started)
            raise
        self.metrics.observe("get", "hit", time.perf_counter() - started)
        return found

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None:
        """Store ``value``; ``ttl`` in seconds, 0 means the default TTL."""
        # Inlined rather than through _counted: no closure and no frame on the hot path.
        self._ensure_items_refresh()
        started = time.perf_counter()
        try:
            await self.backend.set(key, value, ttl)
        except Exception:
            self.metrics.observe("set", "error", time.perf_counter() - started)
            raise
        self.metrics.observe("set", "ok", time.perf_counter() - started)

    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        """Store only if ``key`` is absent; return whether it was stored."""
        return await self._counted("set", lambda: self.backend.set_nx(key, value, ttl))

    async def set_if_match(self, key: str, value: bytes, expected: bytes, ttl: float = 0) -> bool:
        """Store only if the current value equals ``expected``; return whether it was stored."""
        return await self._counted(
            "set", lambda: self.backend.set_if_match(key, value, expected, ttl)
        )

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed (a missing key is not an error)."""
        self._ensure_items_refresh()
        started = time.perf_counter()
        try:
            removed = await self.backend.delete(key)
        except Exception:
            self.metrics.observe("delete", "error", time.perf_counter() - started)
            raise
        self.metrics.observe("delete", "ok", time.perf_counter() - started)
        return removed

    async def ping(self) -> None:
        """Return when the backend answers; raise ``BackendUnavailable`` otherwise."""
        await self.backend.ping()

    async def _counted(self, operation: Operation, call: Callable[[], Awaitable[T]]) -> T:
        self._ensure_items_refresh()
        started = time.perf_counter()
        try:
            result = await call()
        except Exception:
            self.metrics.observe(operation, "error", time.perf_counter() - started)
            raise
        self.metrics.observe(operation, "ok", time.perf_counter() - started)
        return result

    # -- items gauge -----------------------------------------------------------------

    async def refresh_items(self) -> int:
        """Count the backend's items now and update ``<ns>_cache_items``; return the count."""
        count = await self.backend.count_items()
        self.metrics.set_items(count)
        return count

    def start(self) -> None:
        """Start background work now (otherwise it starts on the first call)."""
        start = getattr(self.backend, "start", None)
        if callable(start):
            start()
        self._ensure_items_refresh()

    def _ensure_items_refresh(self) -> None:
        if self._refresh_interval is None or self._stopped:
            return
        if self._items_task is None or self._items_task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._items_task = loop.create_task(
                self._refresh_items_forever(self._refresh_interval), name="podcache-items-refresh"
            )

    async def _refresh_items_forever(self, interval: float) -> None:
        while True:
            try:
                await self.refresh_items()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the last value; the backend may come back
                logger.debug("could not refresh the cache items gauge: %s", exc)
            await asyncio.sleep(interval)

    # -- locks and leader election -----------------------------------------------------

    @property
    def locks(self) -> LockService:
        """The lock service of this cache's backend (created once, on first use)."""
        if self._locks is None:
            from podcache import locks

            self._locks = locks.build_locks(
                self.backend, registry=self.registry, namespace=self.namespace
            )
        return self._locks

    def elector(
        self,
        name: str,
        *,
        identity: str,
        lease_duration: float = 15,
        renew_deadline: float = 10,
        retry_period: float = 2,
        on_elected: Callable[..., Any] | None = None,
        on_revoked: Callable[..., Any] | None = None,
    ) -> Elector:
        """A leader elector for election ``name`` campaigning as ``identity`` (not started)."""
        from podcache import election

        elector = election.build_elector(
            self.backend,
            name=name,
            identity=identity,
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
            on_elected=on_elected,
            on_revoked=on_revoked,
            registry=self.registry,
            namespace=self.namespace,
        )
        self._electors.append(elector)
        return elector

    # -- lifecycle -------------------------------------------------------------------------

    async def stop(self) -> None:
        """Resign elections, stop locks and background tasks, then the backend. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        # Electors first: they resign through the backend, which must still be up.
        for obj in [*reversed(self._electors), self._locks]:
            stop = getattr(obj, "stop", None)
            if stop is None:
                continue
            try:
                await stop()
            except Exception:
                logger.exception("stopping %r failed; continuing shutdown", obj)
        self._electors.clear()
        task, self._items_task = self._items_task, None
        if task is not None and (error := await tasks.cancel_and_wait(task)) is not None:
            logger.debug("items refresh task ended with %r", error)
        await self.backend.stop()

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def new_cache(
    config: Config, namespace: str = "lab", *, registry: CollectorRegistry | None = None
) -> Cache:
    """Build the backend ``config`` describes and wrap it with metrics on its own registry."""
    settings = config.settings
    backend: Backend
    if isinstance(settings, MemorySettings):
        from podcache.backends.memory import MemoryBackend

        backend = MemoryBackend(settings)
    elif isinstance(settings, RedisSettings):
        from podcache.backends.redis import RedisBackend  # keeps redis unloaded for memory use

        backend = RedisBackend(settings)
    else:  # pragma: no cover - Config validation makes this unreachable
        raise TypeError(f"unsupported settings {type(settings).__name__}")
    return Cache(backend=backend, config=config, namespace=namespace, registry=registry)
