"""Two operator replicas under the chart's peering: the standby's webhook answers too.

With ``replicas > 1`` the webhook Service spreads admissions over every replica, and
kopf pauses the watches of all but the active one. Each admission must reflect the
CacheConfig as it is now on every replica (issue 9, defect 1): here the apiserver's
webhook calls go to the standby only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.controlplane.harness import (
    GROUP,
    PLURAL,
    RELEASE,
    RELEASE_NAMESPACE,
    VERSION,
    WEBHOOK_PATH,
    Cluster,
    cache_config,
    chart_operator,
    create_cache_config,
    create_namespace,
    eventually,
    read_cache_config,
    wait_crds_established,
)
from tests.controlplane.operator_process import OperatorProcess, point_webhook_at

NAMESPACE = "standby"


@pytest.fixture(scope="module")
def replicas(fresh_cluster: Cluster) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """(first, second): the second has the higher peering priority."""
    fresh_cluster.helm.install(RELEASE, RELEASE_NAMESPACE)
    wait_crds_established(fresh_cluster, "cacheconfigs.podcache.io")
    made = [
        chart_operator(
            fresh_cluster,
            fresh_cluster.plane.workdir / f"operator-{priority}",
            {"PODCACHE_PEERING_PRIORITY": str(priority), "POD_ID": f"op-{priority}"},
        )
        for priority in (10, 100)
    ]
    try:
        yield made[0], made[1]
    finally:
        for operator in made:
            operator.stop()


def pod(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"podcache.io/config": "shop"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }


def sidecar_image(stored: client.V1Pod) -> str | None:
    for container in stored.spec.init_containers or []:
        if container.name == "podcache":
            return str(container.image)
    return None


def test_the_standby_injects_the_cacheconfig_as_it_is_now(
    fresh_cluster: Cluster, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    first, second = replicas
    core = fresh_cluster.core
    create_namespace(core, NAMESPACE)
    create_cache_config(fresh_cluster, NAMESPACE, cache_config("shop", {}))
    first.start()
    eventually(
        lambda: (read_cache_config(fresh_cluster, NAMESPACE, "shop").get("status") or {}).get(
            "configHash"
        ),
        what="the first replica to reconcile while it is the only one",
    )
    second.start()
    eventually(lambda: "Pausing operations" in first.log(), what="the first replica to stand by")
    point_webhook_at(
        fresh_cluster.api, RELEASE, first.webhook_url + WEBHOOK_PATH, fresh_cluster.plane.ca.pem
    )

    generation = read_cache_config(fresh_cluster, NAMESPACE, "shop")["metadata"]["generation"]
    fresh_cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        "shop",
        {"spec": {"sidecar": {"image": "registry.example/podcache:new"}}},
    )
    eventually(
        lambda: (
            (read_cache_config(fresh_cluster, NAMESPACE, "shop").get("status") or {}).get(
                "observedGeneration"
            )
            == generation + 1
        ),
        what="the active replica to reconcile the change",
    )
    time.sleep(0.5)  # more than a watch event's delay: no replica may be behind by then
    stored = core.create_namespaced_pod(NAMESPACE, pod("after-change"))
    assert sidecar_image(stored) == "registry.example/podcache:new"

    fresh_cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "shop")

    def deleted() -> bool:
        try:
            read_cache_config(fresh_cluster, NAMESPACE, "shop")
        except client.ApiException as exc:
            return exc.status == 404
        return False

    eventually(deleted, what="the CacheConfig to be gone")
    time.sleep(0.5)
    stored = core.create_namespaced_pod(NAMESPACE, pod("after-delete"))
    # Not injected with a ConfigMap that no longer exists (the pod would never start).
    assert sidecar_image(stored) is None
