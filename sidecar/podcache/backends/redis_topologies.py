"""Clients for Redis beyond one server: Sentinel (a followed primary) and Cluster (shards).

``redis_connection.connect`` calls in here for ``settings.sentinel`` and
``settings.cluster``; both clients share its timeout and retry policy
(``common_kwargs``), so a failover looks to the backend like any other outage:
``BackendUnavailable`` within the operation timeout, then success again without
recreating anything.

Sentinel: ``master_for`` gives a client whose pool asks the sentinels for the
primary's address on every new connection and drops idle connections when the
address changes; a connection to a demoted primary fails with ``ReadOnlyError``,
which redis-py turns into a reconnect. During the failover window the sentinels
report the old primary as down, so calls fail fast (``MasterNotFoundError``)
instead of writing into a node about to be discarded.

Cluster: ``RedisCluster`` routes by slot and refreshes its slot map on MOVED/ASK
and after connection errors. Multi-key Lua scripts must keep all their keys in one
slot: lock and election keys carry one hash tag per name (``{...}``).

Failover safety lives here too, because it is about what a topology change does to
data: ``MONOTONIC_COUNTER_LUA`` derives fences and election terms so that a promoted
replica that missed the latest writes still never hands out a number already used,
and ``eval_and_wait`` runs a lease-writing script and ``WAIT`` on one connection
(also on Cluster, where redis-py's pipeline refuses EVALSHA).

Beware: retries are bounded by ``redis_connection.RETRIES`` (one quick retry), and
the backend wraps every call in ``asyncio.timeout(operation_timeout)``; nothing
here may loop longer than that.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from podcache.backends import redis_connection
from podcache.config import RedisSettings
from podcache.errors import ConfigError


def parse_address(address: str, *, field: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a (host, port) pair; ConfigError naming ``field``."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(field, f"expected host:port, got {address!r}")
    return host, int(port)


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A sentinel-managed pool that waits for a free connection, like the standalone pool.

    SentinelConnectionPool alone would fail at once with "Too many connections"
    when ``pool_size`` connections are busy; a busy sidecar should queue instead
    (bounded by ``timeout``, the operation timeout).
    """


class SentinelRedis(redis.asyncio.Redis):
    """A client of a Sentinel-monitored primary (or replicas) that also closes its sentinels."""

    # Not ``sentinel``: that name is the client's SENTINEL command method.
    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            manager, self.sentinel_manager = self.sentinel_manager, None
            if manager is not None:
                await manager.aclose()


def _data_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """Options of connections to the data nodes (primary, replicas, cluster nodes)."""
    kwargs = redis_connection.common_kwargs(settings)
    if settings.tls.enabled:
        kwargs["ssl"] = True
        kwargs.update(redis_connection.tls_kwargs(settings))
    return kwargs


def sentinel_manager(settings: RedisSettings) -> Sentinel:
    """The Sentinel client that discovers the primary and replicas of ``settings.sentinel``."""
    if settings.sentinel is None:
        raise ConfigError("config.sentinel", "required for a Sentinel connection")
    addresses = [
        parse_address(address, field="config.sentinel.addresses")
        for address in settings.sentinel.addresses
    ]
    # The sentinels get their own password (not the data password) and the same
    # timeouts: a dead sentinel must not stall discovery beyond one connect timeout.
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.operation_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.005), 0),
        "client_name": "podcache-sentinel",
    }
    if settings.sentinel.password is not None:
        sentinel_kwargs["password"] = settings.sentinel.password
    if settings.tls.enabled:
        # Sentinels deployed with TLS use the same CA and client certificate as the data nodes.
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update(redis_connection.tls_kwargs(settings))
    return Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]


def _sentinel_client(settings: RedisSettings, *, replica: bool) -> SentinelRedis:
    assert settings.sentinel is not None
    sentinel = sentinel_manager(settings)
    kwargs = _data_kwargs(settings)
    kwargs.pop("ssl", None)
    if settings.tls.enabled:
        kwargs["connection_class"] = SentinelManagedSSLConnection
    factory = sentinel.slave_for if replica else sentinel.master_for
    client = factory(
        settings.sentinel.master_name,
        redis_class=SentinelRedis,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=settings.pool_size,
        timeout=settings.operation_timeout,  # waiting for a free pooled connection counts too
        **kwargs,
    )
    assert isinstance(client, SentinelRedis)
    client.sentinel_manager = sentinel
    return client


def connect_sentinel(settings: RedisSettings) -> SentinelRedis:
    """A client bound to the current primary; it follows the primary through failovers."""
    return _sentinel_client(settings, replica=False)


