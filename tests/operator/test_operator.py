"""The operator running for real (kopf in-process) against the KMock Kubernetes emulator.

Aspects: a CacheConfig yields its ConfigMap (the rendered config), headless
Service and — with the Prometheus Operator's CRD — ServiceMonitor, all owned by it,
and turns Ready with observedGeneration and configHash; a spec change re-renders
the ConfigMap and the hash; an invalid spec gives Ready=False naming the field and a
Warning Event while the operator keeps serving others; a missing Secret is waited
for; without the ServiceMonitor CRD the condition says CRDNotInstalled and the
ServiceMonitor follows when the CRD appears; deleting the CacheConfig removes what
it owns; status.pods counts labelled pods running the sidecar.
"""

from __future__ import annotations

import base64
from typing import Any

from tests.operator import samples
from tests.operator.conftest import (
    CACHECONFIGS,
    CRDS,
    NAMESPACE,
    SERVICEMONITORS,
    ClusterEmulator,
    condition,
    eventually,
    get,
    install_servicemonitor_crd,
    servicemonitor_crd,
)

BASE = f"/apis/podcache.io/v1alpha1/namespaces/{NAMESPACE}/cacheconfigs"


async def create(cluster: ClusterEmulator, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "podcache.io/v1alpha1",
        "kind": "CacheConfig",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
    response = await cluster.post(BASE, json=body)
    assert response.status < 300, await response.text()


async def patch_spec(cluster: ClusterEmulator, name: str, spec: dict[str, Any]) -> None:
    response = await cluster.patch(
        f"{BASE}/{name}",
        json={"spec": spec},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status < 300, await response.text()


def ready(cluster: ClusterEmulator, name: str, *, generation: int = 1) -> dict[str, Any] | None:
    body = get(cluster, CACHECONFIGS, name)
    cond = condition(body, "Ready")
    if cond and cond["status"] == "True" and body["status"].get("observedGeneration") == generation:
        return body
    return None


async def test_cacheconfig_renders_owned_objects_and_turns_ready(
    cluster: ClusterEmulator, operator: Any
) -> None:
    await create(cluster, "shop", samples.MEMORY_SPEC)
    body = await eventually(lambda: ready(cluster, "shop"), what="Ready")
    uid = body["metadata"]["uid"]
    config_map = get(cluster, "v1/configmaps", "podcache-shop")
    service = get(cluster, "v1/services", "podcache-shop")
    assert config_map is not None
    assert service is not None
    for owned in (config_map, service):
        (ref,) = owned["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "CacheConfig",
            "shop",
            uid,
            True,
        )
    assert "maxBytes: 33554432" in config_map["data"]["config.yaml"]
    assert (
        body["status"]["configHash"]
        == config_map["metadata"]["annotations"]["podcache.io/config-hash"]
    )
    assert service["spec"]["clusterIP"] == "None"
    assert condition(body, "ConfigRendered")["status"] == "True"
    monitor = condition(body, "ServiceMonitorReady")
    assert (monitor["status"], monitor["reason"]) == ("False", "CRDNotInstalled")
    assert get(cluster, SERVICEMONITORS, "podcache-shop") is None
    assert body["status"]["pods"] == 0
