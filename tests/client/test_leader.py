"""Leader election through the sidecar, on both backends: status, join, resign, watch.

Aspects: the election from the config file is led by the sidecar's own pod
(``POD_NAME``) with a positive term; an unknown election is a ``ServerError`` with
code ``unknown_election``; joining at run time makes the pod lead a new election;
a watch (sync generator and async iterator) first yields the current state and
ends when the election is left; after resigning the election is unknown.
"""

from __future__ import annotations

import asyncio
import queue
import threading

import pytest

import podcache
from podcache import errors
from podcache.client.models import LeaderStatus
from tests.client.conftest import ELECTION
from tests.client.sidecars import SidecarProcess, wait_for


def test_configured_election_is_led_by_the_pod(client: podcache.Client,
                                               sidecar: SidecarProcess) -> None:
    status = wait_for(lambda: (s := client.leader(ELECTION)).leader and s, timeout=5.0,
                      message="leadership")
    assert status.holder == sidecar.pod_name
    assert status.term >= 1


def test_unknown_election(client: podcache.Client) -> None:
    with pytest.raises(errors.ServerError) as caught:
        client.leader("nobody-joined-this")
    assert caught.value.code == "unknown_election"


def test_join_watch_resign(client: podcache.Client, sidecar: SidecarProcess, key: str) -> None:
    client.join(key)
    joined = wait_for(lambda: (s := client.leader(key)).leader and s, message="leadership")
    assert joined.holder == sidecar.pod_name

    seen: queue.Queue[LeaderStatus | None] = queue.Queue()

    def watch() -> None:
        with podcache.Client(sidecar.socket_path) as watcher:
            for status in watcher.watch(key):
                seen.put(status)
        seen.put(None)  # the stream ended

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    first = seen.get(timeout=5.0)
    assert first == joined
    client.resign(key)
    thread.join(timeout=5.0)
    assert not thread.is_alive(), "the watch did not end when the election was left"
    rest = []
    while (item := seen.get(timeout=1.0)) is not None:
        rest.append(item)
    assert all(not status.leader for status in rest)
    with pytest.raises(errors.ServerError, match="has not joined"):
        client.leader(key)


async def test_async_watch(aclient: podcache.AsyncClient, sidecar: SidecarProcess,
                           key: str) -> None:
    await aclient.join(key)
    statuses = aclient.watch(key)
    async with asyncio.timeout(10):
        first = await anext(statuses)
        while not first.leader:
            first = await anext(statuses)
        assert first.holder == sidecar.pod_name
        await aclient.resign(key)
        rest = [status async for status in statuses]  # ends once the election is left
    assert all(not status.leader for status in rest)


async def test_async_watch_of_an_unknown_election(aclient: podcache.AsyncClient) -> None:
    with pytest.raises(errors.ServerError, match="has not joined"):
        async for _ in aclient.watch("nobody-joined-this"):
            pass
