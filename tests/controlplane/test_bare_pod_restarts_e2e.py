"""operator.restartPodsWithoutSidecar through a real apiserver (issue 9, defect 9): a pod
a ReplicaSet made while the operator was down (failurePolicy Ignore: admitted without
the sidecar) is evicted once the webhook answers again, and the ReplicaSet controller
re-creates it with the sidecar. A bare pod no controller owns, and one the webhook saw
but could not inject, are left alone. The chart's RBAC (pods/eviction only with the
option) is what the operator runs under."""

from __future__ import annotations

import time

from kubernetes import client

from tests.controlplane.harness import (
    Cluster,
    cache_config,
    create_namespace,
    eventually,
    installed_chart,
)
from tests.controlplane.harness import cache_config_ready as ready
from tests.controlplane.harness import create_cache_config as create
from tests.controlplane.test_webhook_e2e import pod, pod_spec, sidecar_of

LABEL = "podcache.io/config"


def deployment(name: str, config: str) -> dict[str, object]:
    labels = {"app": name, LABEL: config}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec()},
        },
    }


def pods_of(cluster: Cluster, namespace: str, app: str) -> list[client.V1Pod]:
    found = cluster.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [p for p in found if p.metadata.deletion_timestamp is None]


def test_a_bare_pod_of_a_deployment_is_replaced_with_the_sidecar(fresh_cluster: Cluster) -> None:
    # A control plane of its own: the session's has the chart installed without the option.
    cluster = fresh_cluster
    namespace = create_namespace(cluster.core, "apps")
    with installed_chart(cluster, "operator.restartPodsWithoutSidecar=true") as installation:
        create(cluster, namespace, cache_config("web", {}))
        eventually(lambda: ready(cluster, namespace, "web"), what="CacheConfig Ready")
        installation.operator.stop()
        try:
            cluster.apps.create_namespaced_deployment(namespace, deployment("web", "web"))
            (bare,) = eventually(lambda: pods_of(cluster, namespace, "web") or None, what="a pod")
            assert sidecar_of(bare) is None  # admitted while no webhook answered
            lone = cluster.core.create_namespaced_pod(namespace, pod("lone", "web"))
            assert sidecar_of(lone) is None
        finally:
            installation.operator.start()
        # Seen by the webhook but not injectable (a volume name taken): marked, not evicted.
        taken = pod("taken", "web", volumes=[{"name": "podcache-socket", "emptyDir": {}}])
        marked = cluster.core.create_namespaced_pod(namespace, taken)
        assert marked.metadata.annotations["podcache.io/not-injected"]

        def replaced() -> client.V1Pod | None:
            pods = pods_of(cluster, namespace, "web")
            if len(pods) == 1 and pods[0].metadata.uid != bare.metadata.uid:
                return pods[0]
            return None

        new = eventually(replaced, timeout=60, what="the bare pod replaced")
        assert sidecar_of(new) is not None
        time.sleep(2)  # the other two would have been evicted by now (10 s interval each)
        names = {p.metadata.name for p in cluster.core.list_namespaced_pod(namespace).items}
        assert {"lone", "taken"} <= names
