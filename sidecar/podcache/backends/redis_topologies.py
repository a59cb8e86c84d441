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

Beware: retries are bounded by ``redis_connection.RETRIES`` (one quick retry), and
the backend wraps every call in ``asyncio.timeout(operation_timeout)``; nothing
here may loop longer than that.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff

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

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            sentinel, self.sentinel = self.sentinel, None
            if sentinel is not None:
                await sentinel.aclose()


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
    return Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)


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
    client.sentinel = sentinel
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
        # Refresh the whole slot map on the first MOVED: after a failover or a resharding
        # many slots move at once.
        reinitialize_steps=1,
        **_data_kwargs(settings),
    )
