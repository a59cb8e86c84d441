"""A reload to a backend that fails its check is refused; the working one stays (issue 10, item 14).

Real sidecar processes and real ``redis-server`` processes. The check is connect +
AUTH + PING within the new backend's connect timeout.

Aspects:
- a valid file with a wrong password, or a Redis that is not there, is refused:
  logged, counted in ``lab_sidecar_config_reload_total{result="error"}``, and the
  sidecar keeps serving the old backend's data (and stays ready);
- a good file after that is applied;
- when the current backend is down too, the new one that answers is taken.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.availability import unavailable
from tests.redis_server import RedisServer, RedisUnavailable, free_port
from tests.sidecar.conftest import Api, SidecarProcess, wait_until
from tests.sidecar.test_reload import write
from tests.sidecar.test_secrets import reloads

PASSWORD = "right-password"
Spawn = Callable[..., SidecarProcess]


def _server(*, password: str | None = None) -> RedisServer:
    try:
        server = RedisServer()
        server.start()
    except RedisUnavailable as exc:
        unavailable("Redis", str(exc))
    if password is not None:
        with redis.Redis(port=server.port) as admin:
            admin.config_set("requirepass", password)
    return server


@pytest.fixture
def protected_redis() -> Iterator[RedisServer]:
    server = _server(password=PASSWORD)
    yield server
    server.close()


def redis_file(port: int, **extra: Any) -> dict[str, Any]:
    return {"type": "redis",
            "config": {"url": f"redis://127.0.0.1:{port}/0", "keyPrefix": "reload-check:",
                       "timeouts": {"connect": "500ms"}, **extra}}


async def reload_to(process: SidecarProcess, config: dict[str, Any], *, result: str) -> None:
    before = await reloads(process.metrics_port, result)
    write(process.config_path, config)
    process.process.send_signal(signal.SIGHUP)

    async def counted() -> bool:
        return await reloads(process.metrics_port, result) > before

    await wait_until(counted, within=10, message=f"reload counted as {result}: {config}")


@pytest.mark.redis
async def test_reload_to_a_failing_backend_is_refused_and_the_working_one_stays(
    spawn_sidecar: Spawn, protected_redis: RedisServer,
) -> None:
    good = redis_file(protected_redis.port)
    process = spawn_sidecar(good, env={"PODCACHE_REDIS_PASSWORD": PASSWORD})
    await asyncio.to_thread(process.wait_socket)
    api = Api(process.socket_path)
    try:
        assert (await api.request("PUT", "/v1/cache/k", data=b"v")).status == 204
        refused = [
            redis_file(protected_redis.port, password="wrong-password"),
            redis_file(free_port()),  # nothing listens there
        ]
        for config in refused:
            await reload_to(process, config, result="error")
            response = await api.request("GET", "/v1/cache/k")
            assert (response.status, await response.read()) == (200, b"v"), config
            assert (await api.request("GET", "/readyz")).status == 200
        log = process.log_path.read_text()
        assert log.count("failed its check") == 2, log
        assert "config.url" in log  # names where it looked
        assert await reloads(process.metrics_port, "ok") == 0
        # A good change after the refusals is applied.
        await reload_to(process, redis_file(protected_redis.port, defaultTTL="1m"), result="ok")
        response = await api.request("GET", "/v1/cache/k")
        assert (response.status, await response.read()) == (200, b"v")
    finally:
        await api.close()
    assert process.terminate() == 0


@pytest.mark.redis
async def test_a_new_backend_is_taken_when_the_current_one_is_down_too(
    spawn_sidecar: Spawn,
) -> None:
    current, new = _server(), _server()
    try:
        process = spawn_sidecar(redis_file(current.port))
        await asyncio.to_thread(process.wait_socket)
        current.stop()
        await reload_to(process, redis_file(new.port), result="ok")
        api = Api(process.socket_path)
        try:
            assert (await api.request("PUT", "/v1/cache/k", data=b"v")).status == 204
        finally:
            await api.close()
        with redis.Redis(port=new.port) as raw:
            assert raw.get("reload-check:k") == b"v"
        assert process.terminate() == 0
    finally:
        current.close()
        new.close()
