"""Key prefixes of CacheConfigs on one Redis must not overlap (issue 10, item 6).

Aspects (pure, ``tenancy.conflicts``): a prefix that starts, extends or equals another's
on the same Redis is a conflict naming the other CacheConfig; the default prefix
``<namespace>/<name>:`` counts; the same Redis is recognised through a URL's host, port
and database (a bare Service name completed with the namespace, ``.cluster.local``
dropped), a shared Cluster node, a shared Sentinel address with the same master; other
databases, hosts and memory CacheConfigs never conflict; of two, the one serving its
current spec keeps the prefix, else the older; the operator (KMock) reports
Ready=False KeyPrefixConflict naming the other CacheConfig, renders nothing for it, and
turns Ready once the prefix is changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from podcache_operator import tenancy
from tests.operator import samples
from tests.operator.conftest import (
    CACHECONFIGS,
    NAMESPACE,
    ClusterEmulator,
    condition,
    eventually,
    get,
)
from tests.operator.test_operator import create, patch_spec, ready


def body(name: str, redis: dict[str, Any], *, namespace: str = "shop", created: str = "",
         serving: bool = False, backend: str = "redis") -> dict[str, Any]:
    status: dict[str, Any] = {}
    if serving:
        status = {"observedGeneration": 1,
                  "conditions": [{"type": "Ready", "status": "True"}]}
    return {
        "metadata": {"namespace": namespace, "name": name, "generation": 1,
                     "creationTimestamp": created},
        "spec": {"backend": backend, "redis": redis},
        "status": status,
    }


URL = {"url": "redis://redis.shop.svc:6379/0"}


def prefixed(prefix: str | None, where: dict[str, Any] = URL) -> dict[str, Any]:
    return {**where, **({} if prefix is None else {"keyPrefix": prefix})}


@pytest.mark.parametrize(("mine", "theirs", "how"), [
    ("shop:cart:", "shop:", "extends"),
    ("shop:", "shop:cart:", "is a prefix of"),
    ("shop:", "shop:", "equals"),
])
def test_overlapping_prefixes_conflict(mine: str, theirs: str, how: str) -> None:
    old = body("a", prefixed(theirs), created="2026-01-01T00:00:00Z")
    new = body("b", prefixed(mine), created="2026-02-01T00:00:00Z")
    (conflict,) = tenancy.conflicts(new, [old, new])
    text = str(conflict)
    assert f"{mine!r} {how} the key prefix {theirs!r} of CacheConfig shop/a" in text
    assert "redis.shop.svc:6379, database 0" in text
    assert tenancy.conflicts(old, [old, new]) == []  # the older keeps it


def test_disjoint_prefixes_and_the_defaults_do_not_conflict() -> None:
    items = [body("a", prefixed("shop:a:")), body("b", prefixed("shop:b:")),
             body("c", prefixed(None)), body("d", prefixed(None), namespace="shop-2")]
    assert all(tenancy.conflicts(item, items) == [] for item in items)


def test_the_default_prefix_counts() -> None:
    default = body("cart", prefixed(None), created="1")
    explicit = body("other", prefixed("shop/"), created="2")  # starts "shop/cart:"
    (conflict,) = tenancy.conflicts(explicit, [default, explicit])
    assert conflict.other.prefix == "shop/cart:"


@pytest.mark.parametrize(("theirs", "namespace", "shared"), [
    ({"url": "redis://redis:6379/0"}, "shop", True),  # the same Service, as a bare name
    ({"url": "redis://REDIS.shop.svc.cluster.local.:6379"}, "other", True),
    ({"url": "redis://redis.shop:6379?db=0"}, "other", True),
    ({"url": "redis://redis:6379/0"}, "other", False),  # redis.other.svc
    ({"url": "redis://redis.shop.svc:6379/1"}, "shop", False),  # another database
    ({"url": "redis://redis.shop.svc:6380/0"}, "shop", False),
    ({"cluster": {"nodes": ["10.0.0.1:7000", "redis.shop.svc:6379"]}}, "shop", True),
    ({"cluster": {"nodes": ["10.0.0.1:7000"]}}, "shop", False),
])
def test_same_redis(theirs: dict[str, Any], namespace: str, shared: bool) -> None:
    old = body("a", prefixed("p:", theirs), namespace=namespace, created="1")
    new = body("b", prefixed("p:x:"), created="2")
    assert bool(tenancy.conflicts(new, [old])) is shared


def test_sentinel_needs_a_shared_address_and_master() -> None:
    def sentinel(master: str, *addresses: str) -> dict[str, Any]:
        return {"sentinel": {"masterName": master, "addresses": list(addresses)}}

    old = body("a", prefixed("p:", sentinel("mymaster", "s1:26379", "s2:26379")), created="1")
    same = body("b", prefixed("p:", sentinel("mymaster", "s2:26379")), created="2")
    other_master = body("c", prefixed("p:", sentinel("other", "s2:26379")), created="2")
    assert tenancy.conflicts(same, [old]) != []
    assert tenancy.conflicts(other_master, [old]) == []


def test_the_serving_one_keeps_the_prefix() -> None:
    # An older CacheConfig edited to overlap a newer one that serves: the edit is refused.
    edited = body("old", prefixed("shop:"), created="1")  # generation 1, not yet Ready
    serving = body("new", prefixed("shop:cart:"), created="2", serving=True)
    assert [c.other.name for c in tenancy.conflicts(edited, [edited, serving])] == ["new"]
    assert tenancy.conflicts(serving, [edited, serving]) == []


def test_memory_and_deleted_cacheconfigs_are_ignored() -> None:
    memory = body("m", prefixed("shop:"), backend="memory", created="1")
    deleted = body("d", prefixed("shop:"), created="1")
    deleted["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    new = body("b", prefixed("shop:cart:"), created="2")
    assert tenancy.conflicts(new, [memory, deleted]) == []
    assert tenancy.conflicts(memory, [new]) == []


@pytest.mark.parametrize("operator_settings", [{"prefix_conflict_retry_delay": 0.2}],
                         indirect=True)
async def test_the_operator_refuses_an_overlapping_prefix(
    cluster: ClusterEmulator, operator: Any
) -> None:
    await create(cluster, "sessions", samples.REDIS_SPEC)  # keyPrefix shop/sessions:
    await eventually(lambda: ready(cluster, "sessions"), what="the first CacheConfig Ready")
    # creationTimestamp has one-second resolution, and the operator's index may not have
    # seen sessions' Ready status yet: in the same second the tie falls to the names.
    await asyncio.sleep(1.1)
    redis = {**samples.REDIS_SPEC["redis"], "keyPrefix": "shop/"}
    await create(cluster, "greedy", samples.spec(samples.REDIS_SPEC, redis=redis))

    def refused() -> dict[str, Any] | None:
        cond = condition(get(cluster, CACHECONFIGS, "greedy"), "Ready")
        return cond if cond and cond["reason"] == "KeyPrefixConflict" else None

    cond = await eventually(refused, what="Ready=False KeyPrefixConflict")
    assert cond["status"] == "False"
    assert f"of CacheConfig {NAMESPACE}/sessions on the same Redis" in cond["message"]
    assert "'shop/' is a prefix of the key prefix 'shop/sessions:'" in cond["message"]
    assert get(cluster, "v1/configmaps", "podcache-greedy") is None
    assert ready(cluster, "sessions")  # the tenant in place keeps serving

    await patch_spec(cluster, "greedy", {"redis": {**redis, "keyPrefix": "shop/greedy:"}})
    await eventually(lambda: ready(cluster, "greedy", generation=2), what="fixed prefix Ready")
