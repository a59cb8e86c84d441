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

import pytest

from tests.operator import emulator, samples
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


def events(cluster: ClusterEmulator, reason: str) -> list[dict[str, Any]]:
    return [
        obj.raw
        for (res, _, _), obj in cluster.objects.items()
        if res == "v1/events" and not obj.deleted and obj.raw.get("reason") == reason
    ]


async def test_spec_change_rerenders_config_and_hash(
    cluster: ClusterEmulator, operator: Any
) -> None:
    await create(cluster, "shop", samples.MEMORY_SPEC)
    first = await eventually(lambda: ready(cluster, "shop"), what="Ready")
    await patch_spec(cluster, "shop", {"defaultTTL": "42s"})
    second = await eventually(
        lambda: ready(cluster, "shop", generation=2), what="Ready at generation 2"
    )
    assert second["status"]["configHash"] != first["status"]["configHash"]
    config_map = get(cluster, "v1/configmaps", "podcache-shop")
    assert "defaultTTL: 42s" in config_map["data"]["config.yaml"]
    assert (
        config_map["metadata"]["annotations"]["podcache.io/config-hash"]
        == second["status"]["configHash"]
    )
    assert condition(second, "Ready")["observedGeneration"] == 2


async def test_invalid_spec_is_reported_and_the_operator_keeps_serving(
    cluster: ClusterEmulator, operator: Any
) -> None:
    bad = samples.spec(samples.MEMORY_SPEC, locks={"defaultTTL": "10m", "maxTTL": "1m"})
    await create(cluster, "broken", bad)

    def invalid() -> dict[str, Any] | None:
        cond = condition(get(cluster, CACHECONFIGS, "broken"), "Ready")
        return cond if cond and cond["reason"] == "InvalidSpec" else None

    cond = await eventually(invalid, what="Ready=False InvalidSpec")
    assert cond["status"] == "False"
    assert "spec.locks.defaultTTL" in cond["message"]
    (event,) = await eventually(lambda: events(cluster, "InvalidSpec"), what="a Warning event")
    assert event["type"] == "Warning"
    assert "spec.locks.defaultTTL" in event["message"]
    assert event["involvedObject"]["name"] == "broken"
    assert get(cluster, "v1/configmaps", "podcache-broken") is None

    await create(cluster, "fine", samples.MEMORY_SPEC)  # the operator still serves others
    await eventually(lambda: ready(cluster, "fine"), what="another CacheConfig Ready")
    await patch_spec(cluster, "broken", {"locks": {"defaultTTL": "10s", "maxTTL": "1m"}})
    await eventually(lambda: ready(cluster, "broken", generation=2), what="fixed spec Ready")


@pytest.mark.parametrize("operator_settings", [{"check_secrets": True}], indirect=True)
async def test_missing_secret_is_waited_for(cluster: ClusterEmulator, operator: Any) -> None:
    await create(cluster, "shop", samples.REDIS_SPEC)

    def waiting() -> dict[str, Any] | None:
        cond = condition(get(cluster, CACHECONFIGS, "shop"), "Ready")
        return cond if cond and cond["reason"] == "SecretNotFound" else None

    cond = await eventually(waiting, what="Ready=False SecretNotFound")
    assert "spec.redis.passwordSecretRef: Secret 'redis-auth' not found" in cond["message"]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis-auth", "namespace": NAMESPACE},
        "data": {"password": base64.b64encode(b"hunter2").decode()},
    }
    response = await cluster.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json=secret)
    assert response.status < 300
    await eventually(lambda: ready(cluster, "shop"), what="Ready once the Secret exists")
    config_map = get(cluster, "v1/configmaps", "podcache-shop")
    assert "hunter2" not in config_map["data"]["config.yaml"]


async def test_delete_removes_what_it_owns(cluster: ClusterEmulator, operator: Any) -> None:
    await create(cluster, "shop", samples.MEMORY_SPEC)
    await eventually(lambda: ready(cluster, "shop"), what="Ready")
    response = await cluster.delete(f"{BASE}/shop")
    assert response.status < 300
    await eventually(
        lambda: get(cluster, "v1/configmaps", "podcache-shop") is None, what="ConfigMap gone"
    )
    assert get(cluster, "v1/services", "podcache-shop") is None
    await create(cluster, "again", samples.MEMORY_SPEC)  # and nothing broke
    await eventually(lambda: ready(cluster, "again"), what="Ready after a delete")


