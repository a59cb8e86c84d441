"""A Redis ACL user per tenant, end to end (issue 10, item 6): the isolation boundary.

Two tenants share one real ``redis-server``; each has the ACL user README documents
(``ACL SETUSER <user> on >PASSWORD resetkeys ~<prefix>* &* +@all -@admin -@dangerous
+info``), and a real sidecar process logging in with ``config.username`` and the
password from ``PODCACHE_REDIS_PASSWORD``, its config rendered by the operator from a
CacheConfig with ``spec.redis.username`` (the password from ``passwordSecretRef`` as the
injector passes it). Aspects:

- under its user, a sidecar serves the cache (set, get, ETag compare-and-set,
  set-if-absent, delete), locks (acquire, refresh, a blocked waiter woken by the
  release, fences increasing) and elections (it leads), with no NOPERM in its log
- the two tenants' keys, locks and elections are independent
- a hostile sidecar with tenant A's credentials but tenant B's ``keyPrefix`` can neither
  read, write, delete nor lock anything of B's: every call fails, B's value, held lock
  and fence counter are untouched
- a plain Redis client with A's credentials gets NOPERM for B's keys, B's fence counter
  and B's election lease
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

import podcache
from podcache.election.redis import election_keys
from podcache.errors import PodcacheError
from podcache.locks.redis import lock_keys
from podcache_operator import rendering, settings, validation
from tests.client.sidecars import SidecarProcess, wait_for
from tests.redis_server import RedisServer

ELECTION = "scheduler"


@dataclass(frozen=True)
class Tenant:
    user: str
    password: str
    prefix: str


A = Tenant("shop-sessions", "pw-sessions-1", "shop/sessions:")
B = Tenant("shop-carts", "pw-carts-2", "shop/carts:")


def acl_setuser(connection: redis.Redis, tenant: Tenant) -> None:
    """Exactly the rule README documents."""
    rule = (f"on >{tenant.password} resetkeys ~{tenant.prefix}* &* +@all -@admin -@dangerous"
            " +info")
    connection.execute_command("ACL", "SETUSER", tenant.user, *rule.split())


def sidecar_for(server: RedisServer, tenant: Tenant, *, prefix: str | None = None,
                pod_name: str) -> SidecarProcess:
    """The sidecar a CacheConfig with ``spec.redis.username`` gets: its config rendered by
    the operator, the password in the environment as the injector puts it there."""
    spec = {
        "backend": "redis",
        "redis": {"url": server.url, "username": tenant.user,
                  "keyPrefix": prefix or tenant.prefix,
                  "passwordSecretRef": {"name": "redis-auth"}},
        "locks": {"defaultTTL": "10s", "maxTTL": "1m"},
        "leaderElection": {"elections": [{"name": ELECTION, "leaseDuration": "2s",
                                          "renewInterval": "100ms"}]},
    }
    assert validation.check_spec(spec, namespace="shop", name="x",
                                 sidecar=settings.SidecarSettings(image="podcache:test")) == []
    config = rendering.sidecar_config(spec, namespace="shop", name="x", metrics_port=0)
    assert config["config"]["username"] == tenant.user
    return SidecarProcess(config, pod_name=pod_name,
                          env={"PODCACHE_REDIS_PASSWORD": tenant.password})


@pytest.fixture
def tenants(redis_server: RedisServer) -> Iterator[tuple[SidecarProcess, SidecarProcess]]:
    with redis.Redis.from_url(redis_server.url) as admin:
        acl_setuser(admin, A)
        acl_setuser(admin, B)
    sidecars = (sidecar_for(redis_server, A, pod_name="pod-a"),
                sidecar_for(redis_server, B, pod_name="pod-b"))
    try:
        for sidecar in sidecars:
            sidecar.start()
        yield sidecars
    finally:
        for sidecar in sidecars:
            sidecar.close()


def test_a_tenant_user_serves_cache_locks_and_elections(
        tenants: tuple[SidecarProcess, SidecarProcess]) -> None:
    a, b = tenants
    with podcache.Client(a.socket_path, timeout=5.0) as ca, \
            podcache.Client(b.socket_path, timeout=5.0) as cb:
        ca.set("k", b"from-a", ttl=30)
        cb.set("k", b"from-b", ttl=30)
        value, etag = ca.get_with_etag("k")
        assert value == b"from-a"
        assert ca.compare_and_set("k", b"a2", etag)
        assert not ca.set_if_absent("k", b"never")
        assert ca.set_if_absent("fresh", b"1")
        ca.delete("fresh")
        assert cb.get("k") == b"from-b"  # the tenants' keys are independent

        held = ca.acquire_lock("job", ttl=5)
        refreshed = ca.refresh_lock("job", token=held.token, ttl=5)
        assert refreshed.fence == held.fence
        other = cb.acquire_lock("job", ttl=5)  # B's lock of the same name is another lock
        cb.release_lock("job", token=other.token)
        got: list[int] = []

        def wait_for_lock() -> None:
            with podcache.Client(a.socket_path, timeout=5.0) as waiter:
                lease = waiter.acquire_lock("job", ttl=5, wait=4)  # BLPOP under the ACL user
                got.append(lease.fence)
                waiter.release_lock("job", token=lease.token)

        thread = threading.Thread(target=wait_for_lock)
        thread.start()
        time.sleep(0.2)
        ca.release_lock("job", token=held.token)
        thread.join(timeout=10)
        assert got
        assert got[0] > held.fence

        for client in (ca, cb):  # each tenant's only sidecar leads its own election
            wait_for(lambda c=client: c.leader(ELECTION).leader, timeout=10,
                     message="the tenant's sidecar leads")
    for sidecar in tenants:
        assert "NOPERM" not in sidecar.log_tail(50000)


def test_another_tenants_prefix_is_out_of_reach(
        redis_server: RedisServer, tenants: tuple[SidecarProcess, SidecarProcess]) -> None:
    _, b = tenants
    with podcache.Client(b.socket_path, timeout=5.0) as cb:
        cb.set("k", b"b-value", ttl=60)
        b_lease = cb.acquire_lock("job", ttl=30)
    owner_key, fence_key, _ = lock_keys(B.prefix, "job")
    lease_key, term_key, _ = election_keys(B.prefix, ELECTION)
    with redis.Redis.from_url(redis_server.url) as admin:
        fence_before = admin.hgetall(fence_key)

    # A's credentials, B's prefix: a tenant that edits its own keyPrefix to reach B.
    hostile = sidecar_for(redis_server, A, prefix=B.prefix, pod_name="pod-hostile")
    try:
        hostile.start()
        with podcache.Client(hostile.socket_path, timeout=5.0) as ch:
            attempts = [
                lambda: ch.get("k"),
                lambda: ch.set("k", b"stolen", ttl=60),
                lambda: ch.delete("k"),
                lambda: ch.acquire_lock("job", ttl=5),
                lambda: ch.release_lock("job", token=b_lease.token),
            ]
            for attempt in attempts:
                with pytest.raises(PodcacheError):
                    attempt()
    finally:
        hostile.close()

    with podcache.Client(b.socket_path, timeout=5.0) as cb:
        assert cb.get("k") == b"b-value"
        assert cb.refresh_lock("job", token=b_lease.token, ttl=30).fence == b_lease.fence
    with redis.Redis.from_url(redis_server.url) as admin:
        assert admin.hgetall(fence_key) == fence_before
        assert admin.get(owner_key) == b_lease.token.encode()

    with redis.Redis.from_url(redis_server.url, username=A.user, password=A.password) as direct:
        assert direct.ping()
        for command in (("GET", f"{B.prefix}k"), ("SET", fence_key, "x"), ("DEL", owner_key),
                        ("HGETALL", lease_key), ("HSET", term_key, "n", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                direct.execute_command(*command)
