"""Watch streams (``GET /v1/leader/{name}?watch=true``) against clients that misbehave.

Aspects:
- a watcher that disconnects while the stream is quiet, followed by the stream ending
  (the election is left, or the sidecar shuts down): no 500 counted, no ERROR or
  traceback logged.
- watch streams do not count in ``limits.maxConnections``: more watches than the
  limit allows connections, and ``/healthz``, ``/readyz`` and the cache still answer.
- watch streams have their own bound (``limits.maxWatchStreams``): one more is refused
  429 ``too_many_watches`` in the JSON error shape; a slot freed is usable again.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.sidecar.conftest import StartSidecar, error_of, wait_until

FAST = {"leaseDuration": "2s", "renewDeadline": "1500ms", "retryPeriod": "100ms"}


async def _open_watch(path: str, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"GET /v1/leader/{name}?watch=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


def _statuses(sidecar: object, route_prefix: str) -> dict[int, int]:
    state = sidecar.state  # type: ignore[attr-defined]
    requests = state.metrics.http._requests
    counted: dict[int, int] = {}
    for (route, _method, status), count in requests.items():
        if route.startswith(route_prefix):
            counted[status] = counted.get(status, 0) + count
    return counted


async def test_watcher_gone_before_the_stream_ends_is_not_a_500(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    # A long heartbeat: nothing is written between the disconnect and the end of the
    # stream, so the end itself is the first write to the closed connection.
    sidecar, api = await start_sidecar({"type": "memory"}, watch_heartbeat=60.0)
    assert (await api.request("PUT", "/v1/leader/gone", json=FAST)).status == 200
    reader, writer = await _open_watch(sidecar.socket_path, "gone")
    await asyncio.wait_for(reader.readline(), 5)  # chunk size line of the first state
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)  # let the server see the connection go
    with caplog.at_level(logging.DEBUG):
        assert (await api.request("DELETE", "/v1/leader/gone")).status == 204

        async def watch_counted() -> bool:
            return bool(_statuses(sidecar, "/v1/leader/"))

        await wait_until(watch_counted, message="the watch request finished")
        await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert 500 not in _statuses(sidecar, "/v1/leader/"), _statuses(sidecar, "/v1/leader/")


async def test_watcher_gone_before_shutdown_is_not_a_500(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    # At shutdown the stream ends without a new state: ending it is its only write.
    sidecar, api = await start_sidecar({"type": "memory"}, watch_heartbeat=60.0)
    assert (await api.request("PUT", "/v1/leader/bye", json=FAST)).status == 200
    reader, writer = await _open_watch(sidecar.socket_path, "bye")
    await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.DEBUG):
        await sidecar.shutdown()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert 500 not in _statuses(sidecar, "/v1/leader/"), _statuses(sidecar, "/v1/leader/")


async def _answers(path: str, request: bytes) -> bytes:
    """The status line of ``request`` on a fresh connection, within 2 s."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 2)
    finally:
        writer.close()


async def test_watch_streams_do_not_lock_probes_and_the_cache_out(
    start_sidecar: StartSidecar,
) -> None:
    limit = 2
    sidecar, api = await start_sidecar({"type": "memory", "limits": {"maxConnections": limit}})
    assert (await api.request("PUT", "/v1/leader/many", json=FAST)).status == 200
    await api.close()  # its idle keep-alive connection would otherwise take a slot
    watches = [await _open_watch(sidecar.socket_path, "many") for _ in range(limit + 1)]
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /v1/cache/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv",
    ):
        status = await _answers(sidecar.socket_path, request)
        assert status.split()[1] in (b"200", b"204"), (request, status)
    for _, writer in watches:
        writer.close()


async def test_watch_streams_have_their_own_bound(start_sidecar: StartSidecar) -> None:
    sidecar, api = await start_sidecar(
        {"type": "memory", "limits": {"maxConnections": 8, "maxWatchStreams": 2}}
    )
    assert (await api.request("PUT", "/v1/leader/bound", json=FAST)).status == 200
    watches = [await _open_watch(sidecar.socket_path, "bound") for _ in range(2)]
    refused = await api.request("GET", "/v1/leader/bound?watch=true")
    assert refused.status == 429
    assert refused.headers.get("Retry-After")
    assert await error_of(refused) == "too_many_watches"
    assert (await api.request("GET", "/healthz")).status == 200
    _, writer = watches.pop()
    writer.close()

    async def slot_free() -> bool:
        assert sidecar.state is not None
        return sidecar.state.watches.active < 2

    await wait_until(slot_free, message="the closed watch freed its slot")
    watches.append(await _open_watch(sidecar.socket_path, "bound"))
    for _, writer in watches:
        writer.close()
