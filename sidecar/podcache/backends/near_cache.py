"""The near cache: a bounded local copy of hot Redis keys, invalidated by Redis (issue 13).

With the Redis backend every GET crosses the network, even for a key this pod read a
millisecond ago. Redis 6+ tells a client when a key it may hold has changed
(client-side caching, ``CLIENT TRACKING``); this module keeps a copy of what this
sidecar read, in the memory backend's LRU (``maxItems``/``maxBytes``), and drops a
copy as soon as Redis says the key changed. Every process of the pod shares it.

Pieces:

- ``NearCache.local(key)``: the local copy or None (no await; the hot path).
- ``NearCache.fetch(key)``: GET and PTTL pipelined on the backend's one auto-pipelined
  connection (``PipelinedReads`` on ``redis_pipeline``: the data path is not duplicated
  here; on Cluster ``near_cluster.ClusterReads``), and the reply kept when nothing could
  have invalidated it meanwhile (see "the race" below).
- ``NearCache.forget(key)``: writes through this sidecar drop the local copy before
  they are sent and again when answered (read-your-writes within one pod).
- ``InvalidationChannel``: one dedicated RESP3 connection (``HELLO 3``) with
  ``CLIENT TRACKING ON BCAST PREFIX <keyPrefix>``: Redis pushes ``invalidate`` messages
  on it. hiredis's ``Reader`` parses RESP3 pushes (as lists), so no second parser.
  ``PrimaryChannel`` is the one channel of a standalone or Sentinel Redis; on Cluster,
  ``near_cluster.ShardChannels`` keeps one per primary (a ``Watch`` either way: what
  says whether copies may be served).

Tracking mode, measured (``bench/bench_near_cache.py --only modes``: 20,000 SETs over
20,000 keys while a reader holds 100 hot keys, Redis 7.0 on loopback, two runs): BCAST
with the tenant's prefix sent 116-130 messages carrying 19,900 keys and cost Redis 41-52
ms of CPU for the writes; default mode with OPTIN (``CLIENT CACHING yes`` before each
tracked GET, redirected to the channel) sent 58 messages of one key each and cost 33-36
ms, but kept a tracking-table entry per key read (``tracking_total_keys``), and it has to
be enabled on the *data* connection: every reconnect of the pipelined connection would
have to re-enable it with the channel's current id, and each GET would need its
``CLIENT CACHING yes`` adjacent on a connection every caller shares. Chosen: BCAST. It
lives entirely on the channel (independent of the data connection's reconnects, so the
failure handling stays in one place), costs Redis no per-key memory, and batches
invalidations (Redis sends them once per event-loop turn). Its price: every sidecar of
the tenant hears of every write under the prefix (lock keys included), 1.2-1.5x the
Redis CPU of OPTIN on a write-only load; a write-heavy tenant with a small hot set is
where default mode would send less.

SAFETY (a stale read is worse than a slow one):

- Copies are served only while the channel is up. The channel going down (connection
  lost, ``CLIENT KILL``, Redis restarted, a health PING unanswered within the operation
  timeout), coming up, an invalidate-all (``FLUSHDB``/``FLUSHALL``: a null key list), or
  the data connection reconnecting (a Sentinel failover reconnects it to the new
  primary while the channel may still hang on the old one) drop every copy first.
- A copy never outlives the key's TTL in Redis (PTTL read with the GET, counted from
  when the GET was sent) nor ``maxTTL``.
- The race: a GET's reply may arrive after the invalidation of a later write (two
  connections, no common order). Before a GET is sent, a fresh token is filed under
  the key in ``_pending``; an invalidation of the key, a write through this sidecar or
  any flush removes it. The reply is kept only if its token is still there when it
  arrives (the placeholder scheme of the Redis manual). Concurrent GETs of one key:
  the latest token wins, the others are served but not kept.
- The bound of the unnoticed: a network partition that neither side sees is found by
  the health PING, so copies may be served up to ``HEALTH_INTERVAL`` + the operation
  timeout after the channel silently died. A loop too busy to read the PING's answer
  in time also counts as a dead channel (safe: the copies go, reads go to Redis).

Redis Cluster: ``near_cluster`` (a channel per primary, re-made as the slot map
changes; what drops the copies there). Not handled: ``readFromReplicas`` (a lagging
replica's reply could be kept after the primary's invalidation): refused by config
validation. Misses are not cached.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, TypeVar

import hiredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from podcache.backends import redis_connection, redis_pipeline
from podcache.backends.memory import MemoryBackend
from podcache.config import MemorySettings, RedisSettings
from podcache.errors import BackendUnavailable, CacheMiss

logger = logging.getLogger(__name__)

FlushCause = Literal[
    "channel_down", "channel_up", "redis_flush", "reconnect", "stop", "topology",
]
FLUSH_CAUSES: tuple[FlushCause, ...] = (
    "channel_down", "channel_up", "redis_flush", "reconnect", "stop", "topology",
)

HEALTH_INTERVAL = 0.5
"""Seconds between PINGs on the channel: with the operation timeout, bounds how long a
silently dead channel (a partition without a reset) can go unnoticed."""

RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
"""Backoff between attempts to reopen the channel; the last one repeats."""

_INVALIDATE = b"invalidate"


def _quiet(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (its sibling's failure was already raised)."""
    if not future.cancelled():
        future.exception()


