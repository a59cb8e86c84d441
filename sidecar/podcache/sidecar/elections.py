"""The elections this sidecar campaigns in, and the watchers streaming their changes.

Elections listed in the config are joined at start; ``PUT``/``DELETE
/v1/leader/{name}`` join and leave others at run time. Each ``Election`` owns one
elector on the current cache; a backend swap (``rebind``) resigns on the old
backend and campaigns again on the new one.

Watch streams must survive such a swap, so they do not subscribe to the elector
(whose subscription ends when it stops) but to the ``Election``: a small task
follows the current elector's ``subscribe()`` and republishes every change of
(leader, holder, term) to the election's watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from podcache.cache import Cache
from podcache.configfile import ElectionSettings
from podcache.election.elector import LeaderState
from podcache.sidecar.http_metrics import ServerMetrics

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0
"""Seconds an elector may take to resign and stop: a shutdown must never hang on it."""


class Election:
    """One joined election: its elector, its last known state and its watchers."""

    def __init__(self, settings: ElectionSettings, *, identity: str, from_config: bool) -> None:
        self.settings = settings
        self.identity = identity
        self.from_config = from_config
        self.elector: Any = None
        self._state = LeaderState(leader=False, holder=None, term=0)
        self._changed = asyncio.Event()
        self._closed = False
        self._follower: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def state(self) -> LeaderState:
        """The state to serve: ``leader`` is checked against the renew deadline right now
        (see ``Elector.state``), not taken from the last published change."""
        state = self._state
        elector = self.elector
        if state.leader and (elector is None or not elector.is_leader):
            return LeaderState(leader=False, holder=None, term=state.term)
        return state

    async def start(self, cache: Cache) -> None:
        """Campaign on ``cache``'s backend (the elector renews and retries by itself)."""
        elector = cache.elector(
            self.name,
            identity=self.identity,
            lease_duration=self.settings.lease_duration,
            renew_deadline=self.settings.renew_deadline,
            retry_period=self.settings.retry_period,
        )
        await elector.start()
        self.elector = elector
        self._follower = asyncio.create_task(
            self._follow(elector), name=f"podcache-election-{self.name}"
        )

    async def _follow(self, elector: Any) -> None:
        async for state in elector.subscribe():
            self._publish(state)

    async def stop_elector(self) -> None:
        """Resign (so a successor takes over at once) and stop campaigning."""
        elector, self.elector = self.elector, None
        follower, self._follower = self._follower, None
        if elector is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await elector.stop()
            except TimeoutError:
                logger.error(
                    "election %r: the elector did not stop within %ss; going on",
                    self.name,
                    STOP_TIMEOUT,
                )
            except Exception:
                logger.exception("resigning election %r failed", self.name)
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        self._publish(LeaderState(leader=False, holder=None, term=self._state.term))

    async def close(self) -> None:
        """Leave the election for good: resign, drop its metric series, end the watch streams."""
        elector = self.elector
        await self.stop_elector()
        if elector is not None and not elector.running:
            elector.forget_metrics()
        self.close_watchers()

    def close_watchers(self) -> None:
        self._closed = True
        self._signal()

    def _publish(self, state: LeaderState) -> None:
        if state == self._state:
            return
        if state.leader != self._state.leader:
            logger.info(
                "election %r: %s (holder %s, term %d)",
                self.name,
                "elected" if state.leader else "not leader",
                state.holder,
                state.term,
            )
        self._state = state
        self._signal()

    def _signal(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changes(self, *, heartbeat: float) -> AsyncIterator[LeaderState | None]:
        """The current state, then each new one; ``None`` after ``heartbeat`` s of quiet.

        Ends when the election is left or the sidecar shuts down.
        """
        last: LeaderState | None = None
        while True:
            current = self.state
            if current != last:
                last = current
                yield current
                continue
            if self._closed:
                return
            event = self._changed
            try:
                async with asyncio.timeout(heartbeat):
                    await event.wait()
            except TimeoutError:
                yield None


class ElectionManager:
    """Joined elections by name."""

    def __init__(self, *, identity: str, metrics: ServerMetrics) -> None:
        self.identity = identity
        self._metrics = metrics
        self._elections: dict[str, Election] = {}
        self._cache: Cache | None = None
        self._lock = asyncio.Lock()  # join/leave/rebind never interleave

    def get(self, name: str) -> Election | None:
        return self._elections.get(name)

    def names(self) -> list[str]:
        return sorted(self._elections)

    async def start(self, cache: Cache, elections: Iterable[ElectionSettings]) -> None:
        self._cache = cache
        for settings in elections:
            await self.join(settings, from_config=True)

    async def join(self, settings: ElectionSettings, *, from_config: bool = False) -> Election:
        """Campaign in ``settings.name`` (idempotent; changed timings restart the elector)."""
        async with self._lock:
            assert self._cache is not None, "ElectionManager.start() first"
            existing = self._elections.get(settings.name)
            if existing is not None:
                existing.from_config = existing.from_config or from_config
                if existing.settings != settings:
                    # New timings: a new elector, but the same Election, so watches go on.
                    await existing.stop_elector()
                    existing.settings = settings
                    await existing.start(self._cache)
                return existing
            election = Election(
                settings,
                identity=self.identity,
                from_config=from_config,
            )
            await election.start(self._cache)
            self._elections[settings.name] = election
            self._metrics.elections_joined.set(len(self._elections))
            logger.info("joined election %r as %r", settings.name, self.identity)
            return election

    async def leave(self, name: str) -> bool:
        """Resign and stop campaigning in ``name``; False when it was not joined."""
        async with self._lock:
            election = self._elections.pop(name, None)
            self._metrics.elections_joined.set(len(self._elections))
        if election is None:
            return False
        await election.close()
        logger.info("left election %r", name)
        return True

    async def apply(self, elections: Iterable[ElectionSettings]) -> None:
        """Follow a reloaded config: join new ones, retime changed ones, leave removed ones.

        Elections joined at run time (``PUT``) are kept: the application asked for them.
        """
        wanted = {settings.name: settings for settings in elections}
        for name, election in list(self._elections.items()):
            if election.from_config and name not in wanted:
                await self.leave(name)
        for settings in wanted.values():
            await self.join(settings, from_config=True)

    async def rebind(self, cache: Cache) -> None:
        """Move every election to a new backend: resign on the old one, campaign on the new."""
        async with self._lock:
            self._cache = cache
            for election in self._elections.values():
                await election.stop_elector()
                try:
                    await election.start(cache)
                except Exception:
                    logger.exception(
                        "could not rejoin election %r on the new backend", election.name
                    )

    def close_watchers(self) -> None:
        """End every watch stream (at shutdown, before waiting for in-flight requests)."""
        for election in self._elections.values():
            election.close_watchers()

    async def stop(self) -> None:
        """Resign every election (a successor takes over at once)."""
        async with self._lock:
            elections = list(self._elections.values())
            self._elections.clear()
            self._metrics.elections_joined.set(0)
        await asyncio.gather(*(election.close() for election in elections))
