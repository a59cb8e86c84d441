"""What the handlers read on every request, and what a hot reload may replace.

``SidecarState.config`` is the effective config (file plus command-line overrides);
handlers read limits and default TTLs from it per request, so a reload applies to the
next request without touching open connections.

``CacheSlot`` is one backend generation: the ``Cache``, the backend config it was
built from and the leases taken on it. A reload that changes the backend builds a new
slot, switches ``SidecarState.slot`` and retires the old one once the requests that
started on it have finished (``inflight`` is kept by the middleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import web

from podcache import configfile
from podcache.backends.memory import MemoryBackend
from podcache.cache import Cache
from podcache.config import Config, MemorySettings, RedisSettings
from podcache.sidecar import leases
from podcache.sidecar import watches as watches_mod  # the module: watches -> errors -> state
from podcache.sidecar.bodies import BodyBudget

if TYPE_CHECKING:
    from podcache.sidecar.elections import ElectionManager
    from podcache.sidecar.http_metrics import ServerMetrics

logger = logging.getLogger(__name__)


def default_identity() -> str:
    """The pod's identity in elections: ``POD_NAME`` (downward API), else the hostname."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def backend_identity(config: Config) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """What must differ for a reload to need a new backend (the default TTL does not)."""
    settings = dataclasses.asdict(config.settings)
    settings.pop("default_ttl", None)
    return config.type, tuple(sorted((key, repr(value)) for key, value in settings.items()))


class CacheSlot:
    """One backend generation and the requests and leases that use it."""

    def __init__(self, cache: Cache, config: Config) -> None:
        self.cache = cache
        self.config = config
        self.identity = backend_identity(config)
        self.never_blocks = isinstance(config.settings, MemorySettings)
        """No call waits on I/O (the memory backend): the middleware may skip its timer."""
        settings = config.settings
        self.call_bound = settings.operation_timeout if isinstance(settings, RedisSettings) else 0.0
        """Seconds one backend call can take at most: the backend bounds every call itself
        (the memory backend never waits; Redis by its operation timeout). A request of N
        calls with its body already in needs no timer of its own while N * call_bound is
        within the request timeout (``fast_path``)."""
        ack = settings.replica_ack_timeout if isinstance(settings, RedisSettings) else 0.0
        self.lock_call_bound = 2 * self.call_bound + ack
        """Seconds one lock call that does not wait can take at most: two script calls
        (EVALSHA, then EVAL after a NOSCRIPT), plus the replica-ack wait when configured
        (``fast_locks``)."""
        self.leases = leases.LeaseBook()
        self.inflight = 0
        self._idle: asyncio.Event | None = None

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0 and self._idle is not None:
            self._idle.set()

    def resize_in_place(self, config: Config) -> bool:
        """Follow ``config`` without a new backend when only the memory backend's settings
        changed (bounds, reap interval): entries, locks and fences live in the backend
        object, so rebuilding it would lose them. False when a new backend is needed."""
        backend = self.cache.backend
        if not isinstance(config.settings, MemorySettings) or not isinstance(
            backend, MemoryBackend
        ):
            return False
        backend.resize(config.settings)
        self.config = config
        self.identity = backend_identity(config)
        self.cache.config = config
        return True

    def take_leases(self, previous: CacheSlot) -> None:
        """Keep the leases handed out on ``previous`` (same backend type): retiring it must
        not release locks their holders still hold; they refresh and release through us."""
        self.leases, previous.leases = previous.leases, leases.LeaseBook()

    async def drain(self, grace: float) -> bool:
        """Wait until no request uses this slot any more; False if ``grace`` s passed first."""
        if self.inflight <= 0:
            return True
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        return self.inflight <= 0

    async def close(self) -> None:
        """Release the leases taken through the sidecar, then stop the cache (and its backend)."""
        try:
            if len(self.leases):  # cache.locks builds the lock service: only when needed
                await self.leases.release_all(self.cache.locks)
        finally:
            await self.cache.stop()


@dataclasses.dataclass
class SidecarState:
    """The mutable heart of one sidecar instance."""

    config: configfile.SidecarConfig
    slot: CacheSlot
    metrics: ServerMetrics
    elections: ElectionManager
    identity: str
    watch_heartbeat: float = 10.0
    """Seconds of quiet after which a watch stream sends a blank keep-alive line."""
    shutting_down: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    watches: watches_mod.WatchStreams = dataclasses.field(
        default_factory=lambda: watches_mod.WatchStreams()
    )
    """The open watch streams, bounded apart from the connection limit."""
    bodies: BodyBudget = dataclasses.field(default_factory=BodyBudget)
    """Request bodies in memory now, against ``limits.maxInflightBytes``."""

    @property
    def cache(self) -> Cache:
        return self.slot.cache

    @property
    def default_ttl(self) -> float:
        """Seconds for a PUT without ttl: from the current config, so reloads apply at once."""
        return self.config.backend.default_ttl


STATE = web.AppKey("state", SidecarState)