class _ChannelProtocol(asyncio.Protocol):
    """The channel's socket: replies to our few commands in order, pushes to the cache."""

    def __init__(self, channel: InvalidationChannel) -> None:
        self.channel = channel
        self.transport: Any = None
        self.reader = hiredis.Reader(replyError=redis_pipeline.ReplyError)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, *args: redis_pipeline.Arg) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        payload = redis_pipeline.pack(args)
        self.transport.write(payload if isinstance(payload, bytes) else b"".join(payload))
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.transport.abort()
                logger.warning("near cache: unparsable data on the invalidation channel: %s", exc)
                return
            if reply is False:
                return
            # Our commands' replies are maps and simple strings; a list opening with
            # "invalidate" can only be a push (hiredis gives RESP3 pushes as lists).
            if isinstance(reply, list) and reply and reply[0] == _INVALIDATE:
                self.channel.cache.invalidated(reply[1] if len(reply) > 1 else None)
                continue
            if self.waiting:
                future = self.waiting.popleft()
                if not future.done():
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        # Drop the copies first, in this very callback: no GET may be served in between.
        self.channel.lost()
        error = BackendUnavailable("the near cache's invalidation channel was lost")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)


class Watch(Protocol):
    """What tells a ``NearCache`` when its copies may be served: one ``PrimaryChannel``
    (standalone, Sentinel) or one channel per primary (``near_cluster.ShardChannels``)."""

    @property
    def up(self) -> bool:
        """Every invalidation this cache needs is being received now."""

    @property
    def connects(self) -> int:
        """Times a channel came up (tests and debugging)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Reads(Protocol):
    """Where ``NearCache.fetch`` reads a key: the backend's own data path."""

    async def read(self, raw_key: str) -> tuple[Any, int]:
        """The key's value (None when absent) and its PTTL in ms (-1 none, -2 unknown:
        serve the value, do not keep it)."""


W = TypeVar("W", bound=Watch)


