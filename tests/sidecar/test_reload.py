"""Hot reload of the config file while serving.

Aspects:
- new limits, default TTL, lock defaults and metrics namespace apply to the next request
  on the SAME open connection (nothing is dropped).
- elections added to the file are joined, removed ones left; one joined at run time stays.
- an invalid file (bad YAML, unknown key, bad value) is rejected, counted in
  <ns>_sidecar_config_reload_total{result="error"}, and the old config keeps serving;
  a later valid file is applied again.
- a ConfigMap-style update (the ..data symlink swapped atomically) is noticed.
- a new backend (memory -> Redis) is swapped in: new requests go to Redis, a request
  in flight on the old backend finishes normally, the old backend is stopped afterwards.
- a reload changing only maxItems/maxBytes resizes the memory store in place (a real
  process, a real file change): entries stay (the eldest evicted if it shrank), a held
  lock stays held; a new Redis backend of the same type keeps the held locks; memory
  fences never go backwards, also across memory -> Redis -> memory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
import yaml
from prometheus_client import generate_latest

from podcache.sidecar.overrides import Overrides
from podcache.sidecar.runtime import Options, Sidecar
from tests.sidecar.conftest import (
    Api,
    SidecarProcess,
    StartSidecar,
    error_of,
    free_port,
    wait_until,
)

BASE_CONFIG: dict[str, Any] = {
    "type": "memory",
    "config": {"defaultTTL": "5m"},
    "limits": {"maxValueBytes": 1000},
    "locks": {"defaultTTL": "10s", "maxTTL": "1m"},
}


def write(path: Path, config: dict[str, Any] | str | bytes) -> None:
    """Replace the file atomically, as kubelet and most tools do."""
    if isinstance(config, dict):
        config = yaml.safe_dump(config)
    data = config.encode() if isinstance(config, str) else config
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def reloads(sidecar: Sidecar, result: str) -> float:
    assert sidecar.state is not None
    return float(sidecar.state.metrics.reloads.labels(result)._value.get())


async def applied(sidecar: Sidecar, count: float) -> bool:
    return reloads(sidecar, "ok") >= count


class RawConnection:
    """One HTTP/1.1 keep-alive connection, to prove a reload does not drop it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> RawConnection:
        return cls(*await asyncio.open_unix_connection(path))

    async def put(self, key: str, value: bytes) -> int:
        head = f"PUT /v1/cache/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(value)}\r\n\r\n"
        self.writer.write(head.encode() + value)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return int(head.split()[1])

    def close(self) -> None:
        self.writer.close()


async def test_limits_apply_on_the_same_connection(
    start_sidecar: StartSidecar, short_tmp: Path
) -> None:
    sidecar, _ = await start_sidecar(BASE_CONFIG, config_file=True, name="r")
    connection = await RawConnection.open(sidecar.socket_path)
    assert await connection.put("k", b"x" * 900) == 204
    write(short_tmp / "r.yaml", {**BASE_CONFIG, "limits": {"maxValueBytes": 500}})
    await wait_until(lambda: applied(sidecar, 1), message="reload")
    assert await connection.put("k", b"x" * 400) == 204
    assert await connection.put("k", b"x" * 600) == 413  # the new limit, same connection
    connection.close()


async def test_default_ttl_and_lock_defaults_apply(
    start_sidecar: StartSidecar, short_tmp: Path
) -> None:
    sidecar, api = await start_sidecar(BASE_CONFIG, config_file=True, name="r")
    new = {
        **BASE_CONFIG,
        "config": {"defaultTTL": "200ms"},
        "locks": {"defaultTTL": "3s", "maxTTL": "5s"},
    }
    write(short_tmp / "r.yaml", new)
    await wait_until(lambda: applied(sidecar, 1), message="reload")
    assert (await api.request("PUT", "/v1/cache/short", data=b"v")).status == 204
    await asyncio.sleep(0.35)
    assert (await api.request("GET", "/v1/cache/short")).status == 404
    _, lease = await api.json("POST", "/v1/locks/l")
    assert lease["ttl_ms"] == 3000
    too_long = await api.request("POST", "/v1/locks/m", json={"ttl": "10s"})
    assert too_long.status == 400


