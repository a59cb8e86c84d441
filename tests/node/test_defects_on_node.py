"""Issue 9's defects that only a kubelet (or a Service in front of the webhook) shows,
each reproduced on the node before its fix (defects 6 and 9 were strict xfails here
until fixed); defects 1 and 2 did not reproduce on the node.

Aspects:
- an app container with its own ``runAsUser`` (no pod-level user, no fsGroup) uses
  the socket (defect 6);
- the CacheConfig's metrics Service reaches the sidecar when the app already has a
  port named ``metrics`` (defect 2);
- two operator replicas behind the webhook Service both inject what the CacheConfig
  says now (defect 1);
- pods created while the operator is down: refused under ``failurePolicy: Fail`` and
  created with the sidecar once it is back; admitted bare under ``Ignore``, and then
  reported (defect 9);
- an operator pod is Ready only once its webhook answers (defect 10).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.controlplane.harness import (
    GROUP,
    PLURAL,
    RELEASE,
    RELEASE_NAMESPACE,
    VERSION,
    cache_config,
    cache_config_ready,
    create_cache_config,
    eventually,
)
from tests.node.harness import (
    IMAGE,
    NodeCluster,
    app_deployment,
    images_version,
    pod_ready,
    sidecar_story,
    wait_pods_ready,
)

pytestmark = pytest.mark.timeout(900)
WEBHOOK_PORT = 9443  # the chart's webhook.port default, if the port is not named


@pytest.fixture
def memory_cache(release: NodeCluster, namespace: str) -> str:
    create_cache_config(release.cluster, namespace, cache_config("c", {"backend": "memory"}))
    eventually(lambda: cache_config_ready(release.cluster, namespace, "c"), what="Ready")
    return "c"


def unscheduled_pod(config: str) -> dict[str, Any]:
    """A labelled pod no scheduler takes: what the webhook stored is all that is checked."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}", "labels": {"podcache.io/config": config}},
        "spec": {
            "schedulerName": "nobody",
            "containers": [{"name": "app", "image": f"{IMAGE}:{images_version()}",
                            "command": ["sleep", "infinity"]}],
        },
    }  # fmt: skip


def sidecar_of(pod: client.V1Pod) -> client.V1Container | None:
    found = [c for c in (pod.spec.init_containers or []) if c.name == "podcache"]
    return found[0] if found else None


def helm_upgrade(release: NodeCluster, *values: str) -> None:
    args = [arg for value in values for arg in ("--set", value)]
    release.helm.run(
        "upgrade", RELEASE, str(release.helm_chart), "--namespace", RELEASE_NAMESPACE,
        "--reuse-values", *args, "--wait", "--timeout", "180s", timeout=240,
    )  # fmt: skip


def test_app_with_its_own_user_uses_the_socket(
    release: NodeCluster, namespace: str, memory_cache: str
) -> None:
    deployment = app_deployment(
        "own-user", memory_cache, container={"securityContext": {"runAsUser": 1000,
                                                                 "runAsGroup": 1000}}
    )  # fmt: skip
    release.apps.create_namespaced_deployment(namespace, deployment)
    (pod,) = wait_pods_ready(release, namespace, "app=own-user", 1)
    code, out = release.exec(
        namespace, pod.metadata.name, "app", "python", "-c",
        "import os, podcache; print(os.getuid()); c = podcache.Client(); c.set('k', b'v');"
        " print(c.get('k'))",
    )  # fmt: skip
    assert code == 0, out + sidecar_story(release, namespace, pod.metadata.name)
    assert "b'v'" in out


def test_metrics_service_reaches_the_sidecar_beside_an_app_port_named_metrics(
    release: NodeCluster, namespace: str, memory_cache: str
) -> None:
    deployment = app_deployment(
        "named-port", memory_cache,
        container={"ports": [{"name": "metrics", "containerPort": 8080}]},
    )  # fmt: skip
    release.apps.create_namespaced_deployment(namespace, deployment)
    wait_pods_ready(release, namespace, "app=named-port", 1)
    (service,) = release.core.list_namespaced_service(
        namespace, label_selector="app.kubernetes.io/managed-by=podcache-operator"
    ).items
    discovery = client.DiscoveryV1Api(release.cluster.api)

    def ports() -> set[int] | None:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service.metadata.name}"
        ).items
        found = {p.port for s in slices for p in (s.ports or []) if s.endpoints}
        return found or None

    assert eventually(ports, what="the metrics Service's endpoints") == {9090}


@pytest.fixture
def two_operators(release: NodeCluster) -> Iterator[None]:
    helm_upgrade(release, "operator.replicaCount=2")
    try:
        yield
    finally:
        helm_upgrade(release, "operator.replicaCount=1")