class InvalidationChannel:
    """One RESP3 connection with BCAST tracking of the tenant's prefix, kept open.

    Subclasses say where it connects (``_open``), what a healthy connection answers
    (``_probe``) and who is told when it comes up (``_came_up``); this class keeps it
    open and drops every copy the moment it is lost.
    """

    def __init__(self, cache: NearCache, settings: RedisSettings) -> None:
        self.cache = cache
        self.settings = settings
        self.up = False
        self.opening = False
        """Between the start of a session and its tracking being on."""
        self.generation = 0
        self._protocol: _ChannelProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._ssl = redis_pipeline.ssl_context(settings)
        self.connects = 0
        """Times the channel came up (tests and debugging)."""

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="podcache-near-cache-channel"
            )

    def lost(self) -> None:
        if self.up:
            self.up = False
            self.cache.serving = False
            self.cache.flush("channel_down")
            self._went_down()

    # -- what subclasses say --------------------------------------------------------

    async def _prepare(self) -> None:
        """Before a session connects (the generation is read after it)."""

    async def _open(self, protocol: asyncio.Protocol) -> None:
        raise NotImplementedError

    async def _probe(self, protocol: _ChannelProtocol) -> None:
        """Raise unless the channel still hears every write it must (a PING by default)."""
        await protocol.send(b"PING")

    def _came_up(self) -> None:
        self.cache.serving = True

    def _went_down(self) -> None:
        """After ``lost`` dropped the copies."""

    def drop(self) -> None:
        """Close the connection now (it is reopened); the caller has flushed the copies."""
        self.up = False
        self.generation += 1  # a session still opening must not come up
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._session()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("near cache: invalidation channel: %s; reads go to redis", exc)
            self.lost()
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _session(self) -> None:
        settings = self.settings
        protocol = _ChannelProtocol(self)
        self._protocol = protocol
        self.opening = True
        try:
            await self._prepare()
            generation = self.generation  # a drop() from here on voids this session
            async with asyncio.timeout(settings.connect_timeout):
                await self._open(protocol)
                hello: list[redis_pipeline.Arg] = [b"HELLO", b"3"]
                password = redis_connection.read_password(settings)
                if password is not None:
                    hello += [b"AUTH", settings.username or "default", password]
                prefix: list[redis_pipeline.Arg] = (
                    [b"PREFIX", settings.key_prefix] if settings.key_prefix else [])
                # Tracking is not per database: no SELECT needed (keys of other
                # databases with the same name only cause spurious invalidations).
                replies = [
                    protocol.send(*hello),
                    protocol.send(b"CLIENT", b"SETNAME", b"podcache-near-cache"),
                    protocol.send(b"CLIENT", b"TRACKING", b"ON", b"BCAST", *prefix),
                ]
                for reply in replies:
                    await reply
                await self._probe(protocol)  # e.g. a cluster node that is no longer a primary
            if generation != self.generation:
                raise BackendUnavailable("the data connection reconnected meanwhile")
            # Tracking is on from here: whatever changes from now on is announced.
            self.opening = False
            self.cache.flush("channel_up")
            self.connects += 1
            self.up = True
            self._came_up()
            while not protocol.closed.done():
                await asyncio.wait([protocol.closed], timeout=HEALTH_INTERVAL)
                if protocol.closed.done():
                    break
                try:
                    async with asyncio.timeout(settings.operation_timeout):
                        await self._probe(protocol)
                except (TimeoutError, BackendUnavailable) as exc:
                    if not protocol.closed.done():
                        logger.warning("near cache: invalidation channel: %s", exc or
                                       f"unanswered for {settings.operation_timeout:g}s")
                    self.lost()  # before anything else can read a copy
                    protocol.transport.abort()
        finally:
            self.opening = False
            self.lost()
            if protocol.transport is not None and not protocol.closed.done():
                protocol.transport.abort()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.lost()


