"""The kubelet's probes: ``/healthz`` on the metrics port asks the sidecar's own sockets.

Aspects:
- 200 while both sockets answer (HTTP ``/healthz``, RESP ``PING``);
- 503 naming the path once the HTTP or the RESP socket file is gone (a client could
  not connect any more: the kubelet's restart binds them again);
- 200 while the HTTP listener is at its connection limit with busy requests (busy, not
  broken: a restart would drop every client);
- 200 while shutting down (the kubelet is stopping the sidecar anyway).
"""

from __future__ import annotations

import asyncio
import os

import aiohttp

from podcache.sidecar.runtime import Sidecar
from tests.sidecar.conftest import StartSidecar, free_port, wait_until


async def probe(sidecar: Sidecar) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.metrics_port}/healthz") as response,
    ):
        return response.status, await response.json()


async def test_healthy_while_both_sockets_answer(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar(metrics_port=free_port())
    assert sidecar.resp is not None
    assert await probe(sidecar) == (200, {"status": "ok"})


async def test_unhealthy_when_the_http_socket_file_is_gone(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar(metrics_port=free_port())
    os.unlink(sidecar.socket_path)
    status, body = await probe(sidecar)
    assert status == 503
    assert sidecar.socket_path in body["reason"]


async def test_unhealthy_when_the_resp_socket_file_is_gone(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar(metrics_port=free_port())
    assert sidecar.resp is not None
    os.unlink(sidecar.resp.path)
    status, body = await probe(sidecar)
    assert status == 503
    assert sidecar.resp.path in body["reason"]


async def test_healthy_while_every_connection_is_busy(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar(
        {"limits": {"maxConnections": 2}}, metrics_port=free_port()
    )
    busy = []
    for index in range(2):
        reader, writer = await asyncio.open_unix_connection(sidecar.socket_path)
        # A request in progress: its body has not arrived, so it cannot be evicted.
        writer.write(
            f"PUT /v1/cache/b{index} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Length: 4\r\n\r\nab"
        )
        await writer.drain()
        busy.append((reader, writer))

    async def full() -> bool:
        return sidecar.state is not None and sidecar.state.metrics.connections._value.get() == 2

    await wait_until(full, message="two busy connections")
    assert await probe(sidecar) == (200, {"status": "ok"})
    for _, writer in busy:
        writer.close()


async def test_healthy_while_shutting_down(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar(metrics_port=free_port())
    assert sidecar.state is not None
    sidecar.state.shutting_down.set()
    os.unlink(sidecar.socket_path)
    assert (await probe(sidecar))[0] == 200
