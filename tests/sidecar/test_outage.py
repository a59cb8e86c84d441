"""Redis going away and coming back while the sidecar is under load.

Aspects:
- while Redis is down (killed, or paused so it answers nothing), every request is answered
  503 backend_unavailable with Retry-After, each within the operation timeout (no hang),
  and /readyz is 503; /healthz stays 200.
- when Redis is back, requests succeed again and /readyz turns 200 by itself, without
  restarting the sidecar; no request ever got another 5xx; the sidecar never exits.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from tests.redis_server import RedisServer
from tests.sidecar.conftest import Api, StartSidecar, error_of, wait_until

OPERATION_TIMEOUT = 0.3


def config(url: str) -> dict[str, object]:
    return {
        "type": "redis",
        "config": {"url": url, "keyPrefix": "outage:", "timeouts": {"operation": "300ms"}},
        "limits": {"requestTimeout": "3s"},
    }


class Load:
    """A few clients doing PUT/GET in a loop, recording (status, seconds) per request."""

    def __init__(self, api: Api, *, workers: int = 4) -> None:
        self.api = api
        self.results: list[tuple[float, int, float]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._work(index)) for index in range(workers)]

    async def _work(self, index: int) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            started = time.monotonic()
            if count % 2:
                response = await self.api.request("PUT", f"/v1/cache/w{index}", data=b"v")
            else:
                response = await self.api.request("GET", f"/v1/cache/w{index}")
            if response.status == 503:
                assert response.headers.get("Retry-After")
                assert await error_of(response) == "backend_unavailable"
            self.results.append((started, response.status, time.monotonic() - started))
            await asyncio.sleep(0.005)

    def statuses_since(self, moment: float) -> Counter[int]:
        return Counter(status for started, status, _ in self.results if started >= moment)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_redis_killed_and_restarted_under_load(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    sidecar, api = await start_sidecar(config(redis_server.url))
    load = Load(api)
    await asyncio.sleep(0.3)
    assert load.statuses_since(0)
    assert set(load.statuses_since(0)) <= {200, 204, 404}

    redis_server.stop()
    down_at = time.monotonic()
    await asyncio.sleep(1.0)
    during = load.statuses_since(down_at + 0.1)
    assert during[503] > 0
    assert set(during) <= {503}, during
    status, _ = await api.json("GET", "/readyz")
    assert status == 503
    assert (await api.request("GET", "/healthz")).status == 200

    await asyncio.to_thread(redis_server.start)
    up_at = time.monotonic()

    async def ready() -> bool:
        return (await api.request("GET", "/readyz")).status == 200

    await wait_until(ready, within=10, message="readyz back to 200")
    await asyncio.sleep(0.5)
    recovered_at = time.monotonic()
    await asyncio.sleep(0.5)
    await load.stop()
    after = load.statuses_since(recovered_at)
    assert after
    assert set(after) <= {200, 204, 404}, after
    every = Counter(status for _, status, _ in load.results)
    assert set(every) <= {200, 204, 404, 503}, every  # never another 5xx
    slowest_503 = max(seconds for _, status, seconds in load.results if status == 503)
    assert slowest_503 < 2.0, slowest_503  # fails fast: operation timeout, not a hang
    assert sidecar.state is not None
    assert not sidecar.state.shutting_down.is_set()
    print(
        f"\noutage: {every[503]} x 503 while down, {sum(after.values())} ok after recovery, "
        f"slowest 503 {slowest_503 * 1000:.0f} ms, back {recovered_at - up_at:.2f}s after restart"
    )


async def test_redis_paused_answers_503_within_the_operation_timeout(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    _, api = await start_sidecar(config(redis_server.url))
    assert (await api.request("PUT", "/v1/cache/k", data=b"v")).status == 204
    redis_server.pause()
    try:
        started = time.monotonic()
        response = await api.request("GET", "/v1/cache/k")
        elapsed = time.monotonic() - started
        assert response.status == 503
        assert response.headers["Retry-After"]
        assert elapsed < OPERATION_TIMEOUT + 1.0
        lock = await api.request("POST", "/v1/locks/job", json={"ttl": "5s"})
        assert lock.status == 503
    finally:
        redis_server.resume()

    async def served() -> bool:
        return (await api.request("GET", "/v1/cache/k")).status == 200

    await wait_until(served, within=10, message="served again after resume")


async def test_starts_while_redis_is_down_and_becomes_ready_by_itself(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    redis_server.stop()
    election = {
        "name": "down-at-start",
        "leaseDuration": "2s",
        "renewDeadline": "1s",
        "retryPeriod": "100ms",
    }
    _, api = await start_sidecar({**config(redis_server.url), "elections": [election]})
    assert (await api.request("GET", "/healthz")).status == 200
    assert (await api.request("GET", "/readyz")).status == 503
    assert (await api.request("GET", "/v1/cache/k")).status == 503
    await asyncio.to_thread(redis_server.start)

    async def ready_and_leading() -> bool:
        if (await api.request("GET", "/readyz")).status != 200:
            return False
        status, state = await api.json("GET", "/v1/leader/down-at-start")
        return status == 200 and state["leader"]

    await wait_until(ready_and_leading, within=10, message="ready and leading after Redis came up")
    assert (await api.request("PUT", "/v1/cache/k", data=b"v")).status == 204
