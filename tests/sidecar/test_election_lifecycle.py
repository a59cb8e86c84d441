"""Elections joined and left at run time leave nothing behind, and never answer stale.

Aspects:
- joining then leaving elections at run time returns ``/metrics`` to what it was:
  no ``election="<name>"`` series of a left election remain (on both backends).
- a sidecar whose event loop stalled past the renew deadline answers ``leader: false``
  the moment it resumes, before its campaign loop has run: the leadership answer
  checks the local renew deadline when it is served.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp

from tests.sidecar.conftest import StartSidecar, free_port, wait_until

FAST = {"leaseDuration": "2s", "renewDeadline": "1s", "retryPeriod": "100ms"}


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}/metrics"
    ) as response:
        assert response.status == 200
        return await response.text()


def _series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


async def test_left_elections_leave_no_metric_series(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    sidecar, api = await start_sidecar(backend_config, metrics_port=free_port())
    names = [f"left-{uuid.uuid4().hex[:6]}-{index}" for index in range(5)]
    for name in names:
        assert (await api.request("PUT", f"/v1/leader/{name}", json=FAST)).status == 200

    async def all_led() -> bool:
        states = [await api.json("GET", f"/v1/leader/{name}") for name in names]
        return all(status == 200 and state["leader"] for status, state in states)

    await wait_until(all_led, message="leading every election")
    joined = _series(await _scrape(sidecar.metrics_port))
    assert any(names[0] in line for line in joined)
    for name in names:
        assert (await api.request("DELETE", f"/v1/leader/{name}")).status == 204
    left = _series(await _scrape(sidecar.metrics_port))
    assert [line for line in left if any(name in line for name in names)] == []
    # Joining again brings the series back (at zero for a new elector).
    assert (await api.request("PUT", f"/v1/leader/{names[0]}", json=FAST)).status == 200
    again = _series(await _scrape(sidecar.metrics_port))
    assert any(f'election="{names[0]}"' in line for line in again)


async def test_leadership_answer_checks_the_renew_deadline_when_served(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    name = f"stale-{uuid.uuid4().hex[:6]}"
    sidecar, api = await start_sidecar(backend_config)
    assert (await api.request("PUT", f"/v1/leader/{name}", json=FAST)).status == 200

    async def leads() -> bool:
        status, state = await api.json("GET", f"/v1/leader/{name}")
        return status == 200 and bool(state["leader"])

    await wait_until(leads, message="leader")
    assert sidecar.state is not None
    election = sidecar.state.elections.get(name)
    assert election is not None
    # Stall the whole event loop past the renew deadline, as a SIGSTOP or a long GC
    # pause would: the campaign loop cannot run, so only a check made at serve time
    # can notice. What the route serves is ``election.state``.
    time.sleep(1.1)  # noqa: ASYNC251  # blocking on purpose: the stalled loop IS the test
    assert election.state.leader is False
    assert election.elector.is_leader is False
    assert election.elector.state.leader is False
