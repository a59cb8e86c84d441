"""``new_cache`` and the ``Cache`` facade over both backends, and its metrics.

Aspects:
- new_cache builds the backend the Config names and exposes config, backend,
  namespace, default_ttl and its own registry;
- every call is counted once in requests_total with the right operation/status
  (get hit/miss/error, set/delete ok/error, set_nx and set_if_match as "set"),
  timed in the duration histogram, and hits/misses feed their own counters;
- bad input and refused conditional writes are counted, and the cache keeps serving;
- the metric names are exactly the seed's, under a configurable namespace (a bad one
  is a clear ConfigError), on a registry per instance, never on the global registry;
- the items gauge: exact for memory, a prefix-only SCAN refreshed in the background
  for Redis (two tenants on one Redis each count their own keys);
- stop() is idempotent, works as an async context manager, and stops the locks and
  electors built on the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from podcache.backends.memory import MemoryBackend
from podcache.backends.redis import RedisBackend
from podcache.cache import Cache, new_cache
from podcache.config import Config
from podcache.errors import CacheMiss, ConfigError, InvalidKey, InvalidTTL, InvalidValue

MakeCache = Callable[..., Cache]


@pytest.fixture(params=["memory", "redis"])
async def make_cache(request: pytest.FixtureRequest) -> AsyncIterator[MakeCache]:
    """Build caches of the parametrised backend type; Redis ones on the test database."""
    backend_type: str = request.param
    url = request.getfixturevalue("redis_url") if backend_type == "redis" else None
    created: list[Cache] = []

    def make(namespace: str = "lab", **config: Any) -> Cache:
        if url is not None:
            config.setdefault("url", url)
        else:
            config.pop("keyPrefix", None)
            config.pop("itemsRefreshInterval", None)
        cache = new_cache(Config(type=backend_type, config=config), namespace=namespace)
        created.append(cache)
        return cache

    yield make
    for cache in created:
        await cache.stop()


@pytest.fixture
def cache(make_cache: MakeCache) -> Cache:
    return make_cache(defaultTTL="30s")


def requests(cache: Cache, operation: str, status: str) -> float:
    value = cache.registry.get_sample_value(
        f"{cache.namespace}_cache_requests_total", {"operation": operation, "status": status}
    )
    assert value is not None, f"no series for {operation}/{status}"
    return value


def sample(cache: Cache, name: str, labels: dict[str, str] | None = None) -> float | None:
    return cache.registry.get_sample_value(f"{cache.namespace}_{name}", labels or {})


async def wait_for(condition: Callable[[], bool], *, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.02)


# -- construction --


def test_new_cache_memory_attributes() -> None:
    config = Config(type="memory", config={"defaultTTL": "5m", "maxItems": 10})
    cache = new_cache(config)
    assert isinstance(cache.backend, MemoryBackend)
    assert cache.config is config
    assert cache.namespace == "lab"
    assert cache.default_ttl == 300.0
    assert isinstance(cache.registry, CollectorRegistry)


def test_new_cache_redis_attributes(redis_url: str) -> None:
    cache = new_cache(Config(type="redis", config={"url": redis_url, "defaultTTL": "90s"}), "shop")
    assert isinstance(cache.backend, RedisBackend)
    assert cache.namespace == "shop"
    assert cache.default_ttl == 90.0


def test_registry_can_be_given() -> None:
    registry = CollectorRegistry()
    cache = new_cache(Config(type="memory"), registry=registry)
    assert cache.registry is registry
    assert registry.get_sample_value("lab_cache_items") == 0


# -- operations through the facade --


async def test_round_trip_and_conditional_writes(cache: Cache) -> None:
    await cache.set("k", b"v", ttl=5)
    assert await cache.get("k") == b"v"
    assert await cache.set_nx("k", b"x") is False
    assert await cache.set_if_match("k", b"v2", b"v") is True
    assert await cache.get("k") == b"v2"
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    with pytest.raises(CacheMiss):
        await cache.get("k")
    await cache.ping()


async def test_default_ttl_applies_through_facade(make_cache: MakeCache) -> None:
    cache = make_cache(defaultTTL="200ms")
    await cache.set("k", b"v")  # ttl 0 = default
    assert await cache.get("k") == b"v"
    await asyncio.sleep(0.3)
    with pytest.raises(CacheMiss):
        await cache.get("k")


# -- metrics --


async def test_each_call_counted_once_with_status(cache: Cache) -> None:
    await cache.set("k", b"v")
    await cache.get("k")
    await cache.get("k")
    with pytest.raises(CacheMiss):
        await cache.get("absent")
    await cache.delete("k")
    await cache.delete("k")  # a missing key is still a successful delete
    assert requests(cache, "set", "ok") == 1
    assert requests(cache, "get", "hit") == 2
    assert requests(cache, "get", "miss") == 1
    assert requests(cache, "delete", "ok") == 2
    assert requests(cache, "get", "error") == 0
    assert sample(cache, "cache_hits_total") == 2
    assert sample(cache, "cache_misses_total") == 1


async def test_conditional_writes_count_as_set(cache: Cache) -> None:
    assert await cache.set_nx("k", b"v") is True
    assert await cache.set_nx("k", b"v") is False  # refused, but the call succeeded
    assert await cache.set_if_match("k", b"w", b"nope") is False
    assert await cache.set_if_match("k", b"w", b"v") is True
    assert requests(cache, "set", "ok") == 4
    assert requests(cache, "set", "error") == 0


async def test_durations_observed_per_operation(cache: Cache) -> None:
    await cache.set("k", b"v")
    await cache.set_nx("k", b"v")
    await cache.get("k")
    await cache.delete("k")
    name = "cache_operation_duration_seconds"
    assert sample(cache, f"{name}_count", {"operation": "set"}) == 2
    assert sample(cache, f"{name}_count", {"operation": "get"}) == 1
    assert sample(cache, f"{name}_count", {"operation": "delete"}) == 1
    total = sample(cache, f"{name}_sum", {"operation": "get"})
    assert total is not None
    assert 0 < total < 1
    inf = sample(cache, f"{name}_bucket", {"operation": "get", "le": "+Inf"})
    assert inf == 1


async def test_bad_input_counted_as_error_and_cache_keeps_serving(cache: Cache) -> None:
    with pytest.raises(InvalidValue):
        await cache.set("k", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        await cache.get("")
    with pytest.raises(InvalidTTL):
        await cache.set("k", b"v", ttl=-1)
    with pytest.raises(InvalidKey):
        await cache.delete("x" * 2000)
    assert requests(cache, "set", "error") == 2
    assert requests(cache, "get", "error") == 1
    assert requests(cache, "delete", "error") == 1
    assert sample(cache, "cache_misses_total") == 0
    await cache.set("k", b"v")
    assert await cache.get("k") == b"v"


async def test_namespace_is_configurable(make_cache: MakeCache) -> None:
    cache = make_cache(namespace="shop")
    await cache.set("k", b"v")
    await cache.get("k")
    assert cache.registry.get_sample_value(
        "shop_cache_requests_total", {"operation": "get", "status": "hit"}
    ) == 1
    assert cache.registry.get_sample_value("shop_cache_hits_total") == 1
    assert cache.registry.get_sample_value("shop_cache_items") is not None
    names = {metric.name for metric in cache.registry.collect()}
    assert not any(name.startswith("lab_") for name in names)


@pytest.mark.parametrize("namespace", ["my-app", "9lives", "", "a b"])
def test_bad_namespace_is_a_config_error(namespace: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.namespace"):
        new_cache(Config(type="memory"), namespace)


async def test_exact_seed_metric_names(cache: Cache) -> None:
    exposition = prometheus_client.generate_latest(cache.registry).decode()
    for line in (
        "# TYPE lab_cache_requests_total counter",
        "# TYPE lab_cache_operation_duration_seconds histogram",
        "# TYPE lab_cache_items gauge",
        "# TYPE lab_cache_hits_total counter",
        "# TYPE lab_cache_misses_total counter",
    ):
        assert line in exposition
    for labels in ('operation="get",status="hit"', 'operation="set",status="ok"',
                   'operation="delete",status="error"'):
        assert f"lab_cache_requests_total{{{labels}}} 0.0" in exposition


async def test_two_caches_have_separate_registries(make_cache: MakeCache) -> None:
    first, second = make_cache(keyPrefix="a:"), make_cache(keyPrefix="b:")
    assert first.registry is not second.registry
    await first.set("k", b"v")
    assert requests(first, "set", "ok") == 1
    assert requests(second, "set", "ok") == 0
    default = prometheus_client.REGISTRY
    assert default.get_sample_value("lab_cache_requests_total",
                                    {"operation": "set", "status": "ok"}) is None


# -- the items gauge --


async def test_memory_items_gauge_is_exact() -> None:
    cache = new_cache(Config(type="memory", config={"maxItems": 3}))
    try:
        for i in range(5):
            await cache.set(f"k{i}", b"v")
        assert cache.registry.get_sample_value("lab_cache_items") == 3  # LRU bound
        await cache.delete("k4")
        assert cache.registry.get_sample_value("lab_cache_items") == 2
    finally:
        await cache.stop()


async def test_redis_items_gauge_counts_only_own_prefix(redis_url: str) -> None:
    def make(prefix: str) -> Cache:
        config = {"url": redis_url, "keyPrefix": prefix, "itemsRefreshInterval": "50ms"}
        return new_cache(Config(type="redis", config=config))

    shop, blog = make("shop:"), make("blog:")
    try:
        for i in range(4):
            await shop.set(f"k{i}", b"v")
        await blog.set("k", b"v")  # the first call also starts the refresh task
        await wait_for(lambda: shop.registry.get_sample_value("lab_cache_items") == 4)
        await wait_for(lambda: blog.registry.get_sample_value("lab_cache_items") == 1)
        await shop.delete("k0")
        await wait_for(lambda: shop.registry.get_sample_value("lab_cache_items") == 3)
        assert await blog.refresh_items() == 1
    finally:
        await shop.stop()
        await blog.stop()


async def test_redis_items_refresh_started_explicitly(redis_url: str, redis_client: Any) -> None:
    await redis_client.set("p:k", b"v")  # written by another sidecar of the same tenant
    cache = new_cache(Config(type="redis", config={
        "url": redis_url, "keyPrefix": "p:", "itemsRefreshInterval": "50ms"}))
    try:
        cache.start()
        await wait_for(lambda: cache.registry.get_sample_value("lab_cache_items") == 1)
    finally:
        await cache.stop()
    assert cache._items_task is None


# -- lifecycle --


async def test_stop_is_idempotent(cache: Cache) -> None:
    await cache.set("k", b"v")
    await cache.stop()
    await cache.stop()


async def test_async_context_manager_stops(make_cache: MakeCache) -> None:
    async with make_cache() as cache:
        await cache.set("k", b"v")
    assert cache._stopped


async def test_locks_are_built_once_and_stopped_with_the_cache(cache: Cache) -> None:
    pytest.importorskip("podcache.locks")
    locks = cache.locks
    assert cache.locks is locks
    lease = await locks.acquire("job", ttl=5)
    assert lease is not None
    assert await locks.release("job", lease.token) is True
    await cache.stop()


async def test_electors_built_on_the_cache_and_resigned_by_stop(cache: Cache) -> None:
    pytest.importorskip("podcache.election")
    first = cache.elector("scheduler", identity="pod-a", lease_duration=2,
                          renew_deadline=1, retry_period=0.1)
    second = cache.elector("reports", identity="pod-a", lease_duration=2,
                           renew_deadline=1, retry_period=0.1)
    await first.start()
    await second.start()
    await wait_for(lambda: first.is_leader and second.is_leader)
    await cache.stop()
    assert not first.is_leader
    assert not second.is_leader
