"""The sidecar webhook as the apiserver calls it (over TLS, by url: on 127.0.0.1).

Pods come from the ReplicaSet controller or are created directly; the apiserver runs
the whole admission chain on the mutated pod: Pod Security, LimitRanger,
ResourceQuota, pod validation, reinvocation of webhooks. No scheduler or kubelet
runs, so pods stay Pending: what is checked is what was stored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.controlplane.extra_webhook import ADDED, container_adding_webhook
from tests.controlplane.harness import Installation, cache_config, eventually, read_cache_config
from tests.controlplane.harness import cache_config_ready as ready
from tests.controlplane.harness import create_cache_config as create

CONFIG_LABEL = "podcache.io/config"


def pod_spec(**extra: Any) -> dict[str, Any]:
    container = {"name": "app", "image": "registry.example/app:1", "command": ["sleep", "1d"]}
    container.update(extra.pop("container", {}))
    return {"containers": [container], **extra}


def pod(name: str, config: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {CONFIG_LABEL: config}},
        "spec": pod_spec(**extra),
    }


def sidecar_of(stored: client.V1Pod) -> client.V1Container | None:
    containers = (stored.spec.init_containers or []) + stored.spec.containers
    return next((c for c in containers if c.name == "podcache"), None)


def env_of(container: client.V1Container) -> dict[str, str]:
    return {e.name: e.value for e in container.env or []}


@pytest.fixture
def config_ready(installation: Installation, namespace: str) -> str:
    create(installation.cluster, namespace, cache_config("web", {}))
    eventually(lambda: ready(installation.cluster, namespace, "web"), what="CacheConfig Ready")
    return "web"


def test_a_deployments_pods_come_out_mutated(
    installation: Installation, namespace: str, config_ready: str
) -> None:
    cluster = installation.cluster
    labels = {"app": "web", CONFIG_LABEL: config_ready}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec()},
        },
    }
    cluster.apps.create_namespaced_deployment(namespace, deployment)

    def three_pods() -> list[client.V1Pod] | None:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="app=web").items
        return pods if len(pods) == 3 else None

    for stored in eventually(three_pods, what="3 pods from the ReplicaSet controller"):
        sidecar = sidecar_of(stored)
        assert sidecar is not None, stored.spec
        assert sidecar.restart_policy == "Always"  # native sidecar, Kubernetes >= 1.29
        assert stored.spec.init_containers[0].name == "podcache"
        (app,) = stored.spec.containers
        assert env_of(app)["PODCACHE_SOCKET"].endswith(".sock")
        assert any(m.name == "podcache-socket" for m in app.volume_mounts)
        assert stored.metadata.annotations["podcache.io/injected"]


def webhook_calls(installation: Installation) -> float:
    """How often the apiserver has called the sidecar webhook (its own histogram's count)."""
    total = 0.0
    for line in installation.cluster.plane.get("/metrics", timeout=10).decode().splitlines():
        if line.startswith(
            "apiserver_admission_webhook_admission_duration_seconds_count{"
        ) and 'name="sidecar.podcache.io"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_one_webhook_call_per_pod(
    installation: Installation, namespace: str, config_ready: str
) -> None:
    """Issue 18: the ServiceAccount plugin, re-run after our mutation, mounted the API token
    into the new sidecar, and that change made the apiserver call the webhook again
    (reinvocationPolicy IfNeeded) for every pod."""
    cluster = installation.cluster
    before = webhook_calls(installation)
    stored = cluster.core.create_namespaced_pod(namespace, pod("once", config_ready))
    assert sidecar_of(stored) is not None
    assert webhook_calls(installation) - before == 1
    token_mounts = [
        m for m in sidecar_of(stored).volume_mounts
        if m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"
    ]  # fmt: skip
    assert [m.name for m in token_mounts] == ["podcache-no-api-token"]
    # The app still gets its token from the plugin.
    (app,) = stored.spec.containers
    assert any(
        m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount" for m in app.volume_mounts
    )


def test_a_restricted_namespace_admits_the_injected_pod(
    installation: Installation, namespace: str, config_ready: str
) -> None:
    cluster = installation.cluster
    cluster.core.patch_namespace(
        namespace,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )
    restricted = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "container": {
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }
        },
    }
    stored = cluster.core.create_namespaced_pod(
        namespace, pod("strict", config_ready, **restricted)
    )
    assert sidecar_of(stored) is not None


