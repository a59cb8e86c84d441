"""Elections and blocked lock waiters never starve cache traffic (real sidecar, real Redis).

Each test runs one sidecar process on a Redis of its own (so ``CLIENT LIST`` shows
only that sidecar) with a small command pool (``poolSize: 4``).

Aspects:
- twice as many elections joined as the pool has connections: GET, PUT, a lock
  call and ``/readyz`` still answer at once, and all the elections' change notices
  share one pub/sub connection.
- more lock waiters blocked on different locks than the pool has connections: GET,
  PUT and ``/readyz`` still answer at once, and the waiters still get their locks.
- the waiters' own bound (``waitPoolSize``): a waiter beyond it is answered at once
  with 429 ``too_many_waiters`` in the documented JSON shape (the client library
  raises ``TooManyWaiters``), while the cache and ``/readyz`` keep answering; waiters
  within the bound still get their locks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

import podcache
from podcache.errors import TooManyWaiters
from tests.client.sidecars import SidecarProcess, redis_config, wait_for
from tests.redis_server import RedisServer
from tests.sidecar.conftest import Api, error_of

POOL = 4
FAST = {"leaseDuration": "3s", "renewDeadline": "2s", "retryPeriod": "500ms"}
QUICK = 0.5
"""Seconds a cache call may take here: a starved pool answers 503 only after 1 s."""


@pytest.fixture
def start(redis_server: RedisServer) -> Iterator[Any]:
    started: list[SidecarProcess] = []

    def run(**config: Any) -> SidecarProcess:
        settings = redis_config(redis_server.url, key_prefix=f"budget-{uuid.uuid4().hex[:6]}:")
        settings["config"].update(poolSize=POOL, timeouts={"operation": "1s"}, **config)
        settings["limits"] = {"requestTimeout": "10s"}
        sidecar = SidecarProcess(settings)
        started.append(sidecar)
        sidecar.start()
        return sidecar

    yield run
    for sidecar in started:
        sidecar.close()


@pytest.fixture
async def api_of() -> AsyncIterator[Any]:
    apis: list[Api] = []

    def make(sidecar: SidecarProcess) -> Api:
        api = Api(sidecar.socket_path)
        apis.append(api)
        return api

    yield make
    for api in apis:
        await api.close()


async def _cache_answers_at_once(api: Api) -> None:
    """PUT, GET and /readyz each answer 2xx within ``QUICK`` seconds."""
    key = f"k-{uuid.uuid4().hex[:8]}"
    for method, path, kwargs in [
        ("PUT", f"/v1/cache/{key}", {"data": b"v"}),
        ("GET", f"/v1/cache/{key}", {}),
        ("GET", "/readyz", {}),
    ]:
        began = time.monotonic()
        response = await api.request(method, path, **kwargs)
        took = time.monotonic() - began
        assert response.status < 300, (method, path, response.status, await response.read())
        assert took < QUICK, (method, path, f"{took:.3f}s")


def _pubsub_connections(url: str) -> int:
    with redis.Redis.from_url(url) as connection:
        clients = connection.client_list()
    return sum(1 for client in clients if int(client.get("sub", 0)) > 0)


async def test_many_elections_share_one_pubsub_connection_and_never_starve_the_cache(
    start: Any, api_of: Any, redis_server: RedisServer
) -> None:
    sidecar = start()
    api = api_of(sidecar)
    names = [f"e{index}-{uuid.uuid4().hex[:6]}" for index in range(2 * POOL)]
    for name in names:
        response = await api.request("PUT", f"/v1/leader/{name}", json=FAST)
        assert response.status == 200, await response.read()

    async def all_led() -> bool:
        states = [await api.json("GET", f"/v1/leader/{name}") for name in names]
        return all(status == 200 and state["leader"] for status, state in states)

    deadline = time.monotonic() + 10
    while not await all_led():
        assert time.monotonic() < deadline, "not leading every election"
        await asyncio.sleep(0.05)
    await _cache_answers_at_once(api)
    status, lease = await api.json("POST", "/v1/locks/after-elections", json={"ttl": "5s"})
    assert status == 200, lease
    assert _pubsub_connections(redis_server.url) == 1


async def test_blocked_waiters_never_starve_the_cache(start: Any, api_of: Any) -> None:
    sidecar = start()
    api = api_of(sidecar)
    names = [f"w{index}-{uuid.uuid4().hex[:6]}" for index in range(POOL + 2)]
    held = {}
    for name in names:
        status, lease = await api.json("POST", f"/v1/locks/{name}", json={"ttl": "30s"})
        assert status == 200, lease
        held[name] = lease["token"]
    waiters = [
        asyncio.create_task(api.json("POST", f"/v1/locks/{name}", json={"ttl": "5s", "wait": "8s"}))
        for name in names
    ]
    await asyncio.sleep(0.5)  # every waiter is blocked in BLPOP by now
    assert not any(waiter.done() for waiter in waiters)
    await _cache_answers_at_once(api)
    for name in names:
        response = await api.request("DELETE", f"/v1/locks/{name}", json={"token": held[name]})
        assert response.status == 204
    results = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert [status for status, _ in results] == [200] * len(names), results


async def test_a_waiter_beyond_the_bound_gets_429_and_the_cache_keeps_serving(
    start: Any, api_of: Any
) -> None:
    bound = 2
    sidecar = start(waitPoolSize=bound)
    api = api_of(sidecar)
    names = [f"b{index}-{uuid.uuid4().hex[:6]}" for index in range(bound + 1)]
    held = {}
    for name in names:
        status, lease = await api.json("POST", f"/v1/locks/{name}", json={"ttl": "30s"})
        assert status == 200, lease
        held[name] = lease["token"]
    waiting = [
        asyncio.create_task(api.json("POST", f"/v1/locks/{name}", json={"ttl": "5s", "wait": "8s"}))
        for name in names[:bound]
    ]
    await asyncio.sleep(0.5)
    assert not any(waiter.done() for waiter in waiting)
    began = time.monotonic()
    refused = await api.request(
        "POST", f"/v1/locks/{names[-1]}", json={"ttl": "5s", "wait": "8s"}
    )
    assert time.monotonic() - began < QUICK
    assert refused.status == 429
    assert refused.headers.get("Retry-After")
    assert await error_of(refused) == "too_many_waiters"
    # The client library raises the library's own error for it, with the Retry-After.
    async with podcache.AsyncClient(sidecar.socket_path, timeout=5.0) as client:
        with pytest.raises(TooManyWaiters) as refusal:
            await client.acquire_lock(names[-1], ttl=5, wait=8)
    assert refusal.value.retry_after
    # A second waiter on a name already waited on rides along: it needs no connection.
    rider = asyncio.create_task(
        api.json("POST", f"/v1/locks/{names[0]}", json={"ttl": "5s", "wait": "8s"})
    )
    await asyncio.sleep(0.2)
    assert not rider.done()
    # Without wait, the lock call needs no wait connection: a plain 409.
    status, body = await api.json("POST", f"/v1/locks/{names[-1]}", json={"ttl": "5s"})
    assert (status, body["error"]) == (409, "locked")
    await _cache_answers_at_once(api)
    for name in names:
        response = await api.request("DELETE", f"/v1/locks/{name}", json={"token": held[name]})
        assert response.status == 204
    results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert [status for status, _ in results] == [200] * bound, results
    rider.cancel()  # it now waits for the first waiter's 5 s lease: not this test's business
    wait_for(lambda: sidecar.process is not None and sidecar.process.poll() is None,
             message="the sidecar still runs")
