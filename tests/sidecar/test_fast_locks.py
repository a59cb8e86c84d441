"""The lean path for lock acquire, refresh and release (``podcache.sidecar.fast_locks``).

Aspects:
- the same answers as the app's routes: one script of requests (leases, held locks,
  refresh and release by owner and stranger, bad JSON, bad ttl and wait, missing and
  unknown fields, bad names) sent to a sidecar with the lean path and to one without
  it gives the same statuses, Content-Types, error bodies and lease shapes, on both
  backends; and the lean path really took the requests it should (the app saw only
  the ones it hands over: other methods, a query, ``Expect``);
- the HTTP metrics count them under the router's route labels, as the app does;
- the lease JSON is what ``json.dumps`` writes, also for a token that needs escaping;
- Redis down: acquire, refresh and release answer 503 ``backend_unavailable`` with
  ``Retry-After`` within the operation timeout; with a request timeout shorter than
  the operation timeout, the request timer still answers first.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_request import BaseRequest

from podcache.locks import Lease
from podcache.sidecar import fast_locks, routes_locks
from podcache.sidecar.runtime import Sidecar
from tests.redis_server import RedisServer
from tests.sidecar.conftest import Api, StartSidecar, error_of

LIMITS = {"maxKeyBytes": 64, "requestTimeout": "3s"}
LOCKS = {"defaultTTL": "10s", "maxTTL": "1m"}


class Lean:
    """Switches the lean path off for the next sidecar started, or records what it hands on."""

    def __init__(self) -> None:
        self.enabled = True
        self.handed_on: list[str] = []  # "METHOD target" of lock requests the app got


@pytest.fixture
def lean(monkeypatch: pytest.MonkeyPatch) -> Lean:
    switch = Lean()
    real = fast_locks.handler

    def handler(app: web.Application, fallback: fast_locks.RequestHandler
                ) -> fast_locks.RequestHandler:
        if not switch.enabled:
            return fallback

        async def recording(request: BaseRequest) -> web.StreamResponse:
            if request.raw_path.startswith(routes_locks.PREFIX):
                switch.handed_on.append(f"{request.method} {request.raw_path}")
            return await fallback(request)

        return real(app, recording)

    monkeypatch.setattr(fast_locks, "handler", handler)
    return switch


def _config(backend_config: dict[str, Any], tag: str) -> dict[str, Any]:
    config = json.loads(json.dumps(backend_config))
    if config["type"] == "redis":
        config["config"]["keyPrefix"] += tag  # the two sidecars must not share locks
    return {**config, "limits": LIMITS, "locks": LOCKS}


async def _script(api: Api) -> list[tuple[Any, ...]]:
    """The requests both sidecars get, and what of each answer must be the same."""
    seen: list[tuple[Any, ...]] = []

    async def send(method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> Any:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        response = await api.request(method, path, data=data, headers=headers)
        text = await response.read()
        payload: Any = json.loads(text) if text else None
        shown = payload
        if isinstance(payload, dict) and "token" in payload:
            assert set(payload) == {"token", "fence", "ttl_ms", "waited_ms"}, payload
            assert isinstance(payload["token"], str)
            assert isinstance(payload["fence"], int)
            assert 0 <= payload["waited_ms"] < 1000
            shown = {"ttl_ms": payload["ttl_ms"]}  # token and fence differ between sidecars
        headers = response.headers
        seen.append((method, path.split("?token=")[0], response.status,
                     headers.get("Content-Type"), headers.get("Retry-After"),
                     headers.get("Allow"), shown))
        return payload

    lease = await send("POST", "/v1/locks/job", {"ttl": "5s"})
    await send("POST", "/v1/locks/job", {"ttl": "5s"})  # held: 409 locked
    await send("POST", "/v1/locks/job", {"ttl": "5s", "wait": "100ms"})  # waited in vain
    await send("POST", "/v1/locks/x", raw=b"{not json")
    await send("POST", "/v1/locks/x", raw=b"[1, 2]")
    await send("POST", "/v1/locks/x", raw=b"\xff\xfe")
    await send("POST", "/v1/locks/x", {"ttl": "soon"})
    await send("POST", "/v1/locks/x", {"ttl": -1})
    await send("POST", "/v1/locks/x", {"ttl": "2m"})  # above locks.maxTTL
    await send("POST", "/v1/locks/x", {"wait": "later"})
    await send("POST", "/v1/locks/x", {"ttl": "1s", "bogus": 1})
    await send("POST", "/v1/locks/%ZZ", {"ttl": "1s"})
    await send("POST", "/v1/locks/%FF", {"ttl": "1s"})
    await send("POST", "/v1/locks/" + "n" * 65, {"ttl": "1s"})
    await send("POST", "/v1/locks/", {"ttl": "1s"})
    await send("POST", "/v1/locks//refresh", {"token": "t"})
    await send("POST", "/v1/locks/x")  # empty body: all defaults
    await send("POST", "/v1/locks/job/refresh", {"token": lease["token"], "ttl": "7s"})
    await send("POST", "/v1/locks/job/refresh", {"token": lease["token"]})  # default ttl
    await send("POST", "/v1/locks/job/refresh", {})
    await send("POST", "/v1/locks/job/refresh", {"token": 5})
    await send("POST", "/v1/locks/job/refresh", {"token": "wrong"})
    await send("POST", "/v1/locks/job/refresh", {"token": "é\"\\x"})
    await send("POST", "/v1/locks/job/refresh", {"token": lease["token"], "ttl": "1h"})
    await send("POST", "/v1/locks/job/refresh", {"token": lease["token"], "wait": "1s"})
    await send("DELETE", "/v1/locks/job", {"token": "wrong"})
    await send("DELETE", "/v1/locks/job", {})
    await send("DELETE", "/v1/locks/job", {"token": lease["token"], "ttl": "1s"})
    await send("DELETE", "/v1/locks/job", {"token": lease["token"]})
    await send("DELETE", "/v1/locks/job", {"token": lease["token"]})  # twice: not_owner
    other = await send("POST", "/v1/locks/a%2Fb%20c", {"ttl": 5})
    await send("POST", "/v1/locks/a%2Fb%20c/refresh", {"token": other["token"]})
    # What the lean path hands to the app: other methods, a query, Expect.
    await send("PUT", "/v1/locks/a%2Fb%20c", {"token": other["token"]})
    await send("GET", "/v1/locks/a%2Fb%20c/refresh")
    await send("DELETE", "/v1/locks/a%2Fb%20c/refresh", {"token": other["token"]})
    await send("DELETE", f"/v1/locks/a%2Fb%20c?token={other['token']}")
    await send("POST", "/v1/locks/e", {"ttl": "1s"}, headers={"Expect": "100-continue"})
    return seen


HANDED_ON = [
    "PUT /v1/locks/a%2Fb%20c",
    "GET /v1/locks/a%2Fb%20c/refresh",
    "DELETE /v1/locks/a%2Fb%20c/refresh",
    "DELETE /v1/locks/a%2Fb%20c?token=",
    "POST /v1/locks/e",
]


def _requests(sidecar: Sidecar) -> dict[tuple[str, str, int], int]:
    assert sidecar.state is not None
    return dict(sidecar.state.metrics.http._requests)


async def test_same_answers_and_metrics_as_the_app(
    start_sidecar: StartSidecar, backend_config: dict[str, Any], lean: Lean
) -> None:
    fast, fast_api = await start_sidecar(_config(backend_config, "lean:"))
    lean.enabled = False
    slow, slow_api = await start_sidecar(_config(backend_config, "app:"))
    through_lean = await _script(fast_api)
    through_app = await _script(slow_api)
    assert through_lean == through_app
    handed_on = [call.split("token=")[0] + ("token=" if "token=" in call else "")
                 for call in lean.handed_on]
    assert handed_on == HANDED_ON  # everything else took the lean path
    counted = _requests(fast)
    assert counted == _requests(slow)
    assert counted[(fast_locks.ROUTE_LABEL, "POST", 200)] >= 2
    assert counted[(fast_locks.REFRESH_LABEL, "POST", 409)] == 2
    assert counted[(fast_locks.ROUTE_LABEL, "DELETE", 204)] == 2


@pytest.mark.parametrize("token", ["0123abcd", "é\"\\x\n\u2028", "\ud800"])
def test_lease_json_is_what_json_dumps_writes(token: str) -> None:
    lease = Lease(token=token, fence=2**63 + 1, ttl=1.2345)
    written = routes_locks.lease_body(lease, waited=0.0219)
    expected = {"token": token, "fence": 2**63 + 1, "ttl_ms": 1234, "waited_ms": 21}
    assert written == json.dumps(expected).encode()


async def test_redis_down_is_503_within_the_operation_timeout(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    _, api = await start_sidecar({
        "type": "redis",
        "config": {"url": redis_server.url, "keyPrefix": "fastlocks:",
                   "timeouts": {"operation": "300ms"}},
        "limits": {"requestTimeout": "5s"},
    })
    status, lease = await api.json("POST", "/v1/locks/down", json={"ttl": "10s"})
    assert status == 200
    redis_server.pause()
    try:
        for method, path, body in (
            ("POST", "/v1/locks/other", {"ttl": "10s"}),
            ("POST", "/v1/locks/down/refresh", {"token": lease["token"]}),
            ("DELETE", "/v1/locks/down", {"token": lease["token"]}),
        ):
            started = time.monotonic()
            response = await api.request(method, path, json=body)
            elapsed = time.monotonic() - started
            assert (response.status, await error_of(response)) == (503, "backend_unavailable")
            assert response.headers["Retry-After"] == "1"
            assert elapsed < 1.5, f"{method} {path}: {elapsed:.2f}s"
    finally:
        redis_server.resume()


async def test_request_timeout_shorter_than_the_operation_timeout(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    _, api = await start_sidecar({
        "type": "redis",
        "config": {"url": redis_server.url, "keyPrefix": "fastlocks-timer:",
                   "timeouts": {"operation": "3s"}},
        "limits": {"requestTimeout": "300ms"},
    })
    status, lease = await api.json("POST", "/v1/locks/t", json={"ttl": "10s"})
    assert status == 200
    redis_server.pause()
    try:
        for method, path, body in (
            ("POST", "/v1/locks/u", {"ttl": "10s"}),
            ("POST", "/v1/locks/t/refresh", {"token": lease["token"]}),
            ("DELETE", "/v1/locks/t", {"token": lease["token"]}),
        ):
            started = time.monotonic()
            response = await api.request(method, path, json=body)
            elapsed = time.monotonic() - started
            assert (response.status, await error_of(response)) == (503, "backend_unavailable")
            assert elapsed < 1.5, f"{method} {path}: {elapsed:.2f}s"
    finally:
        redis_server.resume()
