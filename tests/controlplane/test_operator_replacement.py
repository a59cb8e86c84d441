"""An operator replica killed without leaving the peering: its replacement acts at once.

kopf keeps a replica's record in the ClusterKopfPeering for its lifetime (60 s) unless
the replica removes it on the way out. One that is SIGKILLed or OOM-killed, or whose
RBAC is gone before it exits (``helm uninstall`` deletes the ClusterRoleBinding while
the pod terminates), leaves it behind. With priorities drawn at random, a replacement
that drew less paused for up to that minute and reconciled nothing (a CI run's node
test waited 20 s for a CacheConfig to turn Ready after ``helm uninstall``/``install``).
Each round here kills the active replica and starts a new one beside the dead records.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tests.controlplane.harness import (
    RELEASE,
    RELEASE_NAMESPACE,
    Cluster,
    cache_config,
    cache_config_ready,
    chart_operator,
    create_cache_config,
    create_namespace,
    eventually,
    wait_crds_established,
)
from tests.controlplane.operator_process import OperatorProcess

NAMESPACE = "replaced"
ROUNDS = 4
"""With random priorities every round's replica had to outrank all the dead ones before
it: all four rounds passed one time in 24."""
READY_WITHIN = 15.0
"""Well under kopf's 60 s peering lifetime, well over a reconcile."""


def peering_status(cluster: Cluster, operator: OperatorProcess) -> dict[str, Any]:
    peering = client.CustomObjectsApi(cluster.api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", operator.env["PODCACHE_PEERING_NAME"]
    )
    return dict(peering.get("status") or {})


def record_of(cluster: Cluster, operator: OperatorProcess) -> dict[str, Any] | None:
    peer = operator.env["POD_ID"]
    for identity, record in peering_status(cluster, operator).items():
        if identity.startswith(peer):
            return dict(record)
    return None


def serve_and_die(cluster: Cluster, round_: int, dead: list[dict[str, Any]]) -> dict[str, Any]:
    """Start a replica, check it reconciles at once, SIGKILL it; its peering record."""
    operator = chart_operator(
        cluster, cluster.plane.workdir / f"operator-{round_}", {"POD_ID": f"replaced-{round_}"}
    )
    operator.start()
    try:
        name = f"c{round_}"
        create_cache_config(cluster, NAMESPACE, cache_config(name, {"backend": "memory"}))
        eventually(
            lambda: cache_config_ready(cluster, NAMESPACE, name),
            timeout=READY_WITHIN,
            what=f"{name} Ready beside the dead replicas' records {dead}",
        )
        assert "Pausing operations" not in operator.log(), operator.log_tail()
        record = eventually(lambda: record_of(cluster, operator), what="its peering record")
    finally:
        assert operator.process is not None
        operator.process.kill()  # as the OOM killer would: no goodbye to the peering
        operator.process.wait()
    assert record_of(cluster, operator) is not None, "a killed replica's record stays"
    return record


def test_a_replica_started_after_a_killed_one_reconciles_at_once(fresh_cluster: Cluster) -> None:
    fresh_cluster.helm.install(RELEASE, RELEASE_NAMESPACE)
    wait_crds_established(fresh_cluster, "cacheconfigs.podcache.io")
    create_namespace(fresh_cluster.core, NAMESPACE)
    dead: list[dict[str, Any]] = []
    for round_ in range(ROUNDS):
        record = serve_and_die(fresh_cluster, round_, dead)
        assert all(record["priority"] > other["priority"] for other in dead)
        dead.append(record)
