"""Peering: several replicas, one active (kopf's ClusterKopfPeering, as the chart creates it).

Aspects: with peering on, the operator announces itself in the peering object and
serves; while a live peer of higher priority is announced there, it pauses. When the
peering object is missing, the operator creates it (and again when it is deleted while
running); when kopf's peering CRD is missing, one replica runs standalone and several
wait, each saying so at WARNING.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

import kmock
import pytest

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


def peered(
    config: podcache_settings.Settings, *, priority: int = 0, replicas: int = 1
) -> podcache_settings.Settings:
    peering = podcache_settings.PeeringSettings(
        name="podcache-operator",
        standalone=False,
        priority=priority,
        replicas=replicas,
        watchdog_interval=0.2,
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


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and text in r.getMessage()
    ]


async def test_creates_a_missing_peering_object_and_serves(
    cluster: ClusterEmulator,
    operator_settings: podcache_settings.Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression (issue 9, defect 3): with the CRD but no object (crds.enabled=false, or
    a GitOps tool pruned the chart's hook) kopf waited silently and nothing was served."""
    with_peering(cluster)
    del cluster.objects[PEERINGS, None, "podcache-operator"]
    runner = await start(cluster, peered(operator_settings, priority=5))
    try:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        assert get(cluster, PEERINGS, "podcache-operator", None) is not None
        assert warnings_about(caplog, "was missing")
        # Deleted while running: put back by the watchdog.
        response = await cluster.delete("/apis/kopf.dev/v1/clusterkopfpeerings/podcache-operator")
        assert response.status < 300
        await eventually(
            lambda: get(cluster, PEERINGS, "podcache-operator", None), what="re-created"
        )
    finally:
        await runner.stop(within=10)


async def test_one_replica_runs_standalone_without_the_peering_crd(
    cluster: ClusterEmulator,
    operator_settings: podcache_settings.Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression (issue 9, defect 3): without kopf's CRD the operator did nothing."""
    runner = await start(cluster, peered(operator_settings, priority=5))
    try:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        (warning,) = warnings_about(caplog, "clusterkopfpeerings.kopf.dev is not installed")
        assert "running standalone" in warning
        assert "crds.enabled=true" in warning
    finally:
        await runner.stop(within=10)


async def test_several_replicas_wait_for_the_peering_crd_and_say_so(
    cluster: ClusterEmulator,
    operator_settings: podcache_settings.Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = emulator.OperatorThread(
        server=str(cluster.url).rstrip("/"),
        config=peered(operator_settings, priority=5, replicas=2),
        standalone=False,
    )
    runner.thread.start()
    try:
        await eventually(
            lambda: warnings_about(caplog, "Waiting for kopf's peering CRD"), what="the WARNING"
        )
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await asyncio.sleep(0.3)
        assert ready(cluster, "shop") is None  # two replicas must not both act
        with_peering(cluster)
        await eventually(lambda: ready(cluster, "shop"), what="Ready once the CRD is there")
    finally:
        await runner.stop(within=10)
