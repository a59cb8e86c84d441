"""The operator on a real apiserver, under the chart's own RBAC (a ServiceAccount token).

What an emulator cannot show: watches with the query parameters the apiserver parses,
owner references the garbage collector honours, a finalizer on namespace deletion,
status under RBAC, the ServiceMonitor CRD appearing while the operator runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.controlplane import objects
from tests.controlplane.harness import (
    GROUP,
    PLURAL,
    RELEASE,
    RELEASE_NAMESPACE,
    VERSION,
    Installation,
    cache_config,
    create_namespace,
    eventually,
    wait_crds_established,
)
from tests.controlplane.harness import cache_config_ready as ready
from tests.controlplane.harness import create_cache_config as create

SERVICEMONITOR_CRD = Path(__file__).with_name("data") / "servicemonitors.monitoring.coreos.com.yaml"


def test_a_cacheconfig_gets_ready_with_owned_objects(
    installation: Installation, namespace: str
) -> None:
    """Regression: every watch was refused (timeoutSeconds=300.0), so nothing got Ready."""
    cluster = installation.cluster
    create(cluster, namespace, cache_config("shop", {"defaultTTL": "1m"}))
    body = eventually(lambda: ready(cluster, namespace, "shop"), what="CacheConfig Ready")
    uid = body["metadata"]["uid"]
    config_map = cluster.core.read_namespaced_config_map("podcache-shop", namespace)
    service = cluster.core.read_namespaced_service("podcache-shop", namespace)
    for owned in (config_map, service):
        (owner,) = owned.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("CacheConfig", "shop", uid)
        assert owner.controller is True
    assert "defaultTTL: 1m" in config_map.data["config.yaml"]
    assert body["status"]["configHash"]
    assert "ParseInt" not in installation.operator.log()
    # RBAC denials read 'forbidden: User "system:serviceaccount:..." cannot ...'.
    assert "forbidden: User" not in installation.operator.log()


def test_a_spec_change_moves_the_configmap_and_observed_generation(
    installation: Installation, namespace: str
) -> None:
    cluster = installation.cluster
    create(cluster, namespace, cache_config("shop", {"defaultTTL": "1m"}))
    before = eventually(lambda: ready(cluster, namespace, "shop"), what="first Ready")
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "shop", {"spec": {"defaultTTL": "2m"}}
    )

    def reconciled_again() -> dict[str, Any] | None:
        body = ready(cluster, namespace, "shop")
        if body is None or body["metadata"]["generation"] == before["metadata"]["generation"]:
            return None
        return body

    after = eventually(reconciled_again, what="Ready at the new generation")
    assert after["status"]["configHash"] != before["status"]["configHash"]
    config_map = cluster.core.read_namespaced_config_map("podcache-shop", namespace)
    assert "defaultTTL: 2m" in config_map.data["config.yaml"]


def test_a_reconciliation_writes_the_cacheconfig_once(
    installation: Installation, namespace: str
) -> None:
    """Kopf's diff base lives in status.kopf: Ready and the diff base are one status
    write, and the object itself is written by its creator only (before: kopf also
    merge-patched an annotation, a second write and a second event per reconcile)."""
    cluster = installation.cluster
    create(cluster, namespace, cache_config("shop", {"defaultTTL": "1m"}))
    body = eventually(lambda: ready(cluster, namespace, "shop"), what="CacheConfig Ready")
    object_writers = [
        entry["manager"]
        for entry in body["metadata"]["managedFields"]
        if entry.get("subresource") != "status"
    ]
    assert len(object_writers) == 1, body["metadata"]["managedFields"]
    assert not [k for k in body["metadata"].get("annotations", {}) if "podcache.io" in k]
    assert "spec" in body["status"]["kopf"]["last-handled-configuration"]


def test_an_older_operators_annotation_is_replaced_by_status(
    installation: Installation, namespace: str
) -> None:
    """A CacheConfig last handled by an operator that kept kopf's diff base in an
    annotation: handled once more, then the annotation is gone."""
    cluster = installation.cluster
    old = cache_config("shop", {"defaultTTL": "1m"})
    old["metadata"]["annotations"] = {
        "podcache.io/last-handled-configuration": '{"spec":{"defaultTTL":"1m"}}\n'
    }
    create(cluster, namespace, old)

    def migrated() -> dict[str, Any] | None:
        body = ready(cluster, namespace, "shop")
        if body is None or "podcache.io/last-handled-configuration" in (
            body["metadata"].get("annotations") or {}
        ):
            return None
        return body

    body = eventually(migrated, what="Ready, the old annotation removed")
    assert "last-handled-configuration" in body["status"]["kopf"]


def test_the_operator_peers_through_the_charts_peering_object(
    installation: Installation,
) -> None:
    peer = installation.operator.env["POD_ID"]

    def listed() -> bool:
        peering = installation.cluster.custom.get_cluster_custom_object(
            "kopf.dev",
            "v1",
            "clusterkopfpeerings",
            installation.operator.env["PODCACHE_PEERING_NAME"],
        )
        return any(key.startswith(peer) for key in (peering.get("status") or {}))

    eventually(listed, what=f"{peer} in the ClusterKopfPeering's status")


def test_deleting_the_cacheconfig_collects_what_it_owned(
    installation: Installation, namespace: str
) -> None:
    cluster = installation.cluster
    create(cluster, namespace, cache_config("gone", {}))
    eventually(lambda: ready(cluster, namespace, "gone"), what="Ready")
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")

    def collected() -> bool:
        names = {
            c.metadata.name for c in cluster.core.list_namespaced_config_map(namespace).items
        } | {s.metadata.name for s in cluster.core.list_namespaced_service(namespace).items}
        configs = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return "podcache-gone" not in names and not configs["items"]

    # The garbage collector maps CacheConfig only after its discovery resync (every 30 s)
    # sees the CRD the chart installed moments ago; until then it retries the owner with
    # a doubling backoff (its log: "unable to get REST mapping"), so the first sweep can
    # come a minute after the delete.
    eventually(collected, timeout=120, what="the garbage collector to remove owned objects")


def test_deleting_the_namespace_finishes(installation: Installation) -> None:
    """The operator's finalizer must not hold a namespace in Terminating."""
    cluster = installation.cluster
    create_namespace(cluster.core, "doomed")
    create(cluster, "doomed", cache_config("c", {}))
    eventually(lambda: ready(cluster, "doomed", "c"), what="Ready")
    cluster.core.delete_namespace("doomed")

    def deleted() -> bool:
        try:
            cluster.core.read_namespace("doomed")
        except client.ApiException as exc:
            return exc.status == 404
        return False

    eventually(deleted, timeout=60, what="namespace doomed deleted")


