"""One multiplexed pub/sub connection per backend, shared by every election's change notices.

A Redis pub/sub subscription holds its connection for as long as it lasts. One per
election, taken from the command pool, meant that joining as many elections as the
pool has connections left nothing for GET/PUT, lock calls or ``/readyz``: every one of
them answered 503 and the pod turned NotReady. Here every channel of a backend rides
on ONE connection:

- ``subscribe(channel)`` returns a ``Subscription``; ``Subscription.wait(at_most)``
  returns on a notice on its channel, or after ``at_most`` seconds. A notice that
  arrives while nobody waits is remembered (the next wait returns at once), as it was
  when each store read its own connection's buffer.
- One reader task per hub reads the connection; SUBSCRIBE/UNSUBSCRIBE for a channel
  added or dropped later are sent by the caller on the same connection (a send and the
  reader's pending read use the two halves of the stream, never both the same half).
- The connection exists only while some channel is subscribed; it is dropped when the
  last ``Subscription`` closes.
- Losing the connection wakes every subscription once (a notice may have been missed:
  re-check now) and reconnects with a capped backoff, resubscribing every channel.
  A connection that stops answering is noticed by a PING after ``READ_SLICE`` seconds
  of silence, answered or not within the next one.

Notices only make followers react sooner; correctness never depends on them (electors
re-check every retry period and when a lease is due to expire), so every failure here
is logged at DEBUG and never raised to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

logger = logging.getLogger(__name__)

READ_SLICE = 5.0
"""Seconds of silence after which the reader PINGs; a second silent slice drops the connection."""

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
"""Reconnect delays: short for a blip, capped so notices resume soon after an outage."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class Subscription:
    """One subscriber's view of a channel of a ``NoticeHub``."""

    def __init__(self, hub: NoticeHub, channel: str) -> None:
        self.hub = hub
        self.channel = channel
        self._pending = False
        self._waiters: list[asyncio.Future[None]] = []
        self.closed = False

    def notify(self) -> None:
        """A notice arrived (or may have been missed): wake the waiters, or the next one."""
        self._pending = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, *, at_most: float) -> None:
        """Return on a notice on this channel, or after ``at_most`` seconds."""
        if not self._pending and at_most > 0:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(at_most):
                        await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._pending = False

    async def close(self) -> None:
        """Stop listening (idempotent); the hub unsubscribes when nobody else listens."""
        if not self.closed:
            self.closed = True
            await self.hub.unsubscribe(self)


class NoticeHub:
    """The pub/sub connection of one Redis client; see the module docstring."""

    def __init__(self, client: Any, *, timeout: float) -> None:
        """``client``: a ``redis.asyncio`` Redis or RedisCluster (never closed here);
        ``timeout``: bound of each subscribe, unsubscribe and PING."""
        self._client = client
        self._timeout = timeout
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._pubsub: Any = None
        """The connected PubSub, None while (re)connecting or idle."""
        self._sent: set[str] = set()
        """Channels SUBSCRIBE was sent for on the current connection."""
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.connections_made = 0
        """Connections opened so far (for tests: one per hub, not one per channel)."""

    @property
    def channels(self) -> list[str]:
        return sorted(self._subscriptions)

    async def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel``; returns once Redis confirmed it or ``timeout`` passed."""
        subscription = Subscription(self, channel)
        first = channel not in self._subscriptions
        self._subscriptions.setdefault(channel, set()).add(subscription)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="podcache-notices")
        if first:
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations.setdefault(channel, []).append(confirmed)
            await self._send_subscribe(channel)
            # Only once Redis confirmed are notices published after this call ours.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await asyncio.shield(confirmed)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        listeners = self._subscriptions.get(subscription.channel)
        if listeners is None:
            return
        listeners.discard(subscription)
        if listeners:
            return
        del self._subscriptions[subscription.channel]
        self._confirmations.pop(subscription.channel, None)
        if not self._subscriptions:
            await self._disconnect()  # nobody listens: no connection at all
            return
        pubsub = self._pubsub
        if pubsub is not None and subscription.channel in self._sent:
            self._sent.discard(subscription.channel)
            await self._quietly("unsubscribe", pubsub.unsubscribe(subscription.channel))

    async def stop(self) -> None:
        """Drop every subscription and the connection (a later ``subscribe`` starts over)."""
        self._subscriptions.clear()
        await self._disconnect()

    # -- the connection ------------------------------------------------------------------

    async def _send_subscribe(self, channel: str) -> None:
        pubsub = self._pubsub
        if pubsub is None or channel in self._sent:
            return  # the reader subscribes every wanted channel once it is connected
        self._sent.add(channel)
        if not await self._quietly("subscribe", pubsub.subscribe(channel)):
            self._sent.discard(channel)

    async def _quietly(self, what: str, call: Any) -> bool:
        """Await a pub/sub command within the timeout; False (logged) when it failed."""
        try:
            async with asyncio.timeout(self._timeout):
                await call
        except Exception as exc:  # notices are an optimisation: never fail the caller
            logger.debug("change notices: %s failed: %s", what, exc or type(exc).__name__)
            return False
        return True

    async def _read_forever(self) -> None:
        backoff = BACKOFF_FIRST
        reconnecting = False
        while self._subscriptions:
            connected = False
            try:
                pubsub = await self._connect()
                connected = True
                if reconnecting:
                    self._wake_all()  # notices sent while we were away are lost: re-check
                backoff = BACKOFF_FIRST
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("change notices: connection lost: %s", exc or type(exc).__name__)
            finally:
                await self._drop_connection()
            if not self._subscriptions:
                return
            if connected:
                self._wake_all()  # a notice may have been lost with the connection
            reconnecting = True
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _connect(self) -> Any:
        if isinstance(self._client, RedisCluster):
            await self._client.initialize()  # cluster pub/sub picks its node from the slot map
        pubsub = self._client.pubsub()
        try:
            channels = list(self._subscriptions)
            async with asyncio.timeout(self._timeout):
                await pubsub.subscribe(*channels)
        except BaseException:
            await _close(pubsub)
            raise
        self.connections_made += 1
        self._pubsub = pubsub
        self._sent = set(channels)
        for channel in list(self._subscriptions):  # added while we were connecting
            await self._send_subscribe(channel)
        return pubsub

    async def _read(self, pubsub: Any) -> None:
        silent = 0
        while self._subscriptions:
            message = await pubsub.get_message(timeout=READ_SLICE)
            if message is None:
                silent += 1
                if silent >= 2:
                    raise ConnectionError(f"no answer to PING within {READ_SLICE:g}s")
                async with asyncio.timeout(self._timeout):
                    await pubsub.ping()
                continue
            silent = 0
            kind = _text(message.get("type"))
            channel = _text(message.get("channel"))
            if kind == "message":
                for subscription in list(self._subscriptions.get(channel, ())):
                    subscription.notify()
            elif kind == "subscribe":
                for confirmed in self._confirmations.pop(channel, []):
                    if not confirmed.done():
                        confirmed.set_result(None)

    async def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._sent = set()
        if pubsub is not None:
            await _close(pubsub)

    def _wake_all(self) -> None:
        for listeners in self._subscriptions.values():
            for subscription in listeners:
                subscription.notify()


async def _close(pubsub: Any) -> None:
    try:
        async with asyncio.timeout(1.0):
            await pubsub.aclose()
    except Exception as exc:  # clean-up of a connection that may be broken already
        logger.debug("closing the pub/sub connection failed: %s", exc)
