"""The near cache on Redis Cluster: one invalidation channel per primary (issue 13).

A key lives on the primary that owns its slot, and Redis tracking is per server: a
write announces itself only to the clients tracking *on that server*. So the cluster
near cache keeps one ``ShardChannel`` (RESP3, ``CLIENT TRACKING ON BCAST PREFIX
<keyPrefix>``, as ``near_cache.InvalidationChannel``) on every primary of the slot map,
and serves copies only while all of them are up. BCAST (not OPTIN) matters even more
here: a BCAST channel hears every write under the prefix on its server, whichever slot
the key is in, so a slot that moves between two primaries we listen to needs no new
registration, and nothing has to be re-enabled on redis-py's pooled data connections
(OPTIN would need ``CLIENT CACHING yes`` next to each GET on a connection of the right
node, and a REDIRECT to a channel on that same node). No channel on replicas: reads never
go there (``readFromReplicas`` stays refused). Its cost: one connection per primary per
sidecar (a 3-shard cluster: 3 channels), each probed every ``HEALTH_INTERVAL``.

The slot map is redis-py's (``RedisCluster.nodes_manager``), never our own: the channels
follow ``get_primaries()``, re-read with ``nodes_manager.initialize()`` and reconciled
(channels opened on new primaries, closed on former ones) after every refresh of
redis-py's map, which it announces with ``AsyncAfterSlotsCacheRefreshEvent`` (the hook
redis-py's own sharded pub/sub uses to follow shards).

SAFETY. Every copy is dropped, and nothing is served until the map is re-read and every
channel is up again, when:

- a channel is lost or its health probe fails (``near_cache.InvalidationChannel``);
- a channel's node is no longer a primary (its own line of ``CLUSTER NODES``, read when
  the channel opens and on every health probe, every ``near_cache.HEALTH_INTERVAL``; not
  ``ROLE``, which is ``@admin``): a manual ``CLUSTER FAILOVER`` keeps the demoted
  primary's connections open, and writes now go to a server we may not listen to;
- the highest config epoch in any channel's ``CLUSTER NODES`` grows: every failover gives
  the promoted replica a new one and every slot migration (``SETSLOT ... NODE``) bumps
  the importing node's, gossiped to all nodes within milliseconds (measured, Redis 7.0);
- redis-py refreshed its slot map (a MOVED seen by its data path: our writes, locks);
- our own GET got MOVED or ASK (its reply is then served, not kept).

And a GET's reply is kept only when the node that answered it (without a redirect) is
one whose channel is up, on top of ``NearCache``'s token check (``_pending``): a write
to that key after the GET reaches that node and so our channel, until the slot moves,
and moving it deletes the key there (``MIGRATE``), which that node announces too.

The bound of the unnoticed, as on one server: a failover or migration is seen within
``HEALTH_INTERVAL`` + the operation timeout (the epoch poll), also when the old primary
froze (its own channel can say nothing; the other shards' channels see the epoch). A copy
of a key moved while every node we probe is partitioned from us is the partition case of
the module docstring of ``near_cache``. Redis covers much of this by itself, measured on
7.0: a demoted primary keeps announcing the writes it replicates from the new one,
``MIGRATE`` deletes the key at the source (announced), and a new primary's channel
coming up flushes too (``channel_up``). The tests (``tests/topologies/
test_near_cache_cluster.py``) showed stale reads for seconds with this module's topology
handling disabled (a frozen primary failed over), none with only its flush disabled.

The near cache's GETs go to the slot's primary as redis-py's map names it, GET and
PTTL in one round trip on one of that node's pooled connections
(``ClusterNode.execute_pipeline``); redirects, a ``TRYAGAIN``, a down cluster or a dead
pooled connection fall back to ``RedisCluster`` (which follows them, retries and
refreshes its map). Beware: redis-py's map is re-read at most every ``REFRESH_INTERVAL``
and every re-read or topology change empties the whole near cache, not one shard's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.event import AsyncAfterSlotsCacheRefreshEvent, AsyncEventListenerInterface
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisError, TryAgainError

from podcache.backends import near_cache
from podcache.config import RedisSettings
from podcache.errors import BackendUnavailable

logger = logging.getLogger(__name__)

REFRESH_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
"""Backoff between failed re-reads of the slot map; the last one repeats."""

REFRESH_INTERVAL = 0.1
"""Seconds at least between two re-reads of the slot map: while a shard is down every
GET of its keys asks for one, and one CLUSTER SLOTS per 100 ms is plenty."""

_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)
_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError)  # as replies


def _node_view(nodes: bytes) -> tuple[bool, int]:
    """From ``CLUSTER NODES``: whether the answering node is a primary, and the highest
    config epoch it knows (a promoted replica gets a new one, and so does the node that
    takes over a migrated slot)."""
    primary = False
    epoch = 0
    for line in nodes.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(b",")
        if b"myself" in flags:
            primary = b"master" in flags
        if fields[6].isdigit():
            epoch = max(epoch, int(fields[6]))
    return primary, epoch


class ShardChannel(near_cache.InvalidationChannel):
    """The invalidation channel on one primary of the cluster."""

    def __init__(self, cache: near_cache.NearCache, settings: RedisSettings,
                 shards: ShardChannels, node: ClusterNode) -> None:
        super().__init__(cache, settings)
        self.shards = shards
        self.host = str(node.host)
        self.port = int(node.port)
        self.name = str(node.name)
        self.retired = False
        """No longer a primary of the map: closing, and nothing it does counts."""

    async def _open(self, protocol: asyncio.Protocol) -> None:
        ssl = self._ssl
        await asyncio.get_running_loop().create_connection(
            lambda: protocol, self.host, self.port, ssl=ssl,
            server_hostname=self.host if ssl is not None else None,
        )

    async def _probe(self, protocol: near_cache._ChannelProtocol) -> None:
        # CLUSTER NODES, not ROLE: ROLE is @admin, which a tenant's ACL user may lack.
        reply = await protocol.send(b"CLUSTER", b"NODES")
        primary, epoch = _node_view(reply if isinstance(reply, bytes) else str(reply).encode())
        if not primary:
            self.shards.stale(f"{self.name} is no longer a primary")
            raise BackendUnavailable(f"{self.name} is no longer a primary")
        self.shards.saw_epoch(epoch, self.name)

    def _came_up(self) -> None:
        self.cache.serving = self.shards.up

    def lost(self) -> None:
        if self.retired:
            self.up = False
            return
        super().lost()

    def _went_down(self) -> None:
        # Often a node died: its replica may be the owner soon, so re-read the map.
        self.shards.stale(f"the channel on {self.name} was lost", flushed=True)

    def retire(self) -> None:
        """Stop counting this channel and close it (its node left the primaries); ``stop``
        still awaits its task."""
        self.retired = True
        self.up = False
        self.drop()
        if self._task is not None:
            self._task.cancel()


class _SlotsRefreshed(AsyncEventListenerInterface):
    """redis-py's slot map changed (a refresh, or a MOVED patched a slot's owner)."""

    def __init__(self, shards: ShardChannels) -> None:
        self.shards = shards

    async def listen(self, event: object) -> None:
        self.shards.slots_refreshed()


class ShardChannels:
    """A channel per primary of redis-py's slot map; ``up`` while all are (a ``Watch``)."""

    def __init__(self, cache: near_cache.NearCache, settings: RedisSettings,
                 client: RedisCluster) -> None:
        self.cache = cache
        self.settings = settings
        self.client = client
        self.channels: dict[str, ShardChannel] = {}
        """Node name (host:port) -> its channel, for the primaries of the last map read."""
        self.epoch: int | None = None
        """The highest config epoch seen (a rise is a topology change)."""
        self.refreshes = 0
        """Times the slot map was re-read and the channels reconciled (tests)."""
        self._stale = True  # nothing read yet
        self._refreshing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener = _SlotsRefreshed(self)
        self._dispatcher: Any = None

    # -- the Watch interface ------------------------------------------------------------

    @property
    def up(self) -> bool:
        channels = self.channels
        return (not self._stale and bool(channels)
                and all(channel.up for channel in channels.values()))

    @property
    def connects(self) -> int:
        return sum(channel.connects for channel in self.channels.values())

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        # The hook redis-py's ClusterPubSub uses to follow shards (NodesManager's own
        # dispatcher: RedisCluster hands it no other way to listen).
        self._dispatcher = self.client.nodes_manager._event_dispatcher
        self._dispatcher.register_listeners(
            {AsyncAfterSlotsCacheRefreshEvent: [self._listener]})
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name="podcache-near-cache-shards")

    async def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.unregister_listeners(
                {AsyncAfterSlotsCacheRefreshEvent: [self._listener]})
            self._dispatcher = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            channel.retire()
            await channel.stop()
        self._stale = True
        self.cache.serving = False

    # -- what says the topology changed ---------------------------------------------------

    def stale(self, why: str, *, flushed: bool = False) -> None:
        """Copies can no longer be trusted: drop them, serve none until the map is re-read
        and every channel is up (synchronous: no GET is served in between)."""
        self.cache.serving = False
        if not flushed:
            self.cache.flush("topology")
        if not self._stale:
            logger.info("near cache: %s; copies dropped, re-reading the slot map", why)
        self._stale = True
        self._wake.set()

    def slots_refreshed(self) -> None:
        if not self._refreshing:  # our own re-read announces itself too
            self.stale("redis-py's slot map changed")

    def saw_epoch(self, epoch: int, node: str) -> None:
        known = self.epoch
        if known is None or epoch > known:
            self.epoch = epoch
            if known is not None:
                self.stale(f"cluster epoch {known} -> {epoch} (seen on {node})")

    def redirected(self, exc: Exception) -> None:
        """The near cache's own GET was redirected (MOVED, ASK), the cluster is down or
        the connection it went on was dead."""
        self.stale(f"a GET was answered {type(exc).__name__}")

    def covers(self, node: str) -> bool:
        """Whether writes on ``node`` reach us now (its channel is up)."""
        channel = self.channels.get(node)
        return channel is not None and channel.up

    # -- following the slot map -----------------------------------------------------------

    async def _follow(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("near cache: cannot read the cluster's slot map: %s", exc)
                await asyncio.sleep(REFRESH_DELAYS[min(attempt, len(REFRESH_DELAYS) - 1)])
                attempt += 1
                self._wake.set()
                continue
            attempt = 0
            if not self._wake.is_set():  # nothing changed meanwhile
                self._stale = False
                self.cache.serving = self.up
            await asyncio.sleep(REFRESH_INTERVAL)

    async def _refresh(self) -> None:
        client = self.client
        self._refreshing = True
        try:
            async with asyncio.timeout(
                    self.settings.connect_timeout + self.settings.operation_timeout):
                if self.refreshes == 0:
                    await client.initialize()  # a no-op when the data path did it first
                else:
                    await client.nodes_manager.initialize()
        finally:
            self._refreshing = False
        self.refreshes += 1
        primaries = {str(node.name): node for node in client.get_primaries()}
        for name in [name for name in self.channels if name not in primaries]:
            self.channels.pop(name).retire()
        for name, node in primaries.items():
            if name not in self.channels:
                channel = ShardChannel(self.cache, self.settings, self, node)
                self.channels[name] = channel
                channel.start()


class ClusterReads:
    """The near cache's GETs on Cluster: GET and PTTL on the slot's primary in one trip."""

    def __init__(self, client: RedisCluster, shards: ShardChannels, timeout: float) -> None:
        self.client = client
        self.shards = shards
        self.timeout = timeout

    async def read(self, raw_key: str) -> tuple[Any, int]:
        client = self.client
        commands = [PipelineCommand(0, "GET", raw_key), PipelineCommand(1, "PTTL", raw_key)]
        try:
            async with asyncio.timeout(self.timeout):
                await client.initialize()  # a no-op once the slot map is known
                node = client.get_node_from_key(raw_key)
                if node is None:  # pragma: no cover - only asked for replicas
                    raise BackendUnavailable(f"no node serves the slot of {raw_key!r}")
                await node.execute_pipeline(commands)
        except TimeoutError as exc:
            raise BackendUnavailable(f"redis did not answer GET within {self.timeout:g}s",
                                     ) from exc
        except (RedisError, OSError) as exc:
            # A node gone: redis-py re-reads its map on its next failure; ask for ours now.
            self.shards.stale(f"GET failed on the cluster: {exc}")
            raise BackendUnavailable(f"redis GET failed: {exc}") from exc
        value, pttl = commands[0].result, commands[1].result
        if isinstance(value, (*_REDIRECTS, *_CONNECTION_ERRORS)):
            # The slot moved (or is moving), or the pooled connection died (a node
            # restarted, CLIENT KILL): drop the copies first, then let redis-py follow
            # the redirect or retry, as it does for every other command (and patch its
            # map); this value is served, not kept.
            self.shards.redirected(value)
            return await self._followed(raw_key), -2
        if isinstance(value, Exception):
            raise BackendUnavailable(f"redis GET failed: {value}") from value
        if isinstance(pttl, Exception) or not self.shards.covers(str(node.name)):
            return value, -2  # no channel hears that node (yet): serve, do not keep
        return value, int(pttl)

    async def _followed(self, raw_key: str) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await self.client.get(raw_key)
        except TimeoutError as exc:
            raise BackendUnavailable(f"redis did not answer GET within {self.timeout:g}s",
                                     ) from exc
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis GET failed: {exc}") from exc


def new_near_cache(settings: RedisSettings, client: RedisCluster) -> near_cache.NearCache:
    """The near cache of a Cluster backend: reads and channels follow ``client``'s map."""
    return near_cache.NearCache(
        settings,
        lambda cache: ShardChannels(cache, settings, client),
        lambda shards: ClusterReads(client, shards, settings.operation_timeout),
    )