def connect_sentinel_replica(settings: RedisSettings) -> SentinelRedis:
    """A client for reads from replicas (round-robin; the primary when none is up).

    Replicas lag the primary: use it only for ``get`` when
    ``settings.sentinel.read_from_replicas`` is set, never for locks or elections.
    """
    return _sentinel_client(settings, replica=True)


def connect_cluster(settings: RedisSettings) -> RedisCluster:
    """A Redis Cluster client seeded with ``settings.cluster.nodes``; the rest is discovered."""
    if settings.cluster is None:
        raise ConfigError("config.cluster", "required for a Cluster connection")
    nodes = [
        ClusterNode(*parse_address(address, field="config.cluster.nodes"))
        for address in settings.cluster.nodes
    ]
    return RedisCluster(
        startup_nodes=nodes,
        max_connections=settings.pool_size,  # per node
        # The server's cluster-require-full-coverage decides; the client still serves the
        # shards that are up while one has no primary.
        require_full_coverage=False,
        # A MOVED patches that one slot at once; the whole map is refreshed every 5th.
        # (Refreshing on every MOVED re-reads the map from nodes still gossiping the
        # change and can bounce a call until redis-py's redirect budget runs out.)
        reinitialize_steps=5,
        **_data_kwargs(settings),
    )


# --- Counters that never go backwards across a failover -------------------------------
# Redis replicates asynchronously: a replica promoted by Sentinel or Cluster may miss the
# last INCRs of a fence or term counter and would hand the same numbers out again. So a
# counter remembers the *epoch* of the server that last advanced it: its run_id (new on
# every restart) and master_replid (new on every promotion). When the epoch differs, some
# writes may have been lost, and the counter first jumps to the server clock in
# microseconds. Within one epoch it counts by one.
#
# Why that is enough: every number a server hands out is at most its clock at that moment
# (it starts at the clock and grows by one per acquisition; no lock or election changes
# hands a million times a second). A promoted replica takes over after at least the
# failure-detection delay, so its clock is past every number the lost primary issued,
# PROVIDED the servers' clocks agree to within that delay (NTP does far better). Numbers
# stay below 2**53 (until the year 2255), so JSON clients read them exactly.
#
# A counter key that holds something else (a string, a list, a hash whose n is not a
# number: written by a tenant whose keyPrefix overlaps, or by hand) is not ours and must
# not wedge its lock or election with WRONGTYPE forever. It is replaced by a counter
# seeded like a new epoch: at the server clock in microseconds, or at the number it held
# when that is larger (a counter once kept by INCR). That is safe for the same reason as
# the epoch jump: every number this server handed out is at most its clock, so the next
# one is still greater than all of them. What was replaced is returned in `damage` for
# the caller to log; the scripts report it as an extra reply element.
MONOTONIC_COUNTER_LUA = """
local damage = ''
local restarted = ''  -- why next_counter started the counter afresh ('' when it carried on)
local function server_epoch()
  local server = redis.call('INFO', 'server')
  local replication = redis.call('INFO', 'replication')
  return (string.match(server, 'run_id:(%x+)') or '?') .. '/' ..
         (string.match(replication, 'master_replid:(%x+)') or '?')
end
local function clock_micros()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000000 + tonumber(now[2])
end
local function usable(n)
  return n ~= nil and n == n and n >= 0 and n < 2^53
end
local function counter_value(key)
  -- the counter's n (0 when absent), or nil and what the key holds when it is not a counter
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return 0 end
  if kind ~= 'hash' then return nil, kind end
  local n = tonumber(redis.call('HGET', key, 'n') or '0')
  if not usable(n) then return nil, 'hash without a numeric n' end
  return n
end
local function reseed_counter(key, kind)
  local n = 0
  if kind == 'string' then
    local held = tonumber(redis.call('GET', key))
    if usable(held) then n = math.floor(held) end
  end
  damage = damage .. (damage == '' and '' or '; ') .. key .. ' held a ' .. kind
  redis.call('DEL', key)
  n = math.max(n, clock_micros())
  redis.call('HSET', key, 'n', string.format('%.0f', n), 'epoch', server_epoch())
  return n
end
local function next_counter(key)
  local n, kind = counter_value(key)
  if n == nil then
    n = reseed_counter(key, kind)
    restarted = 'foreign'
  else
    local epoch = server_epoch()
    local held = redis.call('HGET', key, 'epoch')
    if held ~= epoch then
      n = math.max(n, clock_micros())
      redis.call('HSET', key, 'epoch', epoch)
      restarted = held and 'epoch' or 'absent'  -- no epoch: no counter (new or lost)
    end
  end
  n = n + 1
  redis.call('HSET', key, 'n', string.format('%.0f', n))
  return n
end
local function current_counter(key)
  local n, kind = counter_value(key)
  if n == nil then n = reseed_counter(key, kind) end
  return n
end
local function foreign_key(key, expected)
  -- delete `key` and note it in `damage` when it holds another type than `expected`
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' or kind == expected then return false end
  redis.call('DEL', key)
  damage = damage .. (damage == '' and '' or '; ') .. key .. ' held a ' .. kind
  return true
end
"""
"""Lua: ``next_counter(key)`` and ``current_counter(key)`` over a hash {n, epoch}, and
``foreign_key(key, type)``; both note a replaced key in the string ``damage``.
``next_counter`` also sets ``restarted`` when the counter did not carry on: 'absent' (no
counter: never used, or lost with a FLUSHALL or an empty restart), 'epoch' (another
server or history: a restart or failover) or 'foreign' (it held something else)."""


