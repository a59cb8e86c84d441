"""``podcache.AsyncClient`` end to end: a real sidecar process on each backend, through its socket.

Aspects: get/set/delete and misses, TTL expiry, set_if_absent, compare-and-set by
ETag and by value, odd keys, typed errors with the server still serving,
concurrent calls on one client, reconnecting after the sidecar restarts, a clear
``ClientError`` when the sidecar is down, and the probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import podcache
from podcache import errors
from tests.client.sidecars import SidecarProcess, memory_config
from tests.client.test_sync_client import ODD_KEYS


async def test_set_get_delete(aclient: podcache.AsyncClient, key: str) -> None:
    await aclient.set(key, b"hello", ttl=30)
    assert await aclient.get(key) == b"hello"
    await aclient.delete(key)
    with pytest.raises(podcache.CacheMiss):
        await aclient.get(key)


async def test_ttl_expires(aclient: podcache.AsyncClient, key: str) -> None:
    await aclient.set(key, b"v", ttl="300ms")
    assert await aclient.get(key) == b"v"
    deadline = asyncio.get_running_loop().time() + 3.0
    while True:
        try:
            await aclient.get(key)
        except podcache.CacheMiss:
            break
        assert asyncio.get_running_loop().time() < deadline, "the key never expired"
        await asyncio.sleep(0.02)


async def test_conditional_writes(aclient: podcache.AsyncClient, key: str) -> None:
    assert await aclient.set_if_absent(key, b"a") is True
    assert await aclient.set_if_absent(key, b"b") is False
    value, etag = await aclient.get_with_etag(key)
    assert value == b"a"
    assert await aclient.compare_and_set(key, b"c", etag) is True
    assert await aclient.compare_and_set(key, b"d", etag) is False
    assert await aclient.set_if_match(key, b"e", b"c") is True
    assert await aclient.set_if_match(key, b"f", b"c") is False
    assert await aclient.get(key) == b"e"


async def test_odd_keys(aclient: podcache.AsyncClient, key: str) -> None:
    keys = [key + odd for odd in ODD_KEYS]
    await asyncio.gather(*(aclient.set(odd, odd.encode()) for odd in keys))
    values = await asyncio.gather(*(aclient.get(odd) for odd in keys))
    assert values == [odd.encode() for odd in keys]


async def test_typed_errors(aclient: podcache.AsyncClient, key: str) -> None:
    await aclient.set(key, b"kept")
    with pytest.raises(podcache.InvalidKey):
        await aclient.get("y" * 1025)
    with pytest.raises(podcache.ValueTooLarge):
        await aclient.set(key, b"x" * 70000)
    with pytest.raises(errors.ServerError, match="never-joined"):
        await aclient.leader("never-joined")
    assert await aclient.get(key) == b"kept"


async def test_concurrent_calls(aclient: podcache.AsyncClient, key: str) -> None:
    names = [f"{key}-{index}" for index in range(200)]
    await asyncio.gather(*(aclient.set(name, name.encode()) for name in names))
    values = await asyncio.gather(*(aclient.get(name) for name in names))
    assert values == [name.encode() for name in names]


async def test_probes(aclient: podcache.AsyncClient) -> None:
    assert await aclient.health() is True
    assert await aclient.ready() is True


@pytest.fixture
def own_sidecar() -> Iterator[SidecarProcess]:
    sidecar = SidecarProcess(memory_config(), pod_name="pod-async-restart")
    try:
        sidecar.start()
        yield sidecar
    finally:
        sidecar.close()


async def test_reconnects_after_the_sidecar_restarts(own_sidecar: SidecarProcess) -> None:
    async with podcache.AsyncClient(own_sidecar.socket_path, timeout=5.0) as client:
        await client.set("k", b"before")
        await asyncio.to_thread(own_sidecar.restart)
        await client.set("k", b"after")
        assert await client.get("k") == b"after"


async def test_sidecar_down_is_a_clear_client_error(own_sidecar: SidecarProcess) -> None:
    async with podcache.AsyncClient(own_sidecar.socket_path, timeout=2.0) as client:
        assert await client.ready()
        await asyncio.to_thread(own_sidecar.stop)
        with pytest.raises(errors.ClientError, match=own_sidecar.socket_path):
            await client.get("k")


async def test_stopped_client_refuses_calls(sidecar: SidecarProcess) -> None:
    client = podcache.AsyncClient(sidecar.socket_path)
    assert await client.ready()
    await client.stop()
    with pytest.raises(errors.ClientError, match="stopped"):
        await client.get("k")