def test_a_quota_with_a_limitrange_admits_and_charges_the_sidecar(
    installation: Installation, namespace: str, config_ready: str
) -> None:
    cluster = installation.cluster
    cluster.core.create_namespaced_limit_range(
        namespace,
        {
            "metadata": {"name": "defaults"},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "200m", "memory": "256Mi"},
                        "defaultRequest": {"cpu": "10m", "memory": "32Mi"},
                    }
                ]
            },
        },
    )
    cluster.core.create_namespaced_resource_quota(
        namespace,
        {
            "metadata": {"name": "quota"},
            "spec": {"hard": {"limits.cpu": "4", "limits.memory": "4Gi", "pods": "10"}},
        },
    )
    eventually(
        lambda: cluster.core.read_namespaced_resource_quota("quota", namespace).status.hard,
        what="the quota controller to fill status.hard",
    )
    stored = cluster.core.create_namespaced_pod(namespace, pod("quoted", config_ready))
    sidecar = sidecar_of(stored)
    assert sidecar is not None
    assert sidecar.resources.limits["cpu"]  # from the LimitRange when the operator sets none
    used = eventually(
        lambda: (
            (cluster.core.read_namespaced_resource_quota("quota", namespace).status.used or {}).get(
                "limits.cpu"
            )
            not in (None, "0")
            or None
        ),
        what="quota usage",
    )
    assert used


def test_a_later_webhook_that_adds_a_container_gets_the_socket_too(
    installation: Installation, namespace: str, config_ready: str
) -> None:
    """reinvocationPolicy: IfNeeded, as the apiserver applies it."""
    cluster = installation.cluster
    cert = cluster.plane.ca.issue(
        "extra-webhook", common_name="extra", ips=("127.0.0.1",), server=True
    )
    with container_adding_webhook(cert) as (url, calls):
        name = f"zz-adds-a-container-{namespace}"
        cluster.admission.create_mutating_webhook_configuration(
            {
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "adds.example.com",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "timeoutSeconds": 5,
                        "reinvocationPolicy": "Never",
                        "clientConfig": {
                            "url": url,
                            "caBundle": base64.b64encode(cluster.plane.ca.pem).decode(),
                        },
                        "rules": [
                            {
                                "operations": ["CREATE"],
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "resources": ["pods"],
                            }
                        ],
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": namespace}
                        },
                    }
                ],
            }
        )
        try:
            stored = cluster.core.create_namespaced_pod(namespace, pod("meshed", config_ready))
        finally:
            cluster.admission.delete_mutating_webhook_configuration(name)
    assert calls
    late = next(c for c in stored.spec.containers if c.name == ADDED["name"])
    assert "PODCACHE_SOCKET" in env_of(late)
    assert any(m.name == "podcache-socket" for m in late.volume_mounts or [])
    assert sidecar_of(stored) is not None


@pytest.fixture
def operator_stopped(installation: Installation) -> Iterator[Installation]:
    installation.operator.stop()
    try:
        yield installation
    finally:
        installation.point_webhook(failure_policy="Ignore")
        installation.operator.start()


def test_operator_down_with_ignore_admits_the_pod_unmodified(
    operator_stopped: Installation, namespace: str
) -> None:
    operator_stopped.point_webhook(failure_policy="Ignore")
    stored = operator_stopped.cluster.core.create_namespaced_pod(namespace, pod("early", "web"))
    assert sidecar_of(stored) is None


def test_operator_down_with_fail_refuses_the_pod_with_a_reason(
    operator_stopped: Installation, namespace: str
) -> None:
    operator_stopped.point_webhook(failure_policy="Fail")
    with pytest.raises(client.ApiException) as refused:
        operator_stopped.cluster.core.create_namespaced_pod(namespace, pod("early", "web"))
    message = json.loads(refused.value.body)["message"]
    assert 'failed calling webhook "sidecar.podcache.io"' in message
    assert "connection refused" in message


