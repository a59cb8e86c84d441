"""Lock and election keys that hold something podcache never wrote there (issue 10, item 6).

A tenant with an overlapping ``keyPrefix`` (or anyone with write access to the Redis)
can overwrite a fence counter with a string, or a lock's owner key with a hash. Before,
every acquire of that lock then answered 503 WRONGTYPE (or 409 locked) forever. Aspects,
on a real sidecar process and a real Redis:

- a fence counter overwritten with a string: the next acquire succeeds with a fence
  greater than every earlier one (re-seeded from the Redis clock), the next counts by
  one, and the sidecar logs an ERROR naming the lock and what it found
- a fence counter overwritten with a number larger than the clock (e.g. a counter
  written by ``INCR``) is honoured: fences continue above it
- a fence hash whose ``n`` is not a number is re-seeded the same way
- an owner key of another type is not a lease: acquire takes the lock; refresh and
  release with a token answer ``not_owner`` instead of 503
- an election's term counter or lease key of another type: someone leads again, with a
  term greater than before
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

import podcache
from podcache.election.redis import election_keys
from podcache.errors import NotOwner
from podcache.locks.redis import lock_keys
from tests.client.sidecars import SidecarProcess, election, redis_config, wait_for

ELECTION = "damaged"


@pytest.fixture
def prefix() -> str:
    return f"damaged-{uuid.uuid4().hex[:6]}:"


@pytest.fixture
def sidecar(redis_url: str, prefix: str) -> Iterator[SidecarProcess]:
    config = redis_config(redis_url, key_prefix=prefix,
                          locks={"defaultTTL": "10s", "maxTTL": "1m"},
                          elections=[election(ELECTION, lease="1s", renew="700ms",
                                              retry="50ms")])
    process = SidecarProcess(config, pod_name="pod-a")
    try:
        process.start()
        yield process
    finally:
        process.close()


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


def _acquire_release(client: podcache.Client, name: str) -> int:
    lease = client.acquire_lock(name, ttl=5)
    client.release_lock(name, token=lease.token)
    return lease.fence


def test_fence_counter_overwritten_with_a_string(
        sidecar: SidecarProcess, direct: redis.Redis, prefix: str) -> None:
    _, fence_key, _ = lock_keys(prefix, "job")
    with podcache.Client(sidecar.socket_path, timeout=5.0) as client:
        before = _acquire_release(client, "job")
        direct.set(fence_key, "not a counter")
        after = _acquire_release(client, "job")  # was: 503 backend_unavailable, forever
        assert after > before
        assert _acquire_release(client, "job") == after + 1
    assert direct.type(fence_key) == b"hash"
    log = sidecar.log_tail(20000)
    assert "ERROR" in log, log
    assert "lock 'job'" in log
    assert "held a string" in log


def test_fence_counter_holding_a_larger_number_is_honoured(
        sidecar: SidecarProcess, direct: redis.Redis, prefix: str) -> None:
    _, fence_key, _ = lock_keys(prefix, "job")
    big = time.time_ns() // 1000 + 10**12  # ahead of the Redis clock by ~11 days
    with podcache.Client(sidecar.socket_path, timeout=5.0) as client:
        _acquire_release(client, "job")
        direct.set(fence_key, str(big))
        assert _acquire_release(client, "job") == big + 1


def test_fence_hash_with_a_garbled_number(
        sidecar: SidecarProcess, direct: redis.Redis, prefix: str) -> None:
    _, fence_key, _ = lock_keys(prefix, "job")
    with podcache.Client(sidecar.socket_path, timeout=5.0) as client:
        before = _acquire_release(client, "job")
        direct.hset(fence_key, "n", "abc")
        assert _acquire_release(client, "job") > before


def test_owner_key_of_another_type_is_not_a_lease(
        sidecar: SidecarProcess, direct: redis.Redis, prefix: str) -> None:
    owner_key, _, _ = lock_keys(prefix, "job")
    with podcache.Client(sidecar.socket_path, timeout=5.0) as client:
        before = _acquire_release(client, "job")
        lease = client.acquire_lock("job", ttl=5)
        direct.delete(owner_key)
        direct.hset(owner_key, "someone", "else")
        with pytest.raises(NotOwner):  # was: 503 WRONGTYPE
            client.refresh_lock("job", token=lease.token, ttl=5)
        with pytest.raises(NotOwner):
            client.release_lock("job", token=lease.token)
        after = _acquire_release(client, "job")  # was: 409 locked, forever (no TTL)
        assert after > lease.fence > before
    assert direct.type(owner_key) in (b"none", b"string")
    assert "hash" in sidecar.log_tail(20000)


def _term(client: podcache.Client, *, after: int = -1) -> int:
    """The term once pod-a leads in a term other than ``after``."""
    status = wait_for(lambda: (s := client.leader(ELECTION)).leader and s.term != after and s,
                      timeout=10, message="pod-a leads in a new term")
    return int(status.term)


def test_election_keys_of_another_type(
        sidecar: SidecarProcess, direct: redis.Redis, prefix: str) -> None:
    lease_key, term_key, _ = election_keys(prefix, ELECTION)
    with podcache.Client(sidecar.socket_path, timeout=5.0) as client:
        first = _term(client)
        direct.set(term_key, "not a counter")
        direct.delete(lease_key)  # the lease lapses: the next campaign advances the term
        second = _term(client, after=first)
        assert second > first
        direct.delete(lease_key)
        direct.rpush(lease_key, "junk")  # a list where the lease hash belongs
        wait_for(lambda: direct.type(lease_key) == b"hash", timeout=10,
                 message="the lease replaced")
        assert _term(client, after=second) > second
    assert "ERROR" in sidecar.log_tail(20000)