async def test_metrics_namespace_applies(start_sidecar: StartSidecar, short_tmp: Path) -> None:
    sidecar, api = await start_sidecar(BASE_CONFIG, config_file=True, name="r")
    await api.request("PUT", "/v1/cache/k", data=b"v")
    assert sidecar.exposition is not None
    before = generate_latest(sidecar.exposition.registry).decode()
    assert 'lab_cache_requests_total{operation="set",status="ok"} 1.0' in before
    write(short_tmp / "r.yaml", {**BASE_CONFIG, "metrics": {"namespace": "shop"}})
    await wait_until(lambda: applied(sidecar, 1), message="reload")
    after = generate_latest(sidecar.exposition.registry).decode()
    assert 'shop_cache_requests_total{operation="set",status="ok"} 1.0' in after
    assert 'shop_sidecar_config_reload_total{result="ok"} 1.0' in after
    assert "lab_" not in after
    # The data survived: the memory backend was not rebuilt for a rename.
    assert await (await api.request("GET", "/v1/cache/k")).read() == b"v"


async def test_elections_follow_the_file(start_sidecar: StartSidecar, short_tmp: Path) -> None:
    timing = {"leaseDuration": "2s", "renewDeadline": "1s", "retryPeriod": "100ms"}
    first, second = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    runtime = f"rt-{uuid.uuid4().hex[:6]}"
    config = {**BASE_CONFIG, "elections": [{"name": first, **timing}]}
    sidecar, api = await start_sidecar(config, config_file=True, name="r")
    assert (await api.request("GET", f"/v1/leader/{first}")).status == 200
    assert (await api.request("PUT", f"/v1/leader/{runtime}", json=timing)).status == 200
    write(short_tmp / "r.yaml", {**BASE_CONFIG, "elections": [{"name": second, **timing}]})
    await wait_until(lambda: applied(sidecar, 1), message="reload")
    assert (await api.request("GET", f"/v1/leader/{first}")).status == 404
    assert (await api.request("GET", f"/v1/leader/{second}")).status == 200
    assert (await api.request("GET", f"/v1/leader/{runtime}")).status == 200  # kept


async def test_invalid_config_is_rejected_and_old_one_keeps_serving(
    start_sidecar: StartSidecar, short_tmp: Path
) -> None:
    sidecar, api = await start_sidecar(BASE_CONFIG, config_file=True, name="r")
    path = short_tmp / "r.yaml"
    bad_files: list[dict[str, Any] | str | bytes] = [
        "type: [unclosed",
        b"type: memory\nsocket: \xff\xfe\n",  # not UTF-8
        "[" * 5000 + "]" * 5000,  # nested deeper than the parser likes
        "- just\n- a list\n",
        {**BASE_CONFIG, "limitz": {}},
        {**BASE_CONFIG, "limits": {"maxValueBytes": -5}},
        {**BASE_CONFIG, "type": "memcached"},
        {**BASE_CONFIG, "config": {"defaultTTL": "soon"}},
    ]
    for count, bad in enumerate(bad_files, start=1):
        write(path, bad)

        async def rejected(expected: int = count) -> bool:
            return reloads(sidecar, "error") >= expected

        await wait_until(rejected, message=f"rejection of {bad!r}")
        # Still the old limits and still serving.
        assert (await api.request("PUT", "/v1/cache/k", data=b"x" * 900)).status == 204
        too_big = await api.request("PUT", "/v1/cache/k", data=b"x" * 1001)
        assert await error_of(too_big) == "too_large"
    assert reloads(sidecar, "ok") == 0
    write(path, {**BASE_CONFIG, "limits": {"maxValueBytes": 2000}})
    await wait_until(lambda: applied(sidecar, 1), message="good config after bad ones")
    assert (await api.request("PUT", "/v1/cache/k", data=b"x" * 1500)).status == 204


async def test_configmap_symlink_swap_is_noticed(
    start_sidecar: StartSidecar, short_tmp: Path
) -> None:
    volume = short_tmp / "cm"
    volume.mkdir()
    (volume / "..v1").mkdir()
    (volume / "..v1" / "config.yaml").write_text(yaml.safe_dump(BASE_CONFIG))
    os.symlink("..v1", volume / "..data")
    os.symlink("..data/config.yaml", volume / "config.yaml")
    overrides = Overrides(socket=str(short_tmp / "cm.sock"), metrics_port=0)
    sidecar = Sidecar(
        Options(config_path=str(volume / "config.yaml"), overrides=overrides, reload_interval=0.05)
    )
    await sidecar.start()
    api = Api(sidecar.socket_path)
    try:
        # kubelet's update: a new timestamped dir, a temp symlink, renamed over ..data.
        (volume / "..v2").mkdir()
        new = {**BASE_CONFIG, "limits": {"maxValueBytes": 10}}
        (volume / "..v2" / "config.yaml").write_text(yaml.safe_dump(new))
        os.symlink("..v2", volume / "..data_tmp")
        os.replace(volume / "..data_tmp", volume / "..data")
        await wait_until(lambda: applied(sidecar, 1), message="reload after symlink swap")
        assert (await api.request("PUT", "/v1/cache/k", data=b"x" * 11)).status == 413
    finally:
        await api.close()
        await sidecar.shutdown()


