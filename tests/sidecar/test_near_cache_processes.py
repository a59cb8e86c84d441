"""The near cache across two sidecar processes on one real Redis (issue 13).

Aspects:
- a write through sidecar A is seen through sidecar B within the bound, while B serves
  repeated GETs from its near cache (its metrics say so);
- the invalidation channel of B killed (``CLIENT KILL``) and a write made meanwhile:
  B serves the new value, never the old one;
- FLUSHALL: B serves no copy of a flushed key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from podcache import CacheMiss, Client
from tests.sidecar.conftest import SidecarProcess

Spawn = Callable[..., SidecarProcess]
PREFIX = "near-proc:"
BOUND = 1.0
"""Seconds: slack for a busy 2-core machine (the bench measures the real delay)."""


@pytest.fixture
def sidecars(
    spawn_sidecar: Spawn, redis_url: str
) -> Iterator[tuple[Client, Client, SidecarProcess]]:
    config = {"type": "redis", "config": {
        "url": redis_url, "keyPrefix": PREFIX, "nearCache": {"enabled": True, "maxTTL": "30s"},
    }}
    a, b = spawn_sidecar(config), spawn_sidecar(config)
    a.wait_socket()
    b.wait_socket()
    client_a, client_b = Client(a.socket_path), Client(b.socket_path)
    with pytest.raises(CacheMiss):
        client_b.get("warm-up")  # opens B's channel (on first use)
    b.wait_metric("lab_near_cache_channel_up", 1.0)
    yield client_a, client_b, b
    client_a.stop()
    client_b.stop()


def read_until(client: Client, expected: bytes, *, old: bytes) -> float:
    started = time.monotonic()
    while True:
        value = client.get("k")
        if value == expected:
            return time.monotonic() - started
        assert value == old, value
        assert time.monotonic() - started < BOUND, f"still {value!r} after {BOUND}s"


def test_write_through_a_seen_through_b(sidecars: tuple[Client, Client, SidecarProcess]) -> None:
    a, b, process_b = sidecars
    a.set("k", b"v1", ttl=60)
    for _ in range(20):
        assert b.get("k") == b"v1"
    assert process_b.metric("lab_near_cache_hits_total") >= 19
    a.set("k", b"v2", ttl=60)
    delay = read_until(b, b"v2", old=b"v1")
    print(f"\nwrite through A -> B serves it: {delay * 1000:.1f} ms")


def test_channel_killed_no_stale_read(
    sidecars: tuple[Client, Client, SidecarProcess], redis_url: str
) -> None:
    a, b, process_b = sidecars
    a.set("k", b"v1", ttl=60)
    assert b.get("k") == b"v1"
    assert b.get("k") == b"v1"
    with redis.Redis.from_url(redis_url) as raw:
        for client in raw.client_list():
            if client.get("name") == "podcache-near-cache":
                raw.client_kill_filter(_id=int(client["id"]))
        raw.set(PREFIX + "k", b"v2", px=60_000)  # no channel left to announce it
    read_until(b, b"v2", old=b"v1")
    for _ in range(20):
        assert b.get("k") == b"v2"
    assert process_b.metric('lab_near_cache_flushes_total{cause="channel_down"}') >= 1


def test_flushall_no_stale_read(
    sidecars: tuple[Client, Client, SidecarProcess], redis_url: str
) -> None:
    a, b, _ = sidecars
    a.set("k", b"v1", ttl=60)
    assert b.get("k") == b"v1"
    assert b.get("k") == b"v1"
    with redis.Redis.from_url(redis_url) as raw:
        raw.flushall()
    started = time.monotonic()
    while True:
        try:
            b.get("k")
        except CacheMiss:
            break
        assert time.monotonic() - started < BOUND
