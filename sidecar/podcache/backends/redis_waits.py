"""The connections lock waiters block on (``BLPOP``), kept apart from the command pool.

A blocked waiter holds its connection for as long as it waits. Taken from the pool
that serves GET/PUT, lock scripts, election renewals and ``/readyz``, enough waiters
on different locks would leave no connection for anything else: every request would
wait for the pool and answer 503, and the pod would turn NotReady. So blocking
commands get their own budget:

- at most ``limit`` blocking commands run at once, on a client of their own whose
  pool holds exactly ``limit`` connections (built lazily: a sidecar whose locks never
  wait opens none), so they never take a connection the cache needs;
- a waiter that finds the budget used up is refused at once with ``TooManyWaiters``
  (the sidecar answers it 429 ``too_many_waiters``): only that waiter, never the cache.

Waiters of one process on one lock name share one ``BLPOP`` (``podcache.locks.redis``),
so the budget bounds the lock names waited on at once, not the waiting requests.

Built for the backend by ``RedisBackend``; ``WaitLane.sharing(client)`` bounds
blocking commands on a client someone else owns (library users who build
``RedisLocks`` on their own client).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

from redis.exceptions import RedisError

from podcache.backends import redis_connection
from podcache.config import RedisSettings
from podcache.errors import TooManyWaiters

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 32
"""Blocking commands at once when nothing configures it (``RedisSettings.wait_pool_size``)."""


class WaitLane:
    """A bounded number of blocking commands on connections of their own."""

    def __init__(self, connect: Callable[[], Any], *, limit: int, owns_client: bool = True) -> None:
        """``connect()`` builds the client (called on first use); ``limit`` >= 1."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.active = 0
        """Blocking commands running now."""
        self.refused = 0
        """Waiters refused because the budget was used up (for tests and metrics)."""
        self._connect = connect
        self._owns_client = owns_client
        self._client: Any = None

    @classmethod
    def for_settings(cls, settings: RedisSettings) -> WaitLane:
        """A lane with its own pool of ``settings.wait_pool_size`` connections."""
        limit = settings.wait_pool_size
        # A pool exactly as big as the budget: no blocking command ever waits for it.
        own = dataclasses.replace(settings, pool_size=limit)
        return cls(lambda: redis_connection.connect(own), limit=limit)

    @classmethod
    def sharing(cls, client: Any, *, limit: int = DEFAULT_LIMIT) -> WaitLane:
        """A lane on ``client``'s own pool (not closed by ``stop``), still bounded."""
        return cls(lambda: client, limit=limit, owns_client=False)

    @contextlib.contextmanager
    def reserve(self, what: str) -> Iterator[Any]:
        """The client for one blocking command; ``TooManyWaiters`` when none is free."""
        if self.active >= self.limit:
            self.refused += 1
            raise TooManyWaiters(
                f"{what}: all {self.limit} wait connections are busy (config.waitPoolSize); "
                "retry later or acquire without wait"
            )
        if self._client is None:
            self._client = self._connect()
        self.active += 1
        try:
            yield self._client
        finally:
            self.active -= 1

    async def stop(self) -> None:
        """Close the lane's own connections (a shared client is left to its owner)."""
        client, self._client = self._client, None
        if client is None or not self._owns_client:
            return
        with contextlib.suppress(RedisError, OSError):  # closing towards a dead Redis
            await client.aclose()
