"""The leader-election routes, on the memory backend and a real Redis.

Aspects:
- elections of the config are joined at start with the sidecar's identity: GET 200
  {leader, holder, term}; an election not joined is 404 unknown_election (GET, watch, DELETE).
- PUT joins at run time (200 with the state, idempotent), bad timings or body are 400,
  DELETE resigns and leaves (204, then 404).
- watch=true: 200 application/x-ndjson; the current state first, one line per change,
  blank keep-alive lines while quiet; it ends when the election is left.
- two sidecars on one backend: one leader; when the leader's sidecar shuts down it
  resigns and the other's watch reports it leading with a greater term, within 1 s.
- shutdown does not wait for open watch streams.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
from yarl import URL

from tests.sidecar.conftest import BASE, Api, StartSidecar, error_of, wait_until

FAST = {"leaseDuration": "2s", "renewDeadline": "1500ms", "retryPeriod": "100ms"}


def unique(prefix: str = "e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def leading(api: Api, name: str) -> dict[str, Any] | None:
    status, state = await api.json("GET", f"/v1/leader/{name}")
    return state if status == 200 and state["leader"] else None


async def test_config_elections_are_joined_at_start(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    name = unique()
    _, api = await start_sidecar(
        {**backend_config, "elections": [{"name": name, **FAST}]}, identity="pod-a"
    )
    state = await wait_until(lambda: leading(api, name), message="leader")
    assert state["holder"] == "pod-a"
    assert state["term"] >= 1
    assert set(state) == {"leader", "holder", "term"}


async def test_unknown_election_is_404(api: Api) -> None:
    for method, path in [
        ("GET", "/v1/leader/nope"),
        ("GET", "/v1/leader/nope?watch=true"),
        ("DELETE", "/v1/leader/nope"),
    ]:
        response = await api.request(method, path)
        assert response.status == 404, path
        assert await error_of(response) == "unknown_election"


async def test_join_and_resign_at_run_time(api: Api) -> None:
    name = unique()
    status, state = await api.json("PUT", f"/v1/leader/{name}", json=FAST)
    assert status == 200
    assert set(state) == {"leader", "holder", "term"}
    await wait_until(lambda: leading(api, name), message="leader")
    status, again = await api.json("PUT", f"/v1/leader/{name}", json=FAST)  # idempotent
    assert status == 200
    assert again["leader"] is True
    assert (await api.request("DELETE", f"/v1/leader/{name}")).status == 204
    assert (await api.request("GET", f"/v1/leader/{name}")).status == 404


async def test_join_without_body_uses_client_go_defaults(api: Api) -> None:
    name = unique()
    assert (await api.request("PUT", f"/v1/leader/{name}")).status == 200
    await wait_until(lambda: leading(api, name), message="leader")
    assert (await api.request("DELETE", f"/v1/leader/{name}")).status == 204


async def test_join_with_bad_timings_is_400(api: Api) -> None:
    for body in [
        {"leaseDuration": "1s", "renewDeadline": "2s"},
        {"retryPeriod": "soon"},
        {"leaseDuration": -1},
        {"lease": "1s"},
    ]:
        response = await api.request("PUT", f"/v1/leader/{unique()}", json=body)
        assert response.status == 400, body
        assert await error_of(response) in ("invalid_request", "invalid_ttl")
    bad_name = await api.request("PUT", "/v1/leader/has%20space", json=FAST)
    assert bad_name.status == 400


async def read_lines(response: aiohttp.ClientResponse, count: int) -> list[bytes]:
    lines = []
    while len(lines) < count:
        line = await asyncio.wait_for(response.content.readline(), 5)
        if not line:
            break
        lines.append(line)
    return lines


async def test_watch_streams_changes_and_heartbeats(api: Api) -> None:
    name = unique()
    await api.json("PUT", f"/v1/leader/{name}", json=FAST)
    await wait_until(lambda: leading(api, name), message="leader")
    response = await api.session.get(URL(f"{BASE}/v1/leader/{name}?watch=true", encoded=True))
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    first = json.loads(await response.content.readline())
    assert first["leader"] is True
    assert first["holder"] == "pod-test"
    # Quiet: a blank keep-alive line after the heartbeat interval (0.5 s in these tests).
    started = time.monotonic()
    assert await asyncio.wait_for(response.content.readline(), 3) == b"\n"
    assert time.monotonic() - started >= 0.3
    # Leaving the election: a line saying we are no longer leader, then the stream ends.
    await api.request("DELETE", f"/v1/leader/{name}")
    rest = [line for line in await read_lines(response, 10) if line.strip()]
    assert rest
    assert json.loads(rest[-1])["leader"] is False
    response.close()


async def test_leadership_moves_when_the_leader_shuts_down(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    name = unique()
    config = {**backend_config, "elections": [{"name": name, **FAST}]}
    first, api_a = await start_sidecar(config, identity="pod-a", name="a")
    state_a = await wait_until(lambda: leading(api_a, name), message="pod-a leads")
    _, api_b = await start_sidecar(config, identity="pod-b", name="b")
    watch = await api_b.session.get(URL(f"{BASE}/v1/leader/{name}?watch=true", encoded=True))
    seen = json.loads(await watch.content.readline())
    while seen["holder"] != "pod-a":  # b may not have read the lease yet
        line = await asyncio.wait_for(watch.content.readline(), 3)
        seen = json.loads(line) if line.strip() else seen
    assert seen["leader"] is False

    started = time.monotonic()
    await first.shutdown()  # resigns
    while True:
        line = await asyncio.wait_for(watch.content.readline(), 3)
        if line.strip() and json.loads(line)["leader"]:
            taken = json.loads(line)
            break
    elapsed = time.monotonic() - started
    assert taken["holder"] == "pod-b"
    assert taken["term"] > state_a["term"]
    assert elapsed < 1.0, f"handover took {elapsed:.2f}s"
    watch.close()


async def test_shutdown_ends_watch_streams_quickly(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    name = unique()
    config = {
        **backend_config,
        "elections": [{"name": name, **FAST}],
        "shutdownGracePeriod": "20s",
    }
    sidecar, api = await start_sidecar(config)
    watch = await api.session.get(URL(f"{BASE}/v1/leader/{name}?watch=true", encoded=True))
    await watch.content.readline()
    started = time.monotonic()
    await sidecar.shutdown()
    assert time.monotonic() - started < 3  # not the 20 s grace period
    remaining = await asyncio.wait_for(watch.content.read(), 3)
    assert b"" in (remaining, b"")  # the stream ended
    watch.close()


async def test_new_timings_restart_the_elector_and_watches_go_on(api: Api) -> None:
    name = unique()
    await api.json("PUT", f"/v1/leader/{name}", json=FAST)
    await wait_until(lambda: leading(api, name), message="leader")
    watch = await api.session.get(URL(f"{BASE}/v1/leader/{name}?watch=true", encoded=True))
    assert json.loads(await watch.content.readline())["leader"] is True
    slower = {"leaseDuration": "3s", "renewDeadline": "2s", "retryPeriod": "200ms"}
    status, _ = await api.json("PUT", f"/v1/leader/{name}", json=slower)
    assert status == 200
    await wait_until(lambda: leading(api, name), message="leader again with new timings")
    # The same stream saw the resignation and the new term, and is still open.
    states = []
    while not (states and states[-1]["leader"]):
        line = await asyncio.wait_for(watch.content.readline(), 5)
        assert line, "the watch ended"
        if line.strip():
            states.append(json.loads(line))
    assert states[-1]["holder"] == "pod-test"
    watch.close()
