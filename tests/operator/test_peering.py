"""Peering: several replicas, one active (kopf's ClusterKopfPeering, as the chart creates it).

Aspects: with peering on, the operator announces itself in the peering object and
serves; while a live peer of higher priority is announced there, it pauses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

import kmock

from podcache_operator import settings as podcache_settings
from tests.operator import emulator, samples
from tests.operator.conftest import CACHECONFIGS, ClusterEmulator, eventually, get
from tests.operator.test_operator import create, ready

PEERINGS = "kopf.dev/v1/clusterkopfpeerings"


def with_peering(cluster: ClusterEmulator, status: dict[str, Any] | None = None) -> None:
    cluster.resources[PEERINGS] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", namespaced=False, verbs=emulator.VERBS
    )
    cluster.objects[PEERINGS, None, "podcache-operator"] = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "podcache-operator", "uid": "peering-uid"},
        "status": status or {},
    }


def peered(config: podcache_settings.Settings, *, priority: int = 0) -> podcache_settings.Settings:
    peering = podcache_settings.PeeringSettings(
        name="podcache-operator", standalone=False, priority=priority
    )
    return dataclasses.replace(config, peering=peering)


async def start(
    cluster: ClusterEmulator, config: podcache_settings.Settings
) -> emulator.OperatorThread:
    runner = emulator.OperatorThread(
        server=str(cluster.url).rstrip("/"), config=config, standalone=False
    )
    await runner.start(within=10)
    return runner


async def test_announces_itself_and_serves(
    cluster: ClusterEmulator, operator_settings: podcache_settings.Settings
) -> None:
    with_peering(cluster)
    runner = await start(cluster, peered(operator_settings, priority=5))
    try:
        status = await eventually(
            lambda: (get(cluster, PEERINGS, "podcache-operator", None) or {}).get("status"),
            what="the operator in the peering object",
        )
        (me,) = status.values()
        assert me["priority"] == 5
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
    finally:
        await runner.stop(within=10)


async def test_pauses_while_a_higher_priority_peer_is_alive(
    cluster: ClusterEmulator, operator_settings: podcache_settings.Settings
) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    with_peering(cluster, {"other-replica": {"priority": 100, "lifetime": 60, "lastseen": now}})
    runner = await start(cluster, peered(operator_settings, priority=0))
    try:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(
            lambda: len(get(cluster, PEERINGS, "podcache-operator", None)["status"]) == 2,
            what="the operator announced next to its peer",
        )
        await eventually(lambda: get(cluster, CACHECONFIGS, "shop"), what="the CacheConfig stored")
        for _ in range(25):  # half a second of not being served
            assert ready(cluster, "shop") is None
            await asyncio.sleep(0.02)
        response = await cluster.patch(
            "/apis/kopf.dev/v1/clusterkopfpeerings/podcache-operator",
            json={"status": {"other-replica": None}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status < 300
        await eventually(lambda: ready(cluster, "shop"), what="Ready once the peer is gone")
    finally:
        await runner.stop(within=10)