class PrimaryChannel(InvalidationChannel):
    """The one channel of a standalone or Sentinel Redis: on the server the backend's
    pipelined connection reaches, reopened whenever that connection reconnects."""

    def __init__(self, cache: NearCache, settings: RedisSettings,
                 pipeline: redis_pipeline.PipelinedConnection) -> None:
        super().__init__(cache, settings)
        self.pipeline = pipeline
        pipeline.on_connect = self.data_reconnected

    async def _prepare(self) -> None:
        # The data connection first: a reconnect of it after this point (a failover)
        # voids this session (``generation``) and drops the copies.
        await self.pipeline.execute(b"PING")

    async def _open(self, protocol: asyncio.Protocol) -> None:
        await redis_pipeline.open_transport(
            self.settings, lambda: protocol, ssl_context=self._ssl,
            primary=self.pipeline.primary_address,
        )

    def data_reconnected(self) -> None:
        # The data connection (re)connected, maybe to a new primary after a failover,
        # while the channel may still hang on the old one: trust neither the copies nor it.
        if self.pipeline.connects == 1 or not (self.up or self.opening):
            return  # the first connection (nothing kept before it), or nothing to re-open
        self.cache.serving = False
        self.cache.flush("reconnect")
        self.drop()


class PipelinedReads:
    """GET and PTTL on the backend's one auto-pipelined connection (standalone, Sentinel)."""

    def __init__(self, pipeline: redis_pipeline.PipelinedConnection) -> None:
        self.pipeline = pipeline

    async def read(self, raw_key: str) -> tuple[Any, int]:
        value_reply = self.pipeline.execute(b"GET", raw_key)
        ttl_reply = self.pipeline.execute(b"PTTL", raw_key)
        try:
            value = await value_reply
        except BaseException as exc:
            ttl_reply.add_done_callback(_quiet)
            if isinstance(exc, redis_pipeline.ReplyError):
                raise BackendUnavailable(f"redis GET failed: {exc.reply}") from exc
            if isinstance(exc, BackendUnavailable):
                raise BackendUnavailable(f"redis GET: {exc}") from exc
            raise
        try:
            pttl = await ttl_reply
        except BackendUnavailable:
            pttl = -2  # the value is good, its lifetime unknown: serve it, do not keep it
        return value, pttl if isinstance(pttl, int) else -2


def on_pipeline(settings: RedisSettings, pipeline: redis_pipeline.PipelinedConnection,
                ) -> NearCache:
    """The near cache of a standalone or Sentinel backend (reads on ``pipeline``)."""
    return NearCache(settings, lambda cache: PrimaryChannel(cache, settings, pipeline),
                     lambda _: PipelinedReads(pipeline))