@pytest.mark.usefixtures("two_operators")
def test_two_operator_replicas_inject_the_current_cacheconfig(
    release: NodeCluster, namespace: str, memory_cache: str
) -> None:
    assert len([p for p in release.operator_pods() if pod_ready(p)]) == 2
    new_image = f"{IMAGE}:{release.upgrade_tag}"
    release.cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, memory_cache, {"spec": {"sidecar": {"image": new_image}}}
    )
    eventually(lambda: cache_config_ready(release.cluster, namespace, memory_cache), what="Ready")
    time.sleep(2)  # the active replica's index has the change by now
    # kube-proxy spreads the apiserver's calls over both replicas at random: among
    # twelve admissions, a standby answering from a frozen index shows (2^-12 to miss).
    images = []
    for _ in range(12):
        created = release.core.create_namespaced_pod(namespace, unscheduled_pod(memory_cache))
        sidecar = sidecar_of(created)
        images.append(sidecar.image if sidecar else None)
    assert images == [new_image] * 12


def scale_operator(release: NodeCluster, replicas: int) -> None:
    release.apps.patch_namespaced_deployment_scale(
        RELEASE, RELEASE_NAMESPACE, {"spec": {"replicas": replicas}}
    )
    if replicas == 0:
        # Gone means no process left: a terminating pod still answers admissions.
        eventually(
            lambda: not release.operator_pods(terminating=True), timeout=90,
            what="the operator gone",
        )  # fmt: skip
    else:
        eventually(
            lambda: len([p for p in release.operator_pods() if pod_ready(p)]) == replicas,
            timeout=120,
            what="the operator back",
        )


def test_pods_created_while_the_operator_is_down_under_fail(
    release: NodeCluster, namespace: str, memory_cache: str
) -> None:
    helm_upgrade(release, "webhook.failurePolicy=Fail")
    try:
        scale_operator(release, 0)
        try:
            with pytest.raises(client.ApiException) as refused:
                release.core.create_namespaced_pod(namespace, unscheduled_pod(memory_cache))
            assert refused.value.status == 500
            assert "failed calling webhook" in str(refused.value.body)
            release.apps.create_namespaced_deployment(
                namespace, app_deployment("while-down", memory_cache)
            )
            time.sleep(3)  # the ReplicaSet controller tries and is refused
            assert not release.core.list_namespaced_pod(
                namespace, label_selector="app=while-down"
            ).items
        finally:
            scale_operator(release, 1)
        # Its retries succeed once the webhook answers: the pod has the sidecar.
        (pod,) = wait_pods_ready(release, namespace, "app=while-down", 1, timeout=180)
        assert sidecar_of(pod) is not None
    finally:
        helm_upgrade(release, "webhook.failurePolicy=Ignore")


def test_pods_created_while_the_operator_is_down_under_ignore(
    release: NodeCluster, namespace: str, memory_cache: str
) -> None:
    scale_operator(release, 0)
    try:
        bare = release.core.create_namespaced_pod(namespace, unscheduled_pod(memory_cache))
        assert sidecar_of(bare) is None  # Ignore: admitted unmodified, as documented
    finally:
        scale_operator(release, 1)

    def reported() -> bool:
        events = release.core.list_namespaced_event(namespace).items
        if any(bare.metadata.name in (e.message or "") for e in events):
            return True
        status = read_status(release, namespace, memory_cache)
        return bare.metadata.name in str(status)

    eventually(reported, timeout=30, what=f"{bare.metadata.name} reported without its sidecar")


def read_status(release: NodeCluster, namespace: str, name: str) -> dict[str, Any]:
    body = release.cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    status: dict[str, Any] = body.get("status") or {}
    return status


def test_an_operator_pod_is_ready_only_with_its_webhook_listening(
    release: NodeCluster, namespace: str, memory_cache: str
) -> None:
    """Defect 10: readiness means the webhook answers. The moment a restarted operator
    pod turns Ready (and so joins the webhook Service's endpoints), its webhook port
    accepts connections; then an admission through the Service injects."""
    (old,) = release.operator_pods()
    release.core.delete_namespaced_pod(old.metadata.name, RELEASE_NAMESPACE)

    def new_ready() -> client.V1Pod | None:
        pods = [p for p in release.operator_pods() if p.metadata.uid != old.metadata.uid]
        return next((p for p in pods if pod_ready(p)), None)

    deadline = time.monotonic() + 120
    while (new := new_ready()) is None:  # polled tightly: the first moment counts
        assert time.monotonic() < deadline, "no new operator pod Ready"
        time.sleep(0.05)
    ports = {p.name: p.container_port for c in new.spec.containers for p in c.ports or []}
    port = ports.get("webhook", WEBHOOK_PORT)
    with release.node.netns.connect(new.status.pod_ip, port, timeout=2):
        pass  # accepted: the listener was up when the pod turned Ready
    # kube-proxy follows the endpoints within moments; the next admission injects.
    created = eventually(
        lambda: sidecar_of(release.core.create_namespaced_pod(namespace,
                                                              unscheduled_pod(memory_cache))),
        timeout=30,
        what="an admission through the Service injecting",
    )  # fmt: skip
    assert created.name == "podcache"