def test_a_sidecar_the_apiserver_would_refuse_is_not_injected(
    installation: Installation, namespace: str
) -> None:
    """Issue 9 defect 4: requests over limits passed the CRD; the mutated pod was then
    refused by the apiserver (422) whatever the failurePolicy, so no pod could start.
    Under Ignore the pod is now admitted as it is, with a warning and an Event."""
    cluster = installation.cluster
    resources = {"requests": {"cpu": "1"}, "limits": {"cpu": "500m"}}
    create(cluster, namespace, cache_config("greedy", {"sidecar": {"resources": resources}}))
    stored = cluster.core.create_namespaced_pod(namespace, pod("app", "greedy"))
    assert sidecar_of(stored) is None

    def warned() -> bool:
        events = cluster.core.list_namespaced_event(namespace).items
        return any(
            e.reason == "SidecarNotInjected" and e.involved_object.name == "greedy" for e in events
        )

    eventually(warned, what="a SidecarNotInjected Event on the CacheConfig")


def test_under_fail_a_sidecar_the_apiserver_would_refuse_denies_with_the_reason(
    installation: Installation, namespace: str
) -> None:
    cluster = installation.cluster
    resources = {"requests": {"cpu": "1"}, "limits": {"cpu": "500m"}}
    create(cluster, namespace, cache_config("greedy", {"sidecar": {"resources": resources}}))
    installation.operator.stop()
    installation.operator.env["PODCACHE_WEBHOOK_FAILURE_POLICY"] = "Fail"
    installation.point_webhook(failure_policy="Fail")
    try:
        installation.operator.start()
        with pytest.raises(client.ApiException) as refused:
            cluster.core.create_namespaced_pod(namespace, pod("app", "greedy"))
        message = json.loads(refused.value.body)["message"]
        assert "cpu: request 1 must be less than or equal to limit 500m" in message
    finally:
        installation.operator.stop()
        installation.operator.env["PODCACHE_WEBHOOK_FAILURE_POLICY"] = "Ignore"
        installation.point_webhook(failure_policy="Ignore")
        installation.operator.start()


def test_an_app_with_its_own_metrics_port_keeps_it(
    installation: Installation, namespace: str, config_ready: str
) -> None:
    """Issue 9 defect 2: kube-state-metrics-like apps have a port named `metrics`, some on
    9090. The sidecar's port must neither share the name nor the number, and the
    CacheConfig's Service must target the sidecar's port by number."""
    cluster = installation.cluster
    ports = {"ports": [{"name": "metrics", "containerPort": 9090}]}
    stored = cluster.core.create_namespaced_pod(
        namespace, pod("ksm", config_ready, container=ports)
    )
    declared = [
        (port.name, port.container_port)
        for container in (stored.spec.init_containers or []) + stored.spec.containers
        for port in container.ports or []
    ]
    assert len({name for name, _ in declared}) == len(declared), declared
    assert len({number for _, number in declared}) == len(declared), declared
    service = cluster.core.read_namespaced_service(f"podcache-{config_ready}", namespace)
    assert service.spec.ports[0].target_port == 9090


def test_a_pod_admitted_while_the_operator_was_down_is_reported(
    installation: Installation, namespace: str, config_ready: str
) -> None:
    """Issue 9 defect 9: under Ignore such a pod ran without the sidecar, silently."""
    cluster = installation.cluster
    installation.operator.stop()
    try:
        bare = cluster.core.create_namespaced_pod(namespace, pod("early", config_ready))
        assert sidecar_of(bare) is None  # Ignore: admitted unmodified, as documented
    finally:
        installation.operator.start()

    def reported() -> bool:
        events = cluster.core.list_namespaced_event(namespace).items
        return any(
            e.reason == "PodWithoutSidecar"
            and e.involved_object.name == config_ready
            and "pod early runs without the podcache sidecar" in (e.message or "")
            for e in events
        )

    eventually(reported, timeout=30, what="a PodWithoutSidecar Event on the CacheConfig")

    def listed() -> bool:
        status = read_cache_config(cluster, namespace, config_ready).get("status") or {}
        return status.get("podsWithoutSidecar") == ["early"]

    # The status patch and the Event are two writes; a busy apiserver may order them apart.
    eventually(listed, timeout=10, what="status.podsWithoutSidecar naming the pod")
