"""The clients and the CLI while the sidecar's Redis is down, and after it returns.

Aspects: ``get`` raises ``BackendUnavailable`` carrying the sidecar's Retry-After,
within the client's timeout; ``ready()`` is False and ``readiness()`` says why;
``podcache health`` exits 1 with the reason and ``podcache get`` exits 5; once
Redis is back the same client works again without being rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import podcache
from podcache import cli
from tests.client.sidecars import SidecarProcess, redis_config, wait_for
from tests.client.test_cli import run
from tests.redis_server import RedisServer


@pytest.fixture
def sidecar_on_own_redis(redis_server: RedisServer) -> Iterator[SidecarProcess]:
    config = redis_config(redis_server.url, key_prefix="down:",
                          limits={"requestTimeout": "2s"})
    sidecar = SidecarProcess(config, pod_name="pod-down")
    try:
        sidecar.start()
        yield sidecar
    finally:
        sidecar.close()


def test_backend_down_and_back(sidecar_on_own_redis: SidecarProcess,
                               redis_server: RedisServer) -> None:
    sidecar = sidecar_on_own_redis
    with podcache.Client(sidecar.socket_path, timeout=5.0) as client:
        client.set("k", b"v")
        redis_server.stop()

        with pytest.raises(podcache.BackendUnavailable) as caught:
            client.get("k")
        assert caught.value.retry_after is not None
        assert caught.value.retry_after >= 0
        assert client.ready() is False
        ready, reason = client.readiness()
        assert ready is False
        assert reason
        assert client.health() is True  # the process itself is fine

        health = run(sidecar, "health")
        assert health.returncode == cli.EXIT_NEGATIVE
        assert b"not ready" in health.stderr
        assert run(sidecar, "get", "k").returncode == cli.EXIT_BACKEND_DOWN

        redis_server.start()
        wait_for(client.ready, timeout=10.0, message="ready again")
        client.set("k", b"back")  # the data died with that redis-server: write anew
        assert client.get("k") == b"back"