class TestServiceMonitor:
    async def test_with_the_crd_installed(self, cluster: ClusterEmulator, operator: Any) -> None:
        install_servicemonitor_crd(cluster)
        cluster.objects[CRDS, None, "servicemonitors.monitoring.coreos.com"] = servicemonitor_crd()
        await create(cluster, "shop", samples.REDIS_SPEC | {"redis": {"url": "redis://r:6379"}})
        body = await eventually(lambda: ready(cluster, "shop"), what="Ready")
        assert condition(body, "ServiceMonitorReady")["status"] == "True"
        monitor = get(cluster, SERVICEMONITORS, "podcache-shop")
        assert monitor["spec"]["endpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "15s"}
        ]
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]

    async def test_the_crd_appearing_later(self, cluster: ClusterEmulator, operator: Any) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        body = await eventually(lambda: ready(cluster, "shop"), what="Ready")
        assert condition(body, "ServiceMonitorReady")["reason"] == "CRDNotInstalled"
        install_servicemonitor_crd(cluster)
        response = await cluster.post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=servicemonitor_crd()
        )
        assert response.status < 300

        def applied() -> bool:
            cond = condition(get(cluster, CACHECONFIGS, "shop"), "ServiceMonitorReady")
            return bool(cond and cond["status"] == "True")

        await eventually(applied, what="ServiceMonitorReady=True")
        assert get(cluster, SERVICEMONITORS, "podcache-shop") is not None

    async def test_the_crd_is_read_once_not_per_reconciliation(
        self, cluster: ClusterEmulator, operator: Any
    ) -> None:
        # Absent: its watch sends nothing, so the first reconciliation asks and the
        # answer is remembered; the watch corrects it when the CRD comes.
        names = ["a", "b", "c", "d"]
        for name in names:
            await create(cluster, name, samples.MEMORY_SPEC)
        for name in names:
            body = await eventually(lambda n=name: ready(cluster, n), what=f"{name} Ready")
            assert condition(body, "ServiceMonitorReady")["reason"] == "CRDNotInstalled"
        reads = [
            request
            for request in list(cluster)
            if request.resource is not None
            and request.resource.plural == "customresourcedefinitions"
            and request.name == "servicemonitors.monitoring.coreos.com"
            and request.method.value == "GET"
        ]
        assert len(reads) <= 1
        install_servicemonitor_crd(cluster)
        response = await cluster.post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=servicemonitor_crd()
        )
        assert response.status < 300
        for name in names:
            await eventually(
                lambda n=name: get(cluster, SERVICEMONITORS, f"podcache-{n}"),
                what=f"the ServiceMonitor of {name}",
            )

    async def test_the_crd_going_away(self, cluster: ClusterEmulator, operator: Any) -> None:
        install_servicemonitor_crd(cluster)
        cluster.objects[CRDS, None, "servicemonitors.monitoring.coreos.com"] = servicemonitor_crd()
        await create(cluster, "shop", samples.MEMORY_SPEC)
        body = await eventually(lambda: ready(cluster, "shop"), what="Ready")
        assert condition(body, "ServiceMonitorReady")["status"] == "True"
        response = await cluster.delete(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com"
        )
        assert response.status < 300

        def not_installed() -> bool:
            cond = condition(get(cluster, CACHECONFIGS, "shop"), "ServiceMonitorReady")
            return bool(cond and cond["reason"] == "CRDNotInstalled")

        await eventually(not_installed, what="ServiceMonitorReady=False CRDNotInstalled")
        assert condition(get(cluster, CACHECONFIGS, "shop"), "Ready")["status"] == "True"

    async def test_disabled(self, cluster: ClusterEmulator, operator: Any) -> None:
        spec = samples.spec(samples.MEMORY_SPEC, metrics={"serviceMonitor": {"enabled": False}})
        await create(cluster, "shop", spec)
        body = await eventually(lambda: ready(cluster, "shop"), what="Ready")
        assert condition(body, "ServiceMonitorReady")["reason"] == "Disabled"


class TestPodCount:
    @staticmethod
    async def add_pod(
        cluster: ClusterEmulator, name: str, *, phase: str, injected: bool = True
    ) -> None:
        pod = samples.pod(name=name)
        if injected:
            pod["metadata"]["annotations"] = {"podcache.io/injected": "native"}
        pod["status"] = {"phase": phase}
        response = await cluster.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod)
        assert response.status < 300

    @staticmethod
    def pods(cluster: ClusterEmulator) -> int | None:
        body = get(cluster, CACHECONFIGS, "shop")
        return ((body or {}).get("status") or {}).get("pods")

    async def test_running_sidecars_are_counted(
        self, cluster: ClusterEmulator, operator: Any
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        await self.add_pod(cluster, "a", phase="Running")
        await self.add_pod(cluster, "b", phase="Running")
        await self.add_pod(cluster, "c", phase="Pending")
        await self.add_pod(cluster, "d", phase="Running", injected=False)
        await eventually(lambda: self.pods(cluster) == 2, what="status.pods == 2")
        response = await cluster.patch(
            f"/api/v1/namespaces/{NAMESPACE}/pods/c", json={"status": {"phase": "Running"}}
        )
        assert response.status < 300
        await eventually(lambda: self.pods(cluster) == 3, what="status.pods == 3")
        response = await cluster.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/a")
        assert response.status < 300
        await eventually(lambda: self.pods(cluster) == 2, what="status.pods == 2 after a delete")


async def test_kopf_keeps_its_bookkeeping_in_status_kopf(
    cluster: ClusterEmulator, operator: Any
) -> None:
    await create(cluster, "shop", samples.MEMORY_SPEC)
    body = await eventually(lambda: ready(cluster, "shop"), what="Ready")
    assert set(body["status"]) == {
        "observedGeneration",
        "conditions",
        "pods",
        "configHash",
        "kopf",
    }
    assert "last-handled-configuration" in body["status"]["kopf"]
    annotations = body["metadata"].get("annotations") or {}
    assert not any(key.startswith("podcache.io/") for key in annotations)


async def test_a_restarted_operator_repairs_what_drifted(
    cluster: ClusterEmulator, operator_settings: Any
) -> None:
    """Resume: objects deleted while the operator was down come back when it starts."""
    first = emulator.OperatorThread(server=str(cluster.url).rstrip("/"), config=operator_settings)
    await first.start(within=10)
    try:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
    finally:
        await first.stop(within=10)
    response = await cluster.delete(f"/api/v1/namespaces/{NAMESPACE}/configmaps/podcache-shop")
    assert response.status < 300
    second = emulator.OperatorThread(server=str(cluster.url).rstrip("/"), config=operator_settings)
    await second.start(within=10)
    try:
        config_map = await eventually(
            lambda: get(cluster, "v1/configmaps", "podcache-shop"), what="ConfigMap recreated"
        )
        assert config_map["metadata"]["ownerReferences"][0]["name"] == "shop"
    finally:
        await second.stop(within=10)