def test_servicemonitor_appears_once_its_crd_is_installed(
    installation: Installation, namespace: str
) -> None:
    cluster = installation.cluster
    create(
        cluster,
        namespace,
        cache_config(
            "watched",
            {
                "metrics": {"serviceMonitor": {"interval": "15s", "labels": {"release": "prom"}}},
            },
        ),
    )
    eventually(lambda: ready(cluster, namespace, "watched"), what="Ready")
    crd = yaml.safe_load(SERVICEMONITOR_CRD.read_text())
    objects.create(cluster.api, crd)
    wait_crds_established(cluster, crd["metadata"]["name"])

    def monitor() -> dict[str, Any]:
        found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
            "monitoring.coreos.com", "v1", namespace, "servicemonitors", "podcache-watched"
        )
        return found

    found = eventually(monitor, timeout=30, what="the ServiceMonitor")
    assert found["metadata"]["labels"]["release"] == "prom"
    assert found["metadata"]["ownerReferences"][0]["name"] == "watched"
    assert found["spec"]["endpoints"][0]["interval"] == "15s"


def test_no_secret_is_read_by_default(installation: Installation, namespace: str) -> None:
    """Regression (issue 9, defect 8): the chart granted get on Secrets in every namespace
    for an existence check. By default the operator reads no Secret (a missing one shows on
    the pod), and under the chart's RBAC it may not."""
    cluster = installation.cluster
    spec = {
        "backend": "redis",
        "redis": {
            "url": "redis://redis.example:6379/0",
            "passwordSecretRef": {"name": "not-there", "key": "password"},
        },
    }
    create(cluster, namespace, cache_config("secretive", spec))
    eventually(lambda: ready(cluster, namespace, "secretive"), what="Ready without the Secret")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}",
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb="get", resource="secrets"
            ),
        )
    )
    answer = client.AuthorizationV1Api(cluster.api).create_subject_access_review(review)
    assert answer.status.allowed is False
    assert "forbidden: User" not in installation.operator.log()


def install_servicemonitor_crd(cluster: Any) -> None:
    crd = yaml.safe_load(SERVICEMONITOR_CRD.read_text())
    if not objects.is_served(
        cluster.api, {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor"}
    ):
        try:
            objects.create(cluster.api, crd)
        except Exception as exc:  # created by another test a moment ago
            if "AlreadyExists" not in str(exc) and "409" not in str(exc):
                raise
    wait_crds_established(cluster, crd["metadata"]["name"])


def test_a_label_dropped_from_the_spec_leaves_the_servicemonitor(
    installation: Installation, namespace: str
) -> None:
    """Regression (issue 9, defect 11): owned objects were merge-patched, which never
    removes a key, so a label dropped from serviceMonitor.labels stayed forever. Server-side
    apply removes what we applied before and no longer apply, and keeps others' labels."""
    cluster = installation.cluster
    install_servicemonitor_crd(cluster)
    labels = {"release": "prom", "team": "shop"}
    create(
        cluster,
        namespace,
        cache_config("labelled", {"metrics": {"serviceMonitor": {"labels": labels}}}),
    )

    def monitor_labels() -> dict[str, str]:
        found = cluster.custom.get_namespaced_custom_object(
            "monitoring.coreos.com", "v1", namespace, "servicemonitors", "podcache-labelled"
        )
        return dict(found["metadata"].get("labels") or {})

    eventually(lambda: monitor_labels().get("team") == "shop", timeout=30, what="labels")
    cluster.custom.patch_namespaced_custom_object(
        "monitoring.coreos.com",
        "v1",
        namespace,
        "servicemonitors",
        "podcache-labelled",
        {"metadata": {"labels": {"someone-else": "keeps-this"}}},
    )
    cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "labelled",
        {"spec": {"metrics": {"serviceMonitor": {"labels": {"team": None}}}}},
    )
    eventually(lambda: "team" not in monitor_labels(), timeout=30, what="the label removed")
    assert monitor_labels()["release"] == "prom"
    assert monitor_labels()["someone-else"] == "keeps-this"
