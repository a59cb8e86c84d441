"""Vectored writes on uvloop: aiohttp hands headers and body to ``writelines`` instead of
joining them, only on a uvloop loop, and large values still arrive whole and in order.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from aiohttp import http_writer

import podcache
from podcache.sidecar import vectored_writes

from .conftest import SidecarProcess


@pytest.fixture
def flag_restored() -> Iterator[None]:
    saved = http_writer.SKIP_WRITELINES
    yield
    http_writer.SKIP_WRITELINES = saved


@pytest.mark.parametrize(
    ("new_loop", "turned_off"),
    [(asyncio.new_event_loop, False), (uvloop.new_event_loop, True)],
    ids=["asyncio", "uvloop"],
)
def test_only_a_uvloop_loop_turns_the_join_off(
    flag_restored: None, new_loop: Callable[[], asyncio.AbstractEventLoop], turned_off: bool
) -> None:
    http_writer.SKIP_WRITELINES = True
    loop = new_loop()
    try:
        assert vectored_writes.enable(loop) is turned_off
        assert http_writer.SKIP_WRITELINES is not turned_off
    finally:
        loop.close()


@pytest.mark.parametrize("size", [2048, 300_000, 4 * 1024 * 1024])
def test_values_arrive_whole_through_a_uvloop_sidecar(
    spawn_sidecar: Callable[..., SidecarProcess], backend_config: dict[str, Any], size: int
) -> None:
    config = {**backend_config, "limits": {"maxValueBytes": 8 * 1024 * 1024}}
    sidecar = spawn_sidecar(config)
    sidecar.wait_socket()
    client = podcache.Client(sidecar.socket_path, timeout=30)
    values = {f"k{i}": os.urandom(size) for i in range(3)}
    for key, value in values.items():
        client.set(key, value)
    for _ in range(2):  # kept-alive connections: each reply must end where the next begins
        for key, value in values.items():
            assert client.get(key) == value
    client.close()
