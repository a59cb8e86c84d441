"""Chart options the apiserver must accept (issue 9, defect 11): the NetworkPolicy that
limits who reaches the webhook and the metrics port, rendered by the built helm and
created on the real apiserver, which validates it."""

from __future__ import annotations

from tests.controlplane import objects
from tests.controlplane.harness import Cluster


def test_the_network_policy_is_accepted(cluster: Cluster, namespace: str) -> None:
    docs = cluster.helm.template(
        "networkPolicy.enabled=true",
        "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/24",
    )
    (policy,) = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    policy["metadata"]["namespace"] = namespace
    objects.create(cluster.api, policy)
    stored = objects.read(cluster.api, policy).to_dict()
    (webhook, metrics) = stored["spec"]["ingress"]
    assert webhook["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    assert webhook["ports"] == [{"port": 9443, "protocol": "TCP"}]
    assert metrics["ports"] == [{"port": 9091, "protocol": "TCP"}]