class NearCache:
    """The local copies, their invalidation bookkeeping and their counters."""

    def __init__(self, settings: RedisSettings, watch: Callable[[NearCache], W],
                 reads: Callable[[W], Reads]) -> None:
        near = settings.near_cache
        self.settings = near
        self.prefix = settings.key_prefix
        self._raw_prefix = settings.key_prefix.encode()
        self.store = MemoryBackend(MemorySettings(
            default_ttl=near.max_ttl, max_items=near.max_items, max_bytes=near.max_bytes,
        ))
        self._pending: dict[str, object] = {}
        """Key -> token of the latest GET in flight whose reply may be kept."""
        self.serving = False
        """Copies may be served and kept: the channel (every channel, on Cluster) is up and
        nothing since could have hidden an invalidation (cleared synchronously, before any
        other GET, by whatever says so: ``Watch`` implementations)."""
        channel = watch(self)
        self.channel: Watch = channel
        self.reads = reads(channel)
        self._started = False
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.flushes: dict[str, int] = dict.fromkeys(FLUSH_CAUSES, 0)

    # -- reads -------------------------------------------------------------------------

    def local(self, key: str) -> bytes | None:
        """The local copy of ``key`` if one may be served now, else None (``RedisBackend.get``
        inlines this: it is the hit path)."""
        if not self.serving:
            return None
        value = self.store.peek(key)
        if value is not None:
            self.hits += 1
        return value

    async def fetch(self, key: str) -> bytes:
        """GET ``key`` from Redis (with its PTTL) and keep the value when that is safe."""
        self.misses += 1
        if not self._started:
            self._start()
        token = object()
        if self.serving:
            self._pending[key] = token
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            value, pttl = await self.reads.read(self.prefix + key)
        finally:
            kept = self._release(key, token)
        if value is None:
            raise CacheMiss(key)
        if not isinstance(value, bytes):
            value = str(value).encode()
        if kept and self.serving and pttl != -2:
            seconds = self.settings.max_ttl if pttl == -1 else min(pttl / 1000,
                                                                   self.settings.max_ttl)
            # Counted from when the GET was sent: Redis's clock started no later.
            seconds -= loop.time() - sent
            if seconds > 0 and math.isfinite(seconds):
                self.store.put(key, value, seconds)
        return value

    def _release(self, key: str, token: object) -> bool:
        """Whether ``token`` was still filed under ``key`` (then unfile it)."""
        if self._pending.get(key) is token:
            del self._pending[key]
            return True
        return False

    # -- invalidation ------------------------------------------------------------------

    def forget(self, key: str) -> None:
        """A write of ``key`` through this sidecar: drop the copy and any GET's claim."""
        self._pending.pop(key, None)
        self.store.discard(key)

    def invalidated(self, keys: list[bytes] | None) -> None:
        """An ``invalidate`` push: these Redis keys changed, or all of them (None)."""
        if keys is None:
            self.flush("redis_flush")
            return
        prefix = self._raw_prefix
        skip = len(prefix)
        for raw in keys:
            if not isinstance(raw, bytes) or not raw.startswith(prefix):
                continue
            key = raw[skip:].decode("utf-8", "surrogateescape")
            self.invalidations += 1
            self._pending.pop(key, None)
            self.store.discard(key)

    def flush(self, cause: FlushCause) -> None:
        """Drop every copy and every GET's claim; the data path's epoch starts afresh."""
        self._pending.clear()
        self.store.clear()
        self.flushes[cause] += 1

    # -- lifecycle ---------------------------------------------------------------------

    def _start(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._started = True
        self.store.start()  # its reaper frees copies nobody reads again
        self.channel.start()

    def start(self) -> None:
        """Open the invalidation channel now (otherwise on the first GET)."""
        if not self._started:
            self._start()

    async def stop(self) -> None:
        await self.channel.stop()
        self.flush("stop")
        await self.store.stop()

    # -- figures -----------------------------------------------------------------------

    @property
    def item_count(self) -> int:
        return self.store.item_count

    @property
    def bytes_used(self) -> int:
        return self.store.bytes_used


class NearCacheCollector(Collector):
    """``<ns>_near_cache_*``, read from the cache's plain counters at scrape time (the
    hot path adds to ints, like ``CacheMetrics.observe``, instead of prometheus objects)."""

    def __init__(self, cache: NearCache, namespace: str) -> None:
        self.cache = cache
        self.prefix = f"{namespace}_near_cache"

    def collect(self) -> Iterable[Metric]:
        cache, p = self.cache, self.prefix
        yield CounterMetricFamily(f"{p}_hits", "GETs served from the near cache.", cache.hits)
        yield CounterMetricFamily(
            f"{p}_misses", "GETs the near cache sent to Redis.", cache.misses)
        yield CounterMetricFamily(
            f"{p}_invalidations", "Keys of this tenant Redis said changed.", cache.invalidations)
        yield CounterMetricFamily(
            f"{p}_evictions", "Copies dropped to respect maxItems/maxBytes.", cache.store.evictions)
        flushes = CounterMetricFamily(
            f"{p}_flushes", "Times every copy was dropped, by cause.", labels=["cause"])
        for cause, count in cache.flushes.items():
            flushes.add_metric([cause], count)
        yield flushes
        yield GaugeMetricFamily(f"{p}_items", "Copies held now.", cache.item_count)
        yield GaugeMetricFamily(
            f"{p}_bytes", "Bytes charged for the copies held now.", cache.bytes_used)
        yield GaugeMetricFamily(
            f"{p}_channel_up", "1 while the invalidation channel is up (copies are served).",
            1.0 if cache.channel.up else 0.0)
