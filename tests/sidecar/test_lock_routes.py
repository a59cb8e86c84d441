"""The lock routes of DESIGN.md's socket table, on the memory backend and a real Redis.

Aspects:
- POST acquire: 200 {token, fence, ttl_ms}; a held lock is 409 locked; fences grow.
- ttl as a duration string or seconds; absent = locks.defaultTTL; above locks.maxTTL = 400.
- wait: a blocking acquire gets the lock when the holder releases; a wait longer than the
  request timeout is cut short and answered 409, never 503.
- refresh: 200 with the new ttl by the owner; 409 not_owner after expiry or release.
- release: 204 by the owner (also with ?token=), then someone else can acquire.
- a lease expires by itself: the sidecar never renews it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.sidecar.conftest import Api, StartSidecar, error_of


async def test_acquire_returns_lease(api: Api) -> None:
    status, lease = await api.json("POST", "/v1/locks/job", json={"ttl": "5s"})
    assert status == 200
    assert set(lease) == {"token", "fence", "ttl_ms", "waited_ms"}
    assert 0 <= lease["waited_ms"] < 1000  # no wait: about the time to reach Redis
    assert isinstance(lease["token"], str)
    assert lease["token"]
    assert isinstance(lease["fence"], int)
    assert lease["ttl_ms"] == 5000


async def test_held_lock_is_409_locked(api: Api) -> None:
    await api.json("POST", "/v1/locks/busy", json={"ttl": "5s"})
    response = await api.request("POST", "/v1/locks/busy", json={"ttl": "5s"})
    assert response.status == 409
    assert await error_of(response) == "locked"


async def test_ttl_defaults_and_forms(api: Api) -> None:
    _, default = await api.json("POST", "/v1/locks/d")
    _, seconds = await api.json("POST", "/v1/locks/s", json={"ttl": 2.5})
    _, text = await api.json("POST", "/v1/locks/t", json={"ttl": "1m"})
    _, numeric_text = await api.json("POST", "/v1/locks/n", json={"ttl": "7"})
    assert default["ttl_ms"] == 10_000  # locks.defaultTTL of the fixture
    assert seconds["ttl_ms"] == 2500
    assert text["ttl_ms"] == 60_000
    assert numeric_text["ttl_ms"] == 7000


async def test_ttl_above_max_is_400_invalid_ttl(api: Api) -> None:
    response = await api.request("POST", "/v1/locks/long", json={"ttl": "61s"})
    assert response.status == 400
    assert await error_of(response) == "invalid_ttl"
    assert "maxTTL" in (await response.json())["message"]


async def test_release_lets_another_acquire_with_a_greater_fence(api: Api) -> None:
    _, first = await api.json("POST", "/v1/locks/f", json={"ttl": "5s"})
    released = await api.request("DELETE", "/v1/locks/f", json={"token": first["token"]})
    assert released.status == 204
    _, second = await api.json("POST", "/v1/locks/f", json={"ttl": "5s"})
    assert second["fence"] > first["fence"]
    assert second["token"] != first["token"]


async def test_release_with_token_in_query(api: Api) -> None:
    _, lease = await api.json("POST", "/v1/locks/q", json={"ttl": "5s"})
    assert (await api.request("DELETE", f"/v1/locks/q?token={lease['token']}")).status == 204
    assert (await api.request("POST", "/v1/locks/q")).status == 200


async def test_release_twice_is_409_not_owner(api: Api) -> None:
    _, lease = await api.json("POST", "/v1/locks/twice", json={"ttl": "5s"})
    token = {"token": lease["token"]}
    assert (await api.request("DELETE", "/v1/locks/twice", json=token)).status == 204
    again = await api.request("DELETE", "/v1/locks/twice", json=token)
    assert again.status == 409
    assert await error_of(again) == "not_owner"


async def test_refresh_extends_and_keeps_the_fence(api: Api) -> None:
    _, lease = await api.json("POST", "/v1/locks/r", json={"ttl": "300ms"})
    status, refreshed = await api.json(
        "POST", "/v1/locks/r/refresh", json={"token": lease["token"], "ttl": "2s"}
    )
    assert status == 200
    assert refreshed["ttl_ms"] == 2000
    assert refreshed["token"] == lease["token"]
    assert refreshed["fence"] == lease["fence"]
    await asyncio.sleep(0.5)  # past the first ttl: still held thanks to the refresh
    assert (await api.request("POST", "/v1/locks/r")).status == 409


async def test_refresh_without_ttl_uses_default(api: Api) -> None:
    _, lease = await api.json("POST", "/v1/locks/rd", json={"ttl": "1s"})
    status, refreshed = await api.json(
        "POST", "/v1/locks/rd/refresh", json={"token": lease["token"]}
    )
    assert status == 200
    assert refreshed["ttl_ms"] == 10_000


async def test_lease_expires_by_itself_and_refresh_is_then_409(api: Api) -> None:
    _, lease = await api.json("POST", "/v1/locks/exp", json={"ttl": "200ms"})
    await asyncio.sleep(0.35)
    refresh = await api.request("POST", "/v1/locks/exp/refresh", json={"token": lease["token"]})
    assert refresh.status == 409
    assert await error_of(refresh) == "not_owner"
    status, other = await api.json("POST", "/v1/locks/exp", json={"ttl": "1s"})
    assert status == 200
    assert other["fence"] > lease["fence"]


async def test_blocking_acquire_gets_the_lock_on_release(api: Api) -> None:
    _, lease = await api.json("POST", "/v1/locks/block", json={"ttl": "10s"})
    started = time.monotonic()
    waiter = asyncio.create_task(
        api.json("POST", "/v1/locks/block", json={"ttl": "5s", "wait": "5s"})
    )
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await api.request("DELETE", "/v1/locks/block", json={"token": lease["token"]})
    status, second = await asyncio.wait_for(waiter, 5)
    assert status == 200
    assert second["fence"] > lease["fence"]
    assert time.monotonic() - started < 3  # woken by the release, not by the ttl


async def test_blocking_acquire_times_out_with_409(api: Api) -> None:
    await api.json("POST", "/v1/locks/wait", json={"ttl": "10s"})
    started = time.monotonic()
    response = await api.request("POST", "/v1/locks/wait", json={"wait": "300ms"})
    assert response.status == 409
    assert 0.25 < time.monotonic() - started < 2.5


async def test_wait_is_bounded_by_the_request_timeout(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    # 2 s: the wait is cut to 1.5 s, and a 0.5 s margin survives a stall of a busy CI
    # machine (with 1 s, a quarter-second stall once turned the 409 into the timer's 503).
    config = {**backend_config, "limits": {"requestTimeout": "2s"}}
    _, api = await start_sidecar(config)
    await api.json("POST", "/v1/locks/w", json={"ttl": "30s"})
    started = time.monotonic()
    response = await api.request("POST", "/v1/locks/w", json={"wait": "1h"})
    elapsed = time.monotonic() - started
    assert response.status == 409  # answered before the request timeout, not a 503
    assert 1.4 < elapsed < 2.0  # it did wait (the cut wait, less timer slack)


async def test_lock_names_are_percent_decoded(api: Api) -> None:
    _, lease = await api.json("POST", "/v1/locks/a%2Fb", json={"ttl": "5s"})
    assert (await api.request("POST", "/v1/locks/a%2fb")).status == 409
    refreshed = await api.request("POST", "/v1/locks/a%2Fb/refresh", json={"token": lease["token"]})
    assert refreshed.status == 200