async def test_backend_swap_memory_to_redis(
    start_sidecar: StartSidecar, short_tmp: Path, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    election = {
        "name": f"sw-{uuid.uuid4().hex[:6]}",
        "leaseDuration": "2s",
        "renewDeadline": "1s",
        "retryPeriod": "100ms",
    }
    common = {"limits": {"requestTimeout": "5s"}, "elections": [election]}
    sidecar, api = await start_sidecar({**BASE_CONFIG, **common}, config_file=True, name="r")
    assert sidecar.state is not None
    old_cache = sidecar.state.cache
    await api.request("PUT", "/v1/cache/before", data=b"in-memory")
    _, lease = await api.json("POST", "/v1/locks/held", json={"ttl": "30s"})
    # A request in flight on the old backend while the swap happens.
    waiting = asyncio.create_task(api.json("POST", "/v1/locks/held", json={"wait": "700ms"}))
    await asyncio.sleep(0.1)
    redis_config = {
        "type": "redis",
        "config": {"url": redis_url, "keyPrefix": "swap:", "defaultTTL": "5m"},
        **common,
    }
    write(short_tmp / "r.yaml", redis_config)
    await wait_until(lambda: applied(sidecar, 1), message="backend swap")
    assert sidecar.state.cache is not old_cache
    status, _ = await waiting
    assert status == 409  # finished normally on the old backend, not a 5xx
    assert (await api.request("PUT", "/v1/cache/after", data=b"in-redis")).status == 204
    assert await redis_client.get("swap:after") == b"in-redis"
    assert (await api.request("GET", "/v1/cache/before")).status == 404  # a new, empty backend
    # The lock lived in the old backend: its holder is told it is not the owner any more.
    refresh = await api.request("POST", "/v1/locks/held/refresh", json={"token": lease["token"]})
    assert refresh.status == 409
    # The election moved to the new backend: this pod leads there, its lease is in Redis.

    async def leads() -> bool:
        status, state = await api.json("GET", f"/v1/leader/{election['name']}")
        return status == 200 and state["leader"]

    await wait_until(leads, message="leader on the new backend")
    assert [key async for key in redis_client.scan_iter(f"swap:*{election['name']}*")]
    assert sidecar.reloader is not None
    await asyncio.wait_for(sidecar.reloader.wait_retired(), 10)
    assert old_cache._stopped


async def test_metrics_port_moves(start_sidecar: StartSidecar, short_tmp: Path) -> None:
    first_port, second_port = free_port(), free_port()
    config = {**BASE_CONFIG, "metrics": {"port": first_port}}
    # The metrics port comes from the file here (no command-line override).
    sidecar, _ = await start_sidecar(config, config_file=True, name="r", metrics_port=None)
    assert sidecar.metrics_port == first_port
    write(short_tmp / "r.yaml", {**BASE_CONFIG, "metrics": {"port": second_port}})
    await wait_until(lambda: applied(sidecar, 1), message="reload")
    assert sidecar.metrics_port == second_port
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{second_port}/metrics") as response:
            assert response.status == 200
            assert "lab_sidecar_config_reload_total" in await response.text()
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{first_port}/metrics")


async def test_forced_reload_does_not_wait_for_the_next_poll(
    start_sidecar: StartSidecar, short_tmp: Path
) -> None:
    # What SIGHUP does in the process: check the file now, whatever the poll interval.
    sidecar, api = await start_sidecar(BASE_CONFIG, config_file=True, name="r", reload_interval=60)
    write(short_tmp / "r.yaml", {**BASE_CONFIG, "limits": {"maxValueBytes": 10}})
    sidecar.request_reload()
    await wait_until(lambda: applied(sidecar, 1), within=2, message="forced reload")
    assert (await api.request("PUT", "/v1/cache/k", data=b"x" * 11)).status == 413


# -- reloads keep what the backend holds (issue 10, item 2) --


async def _reloads_ok(port: int) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('lab_sidecar_config_reload_total{result="ok"}'):
            return float(line.split()[-1])
    return 0.0


async def test_memory_limits_reload_resizes_in_place_and_keeps_locks(
    spawn_sidecar: Callable[..., SidecarProcess],
) -> None:
    """A real sidecar process and a real file change: only maxItems/maxBytes differ."""
    config = {**BASE_CONFIG, "config": {"defaultTTL": "5m", "maxItems": 1000, "maxBytes": 16 << 20}}
    process = spawn_sidecar(config)
    await asyncio.to_thread(process.wait_socket)
    api = Api(process.socket_path)
    try:
        for i in range(100):
            assert (await api.request("PUT", f"/v1/cache/k{i}", data=b"v%d" % i)).status == 204
        status, lease = await api.json("POST", "/v1/locks/job", json={"ttl": "1m"})
        assert status == 200
        shrunk = {**config, "config": {**config["config"], "maxItems": 60, "maxBytes": 8 << 20}}
        write(process.config_path, shrunk)
        process.process.send_signal(signal.SIGHUP)
        await wait_until(
            lambda: _reloads_ok(process.metrics_port), within=10, message="reload applied"
        )
        # Resized in place: the 60 most recently used entries stayed, the eldest 40 went.
        for i in range(40, 100):
            response = await api.request("GET", f"/v1/cache/k{i}")
            assert (response.status, await response.read()) == (200, b"v%d" % i), i
        for i in range(40):
            assert (await api.request("GET", f"/v1/cache/k{i}")).status == 404, i
        # The lock is still held: nobody else gets it, its holder still refreshes it.
        assert (await api.request("POST", "/v1/locks/job")).status == 409
        status, refreshed = await api.json(
            "POST", "/v1/locks/job/refresh", json={"token": lease["token"], "ttl": "1m"}
        )
        assert (status, refreshed["fence"]) == (200, lease["fence"])
        release = await api.request("DELETE", "/v1/locks/job", json={"token": lease["token"]})
        assert release.status == 204
        status, after = await api.json("POST", "/v1/locks/job")
        assert status == 200
        assert after["fence"] > lease["fence"]
    finally:
        await api.close()
    assert process.terminate() == 0


async def test_memory_fences_never_go_backwards_across_backend_swaps(
    start_sidecar: StartSidecar, short_tmp: Path, redis_url: str
) -> None:
    sidecar, api = await start_sidecar(BASE_CONFIG, config_file=True, name="r")
    fences = []
    for _ in range(3):
        _, lease = await api.json("POST", "/v1/locks/f")
        await api.request("DELETE", "/v1/locks/f", json={"token": lease["token"]})
        fences.append(lease["fence"])
    redis_config = {**BASE_CONFIG, "type": "redis", "config": {"url": redis_url}}
    write(short_tmp / "r.yaml", {**redis_config, "config": {"url": redis_url, "keyPrefix": "f:"}})
    await wait_until(lambda: applied(sidecar, 1), message="swap to redis")
    write(short_tmp / "r.yaml", BASE_CONFIG)  # back to a new, empty memory backend
    await wait_until(lambda: applied(sidecar, 2), message="swap back to memory")
    status, lease = await api.json("POST", "/v1/locks/f")
    assert status == 200
    assert lease["fence"] > max(fences)


async def test_redis_settings_reload_keeps_the_held_locks(
    start_sidecar: StartSidecar, short_tmp: Path, redis_url: str
) -> None:
    """A new Redis backend (other timeouts) must not release the locks handed out before."""
    prefix = f"keep-{uuid.uuid4().hex[:6]}:"
    config = {**BASE_CONFIG, "type": "redis", "config": {"url": redis_url, "keyPrefix": prefix}}
    sidecar, api = await start_sidecar(config, config_file=True, name="r")
    assert sidecar.state is not None
    assert sidecar.reloader is not None
    old_cache = sidecar.state.cache
    _, lease = await api.json("POST", "/v1/locks/job", json={"ttl": "1m"})
    slower = {**config, "config": {**config["config"], "timeouts": {"operation": "2s"}}}
    write(short_tmp / "r.yaml", slower)
    await wait_until(lambda: applied(sidecar, 1), message="reload")
    assert sidecar.state.cache is not old_cache
    await asyncio.wait_for(sidecar.reloader.wait_retired(), 15)  # the old backend is gone
    assert (await api.request("POST", "/v1/locks/job")).status == 409  # still held
    status, refreshed = await api.json(
        "POST", "/v1/locks/job/refresh", json={"token": lease["token"], "ttl": "1m"}
    )
    assert (status, refreshed["fence"]) == (200, lease["fence"])