async def eval_and_wait(
    client: Any,
    script: AsyncScript,
    *,
    keys: Sequence[str],
    args: Sequence[Any],
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, int]:
    """Run ``script`` then ``WAIT replicas timeout_ms`` on the same connection.

    WAIT counts the replicas that acknowledged the writes of *its own* connection, so
    both commands must share one. Returns the script's reply and the acknowledgements.
    On Cluster the pair goes to the primary of ``keys[0]``'s slot; if the slot just
    moved, the script runs through the cluster client (which follows the redirect) and
    0 acknowledgements are reported: replication is then unconfirmed, never assumed.
    A server known to have no replica (checked every ``REPLICA_CHECK_INTERVAL``) is not
    waited on: the write is reported unacknowledged at once instead of after the timeout.
    """
    if isinstance(client, RedisCluster):
        return await _eval_and_wait_cluster(
            client, script, keys=keys, args=args, replicas=replicas, timeout_ms=timeout_ms
        )
    if not await _has_replicas(client, None):
        return await script(keys=keys, args=args), 0
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        try:
            reply, acks = await pipe.execute()
        except NoScriptError:
            if attempt == 2:
                raise
            await client.script_load(script.script)  # a restarted or promoted server
            continue
        return reply, int(acks)
    raise AssertionError("unreachable")  # pragma: no cover


async def _eval_and_wait_cluster(
    client: RedisCluster,
    script: AsyncScript,
    *,
    keys: Sequence[str],
    args: Sequence[Any],
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, int]:
    await client.initialize()  # a no-op once the slot map is known
    node = client.get_node_from_key(keys[0])
    if node is None:
        raise ClusterDownError(f"no node serves the slot of {keys[0]!r}")
    if not await _has_replicas(client, node):
        return await script(keys=keys, args=args), 0
    for attempt in (1, 2):
        commands = [
            PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
            PipelineCommand(1, "WAIT", replicas, timeout_ms),
        ]
        await node.execute_pipeline(commands)
        reply, acks = commands[0].result, commands[1].result
        if isinstance(reply, NoScriptError) and attempt == 1:
            await node.execute_command("SCRIPT", "LOAD", script.script)
            continue
        if isinstance(reply, MovedError | AskError | TryAgainError | ClusterDownError):
            return await script(keys=keys, args=args), 0
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acks, Exception):
            raise acks
        return reply, int(acks)
    raise AssertionError("unreachable")  # pragma: no cover


REPLICA_CHECK_INTERVAL = 5.0
"""Seconds a server's replica count is trusted before INFO replication is read again."""

_replica_counts: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, int]]] = (
    weakref.WeakKeyDictionary()
)
"""Per client, per node name ("" for a standalone or Sentinel primary): (until, count)."""


async def _has_replicas(client: Any, node: ClusterNode | None) -> bool:
    counts = _replica_counts.setdefault(client, {})
    name = node.name if node is not None else ""
    now = time.monotonic()
    known = counts.get(name)
    if known is not None and known[0] > now:
        return known[1] > 0
    if node is not None:
        info = await node.execute_command("INFO", "replication")
    else:
        info = await client.execute_command("INFO", "replication")
    count = _connected_replicas(info)
    counts[name] = (now + REPLICA_CHECK_INTERVAL, count)
    return count > 0


def _connected_replicas(info: Any) -> int:
    if isinstance(info, dict):
        return int(info.get("connected_slaves", 0))
    text = info.decode() if isinstance(info, bytes) else str(info)
    found = re.search(r"connected_slaves:(\d+)", text)
    return int(found.group(1)) if found else 0
