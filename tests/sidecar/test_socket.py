"""The Unix socket itself: permissions, creation, stale vs live sockets, the connection limit.

Aspects:
- the socket file has mode 0660 and its parent directory is created.
- a stale socket file (nobody listening) is replaced; a live one (another sidecar) is
  refused with SocketInUse naming the path; a regular file is never deleted.
- at maxConnections open connections, a further client waits in the backlog (it is not
  refused) and is served as soon as one connection closes; the gauge counts them.
- a slow client that never finishes its request does not delay other clients, and gets
  408 request_timeout after the request timeout.
- shutdown removes the socket file.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from podcache.sidecar.socket_site import SocketInUse
from tests.sidecar.conftest import StartSidecar, wait_until


def exists(path: str) -> bool:
    return os.path.exists(path)


async def test_socket_mode_is_0660_and_parent_is_created(
    start_sidecar: StartSidecar, short_tmp: Path
) -> None:
    sidecar, api = await start_sidecar(name="deep/er/s")
    info = os.stat(sidecar.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert Path(sidecar.socket_path).parent == short_tmp / "deep" / "er"
    assert (await api.request("GET", "/healthz")).status == 200


async def test_stale_socket_is_replaced(start_sidecar: StartSidecar, short_tmp: Path) -> None:
    path = short_tmp / "s0.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed sidecar leaves behind
    assert path.exists()
    _, api = await start_sidecar()
    assert (await api.request("GET", "/healthz")).status == 200


async def test_live_socket_is_refused(start_sidecar: StartSidecar) -> None:
    first, api = await start_sidecar(name="same")
    with pytest.raises(SocketInUse, match="already serving"):
        await start_sidecar(name="same")
    # The first one was not disturbed.
    assert exists(first.socket_path)
    assert (await api.request("GET", "/healthz")).status == 200


async def test_regular_file_is_not_replaced(start_sidecar: StartSidecar, short_tmp: Path) -> None:
    path = short_tmp / "s0.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketInUse, match="not a socket"):
        await start_sidecar()
    assert path.read_text() == "not a socket"


async def test_shutdown_removes_the_socket_file(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar()
    assert exists(sidecar.socket_path)
    await sidecar.shutdown()
    assert not exists(sidecar.socket_path)


async def _open(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path)


async def _healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    return await reader.readuntil(b"}")


async def test_connections_beyond_the_limit_wait_in_the_backlog(
    start_sidecar: StartSidecar,
) -> None:
    sidecar, _ = await start_sidecar({"limits": {"maxConnections": 2}})
    path = sidecar.socket_path
    busy = [await _open(path) for _ in range(2)]
    for index, (_, writer) in enumerate(busy):
        # A request in progress on each: its body has not arrived yet.
        writer.write(
            f"PUT /v1/cache/b{index} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Length: 4\r\n\r\nab"
        )
        await writer.drain()

    async def both_counted() -> bool:
        return sidecar.state is not None and sidecar.state.metrics.connections._value.get() == 2

    await wait_until(both_counted, message="two open connections")
    third = await _open(path)  # connect() succeeds: the kernel queues it
    third[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await third[1].drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(third[0].readuntil(b"}"), 0.3)
    busy[0][1].write(b"cd")  # the first request completes; its connection turns idle
    await busy[0][1].drain()
    assert b"204" in await asyncio.wait_for(busy[0][0].readuntil(b"\r\n\r\n"), 3)
    answer = await asyncio.wait_for(third[0].readuntil(b"}"), 3)
    assert b"200 OK" in answer
    for _, writer in [*busy, third]:
        writer.close()


async def test_slow_client_does_not_delay_others_and_gets_408(
    start_sidecar: StartSidecar,
) -> None:
    _, api = await start_sidecar({"limits": {"requestTimeout": "500ms"}})
    reader, writer = await _open(api.socket_path)
    writer.write(b"PUT /v1/cache/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    await writer.drain()
    started = time.monotonic()
    for index in range(20):
        response = await api.request("PUT", f"/v1/cache/fast{index}", data=b"v")
        assert response.status == 204
    assert time.monotonic() - started < 0.5  # served while the slow one hangs
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.split()[1] == b"408"
    assert b'"request_timeout"' in answer
    assert (await api.request("GET", "/v1/cache/slow")).status == 404


async def test_closed_connections_free_their_slot(start_sidecar: StartSidecar) -> None:
    sidecar, api = await start_sidecar({"limits": {"maxConnections": 5}})
    for _ in range(60):  # many more than the limit, one after the other
        reader, writer = await _open(sidecar.socket_path)
        assert b"200 OK" in await asyncio.wait_for(_healthz(reader, writer), 3)
        writer.close()
        await writer.wait_closed()
    assert sidecar.state is not None

    async def all_closed() -> bool:
        return sidecar.state is not None and sidecar.state.metrics.connections._value.get() <= 1

    await wait_until(all_closed, message="connections released")
    assert (await api.request("GET", "/healthz")).status == 200


async def test_idle_connections_make_room_for_a_waiting_client(
    start_sidecar: StartSidecar,
) -> None:
    sidecar, _ = await start_sidecar({"limits": {"maxConnections": 2}})
    idle = [await _open(sidecar.socket_path) for _ in range(2)]
    for reader, writer in idle:
        assert b"200 OK" in await _healthz(reader, writer)  # now idle, kept alive
    newcomer = await _open(sidecar.socket_path)
    answer = await asyncio.wait_for(_healthz(*newcomer), 3)
    assert b"200 OK" in answer
    # The oldest idle connection was closed to make room.
    assert await asyncio.wait_for(idle[0][0].read(), 3) == b""
    for _, writer in [*idle, newcomer]:
        writer.close()
