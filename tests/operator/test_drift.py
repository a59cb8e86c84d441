"""Owned objects deleted or edited by hand are put back (pure checks and against KMock).

Aspects: which objects are ours (controller ownerReference to a CacheConfig); what
counts as drift (our labels, annotations, data, the Service fields we set) and
what does not (fields and labels others add); a ConfigMap deleted or edited while
the operator runs is restored; a deleted CacheConfig's objects stay deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from podcache_operator import drift, rendering
from tests.operator import samples
from tests.operator.conftest import NAMESPACE, ClusterEmulator, eventually, get
from tests.operator.test_operator import BASE, create, ready

RENDERED = rendering.render(samples.MEMORY_SPEC, namespace="shop", name="shop", metrics_port=9090)
OWNER_REF = {
    "apiVersion": "podcache.io/v1alpha1",
    "kind": "CacheConfig",
    "name": "shop",
    "uid": "u-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def owned(obj: dict[str, Any]) -> dict[str, Any]:
    result = samples.spec(obj)
    result["metadata"]["ownerReferences"] = [OWNER_REF]
    return result


class TestOwnership:
    def test_controlled_by_a_cacheconfig(self) -> None:
        assert drift.controller_of(owned(RENDERED.config_map)) == drift.Owner(
            name="shop", uid="u-1"
        )

    def test_not_ours(self) -> None:
        assert drift.controller_of(RENDERED.config_map) is None
        other = samples.spec(RENDERED.config_map)
        other["metadata"]["ownerReferences"] = [
            {**OWNER_REF, "kind": "Deployment", "apiVersion": "apps/v1"}
        ]
        assert drift.controller_of(other) is None
        not_controller = samples.spec(RENDERED.config_map)
        not_controller["metadata"]["ownerReferences"] = [{**OWNER_REF, "controller": False}]
        assert drift.controller_of(not_controller) is None


class TestDrift:
    def test_as_rendered_is_not_drift(self) -> None:
        assert not drift.drifted(RENDERED.config_map, RENDERED.config_map)
        assert not drift.drifted(RENDERED.service, RENDERED.service)

    def test_what_others_add_is_not_drift(self) -> None:
        service = samples.spec(RENDERED.service)
        service["metadata"]["labels"]["team"] = "shop"
        service["metadata"]["resourceVersion"] = "7"
        service["spec"].update(clusterIPs=["None"], sessionAffinity="None", type="ClusterIP")
        assert not drift.drifted(service, RENDERED.service)

    def test_edited_data(self) -> None:
        config_map = samples.spec(RENDERED.config_map)
        config_map["data"] = {"config.yaml": "type: redis\n"}
        assert drift.drifted(config_map, RENDERED.config_map)

    def test_removed_label_or_hash(self) -> None:
        config_map = samples.spec(RENDERED.config_map)
        del config_map["metadata"]["labels"]["podcache.io/config"]
        assert drift.drifted(config_map, RENDERED.config_map)
        config_map = samples.spec(RENDERED.config_map)
        config_map["metadata"]["annotations"]["podcache.io/config-hash"] = "0"
        assert drift.drifted(config_map, RENDERED.config_map)

    def test_edited_service_selector(self) -> None:
        service = samples.spec(RENDERED.service)
        service["spec"]["selector"] = {"app": "other"}
        assert drift.drifted(service, RENDERED.service)


class TestRunning:
    async def test_deleted_configmap_is_restored(
        self, cluster: ClusterEmulator, operator: Any
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        before = get(cluster, "v1/configmaps", "podcache-shop")
        response = await cluster.delete(f"/api/v1/namespaces/{NAMESPACE}/configmaps/podcache-shop")
        assert response.status < 300
        after = await eventually(
            lambda: get(cluster, "v1/configmaps", "podcache-shop"), what="restored"
        )
        assert after["data"] == before["data"]

    async def test_edited_configmap_is_restored(
        self, cluster: ClusterEmulator, operator: Any
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        good = get(cluster, "v1/configmaps", "podcache-shop")["data"]
        response = await cluster.patch(
            f"/api/v1/namespaces/{NAMESPACE}/configmaps/podcache-shop",
            json={"data": {"config.yaml": "type: redis\n"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status < 300
        await eventually(
            lambda: get(cluster, "v1/configmaps", "podcache-shop")["data"] == good,
            what="data restored",
        )

    async def test_deleted_service_is_restored(
        self, cluster: ClusterEmulator, operator: Any
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        response = await cluster.delete(f"/api/v1/namespaces/{NAMESPACE}/services/podcache-shop")
        assert response.status < 300
        await eventually(lambda: get(cluster, "v1/services", "podcache-shop"), what="restored")

    async def test_a_deleted_cacheconfig_stays_deleted(
        self, cluster: ClusterEmulator, operator: Any
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        response = await cluster.delete(f"{BASE}/shop")
        assert response.status < 300
        await eventually(
            lambda: get(cluster, "v1/configmaps", "podcache-shop") is None, what="gone"
        )
        for _ in range(15):  # and not resurrected by the drift handler
            await asyncio.sleep(0.02)
            assert get(cluster, "v1/configmaps", "podcache-shop") is None
            assert get(cluster, "v1/services", "podcache-shop") is None
