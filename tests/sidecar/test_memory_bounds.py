"""maxBytes bounds the sidecar's memory (issue 10, item 3).

Aspects:
- request bodies in memory count against one budget (limits.maxInflightBytes): a PUT
  beyond it answers a JSON 503 ``overloaded`` with Retry-After at once, the uploads
  in progress finish, nothing stored is lost, and the budget is free again afterwards;
- a budget that cannot hold the largest value is a config error naming the field;
- a real sidecar process flooded with tiny entries grows its RSS by about maxBytes,
  not by ~490 B per entry (the bound is generous: allocator and arena slack).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from podcache import configfile
from podcache.errors import ConfigError
from tests.sidecar.conftest import Api, SidecarProcess, StartSidecar, error_of

VALUE = 64 * 1024


async def _start_upload(path: str, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT whose headers and first half are sent: its handler holds its claim, waiting."""
    reader, writer = await asyncio.open_unix_connection(path)
    head = f"PUT /v1/cache/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {VALUE}\r\n\r\n"
    writer.write(head.encode() + b"a" * (VALUE // 2))
    await writer.drain()
    return reader, writer


async def _finish_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(b"a" * (VALUE - VALUE // 2))
    await writer.drain()
    status = int((await reader.readuntil(b"\r\n")).split()[1])
    writer.close()
    return status


async def test_bodies_over_the_global_budget_are_refused_with_503(
    start_sidecar: StartSidecar,
) -> None:
    config = {
        "type": "memory",
        "limits": {"maxValueBytes": VALUE, "maxInflightBytes": 4 * VALUE},  # two bodies
    }
    sidecar, api = await start_sidecar(config)
    assert (await api.request("PUT", "/v1/cache/kept", data=b"stored before")).status == 204
    uploads = [await _start_upload(sidecar.socket_path, f"up{i}") for i in range(2)]
    await asyncio.sleep(0.2)  # both handlers are reading their bodies now
    over = await api.request("PUT", "/v1/cache/third", data=b"b" * VALUE)
    assert over.status == 503
    assert over.headers["Retry-After"] == "1"
    assert over.content_type == "application/json"
    assert await error_of(over) == "overloaded"
    # A small body does not fit either while the budget is full; reads still work.
    assert (await api.request("PUT", "/v1/cache/small", data=b"x")).status == 503
    assert await (await api.request("GET", "/v1/cache/kept")).read() == b"stored before"
    assert [await _finish_upload(*upload) for upload in uploads] == [204, 204]
    # The budget was given back: the next upload fits, and nothing stored was lost.
    assert (await api.request("PUT", "/v1/cache/third", data=b"b" * VALUE)).status == 204
    for key in ("kept", "up0", "up1", "third"):
        assert (await api.request("GET", f"/v1/cache/{key}")).status == 200, key
    assert sidecar.state is not None
    assert sidecar.state.bodies.used == 0


def test_a_budget_smaller_than_two_values_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"limits\.maxInflightBytes.*twice"):
        configfile.parse({"limits": {"maxValueBytes": 1000, "maxInflightBytes": 1999}})


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_rss_of_a_real_sidecar_follows_max_bytes_under_tiny_entries(
    spawn_sidecar: Callable[..., SidecarProcess],
) -> None:
    max_bytes = 4 << 20
    config = {"type": "memory", "config": {"maxItems": 10**7, "maxBytes": max_bytes}}
    process = spawn_sidecar(config)
    await asyncio.to_thread(process.wait_socket)
    pid = process.process.pid
    apis = [Api(process.socket_path) for _ in range(4)]
    try:
        await apis[0].request("PUT", "/v1/cache/warm", data=b"x")
        before = _rss(pid)

        async def flood(api: Api, start: int) -> None:
            for i in range(start, 60_000, len(apis)):
                assert (await api.request("PUT", f"/v1/cache/k{i}", data=b"x")).status == 204

        await asyncio.gather(*(flood(api, n) for n, api in enumerate(apis)))
        growth = _rss(pid) - before
    finally:
        for api in apis:
            await api.close()
    # Before the fix: ~29 MB for 60k entries charged 6-7 B each. Generous: arenas, buffers.
    assert growth <= max_bytes * 1.5 + (8 << 20), f"RSS grew {growth / 2**20:.1f} MiB"
    assert process.terminate() == 0
