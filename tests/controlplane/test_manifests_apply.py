"""The plain manifests in manifests/ as `kubectl apply` users apply them, on a real apiserver."""

from __future__ import annotations

import yaml

from tests.controlplane import objects
from tests.controlplane.harness import Cluster, wait_crds_established
from tests.controlplane.helm import CHART

MANIFESTS = CHART.parents[1] / "manifests"
# podcache.yaml takes its webhook certificate from cert-manager, whose CRDs this cluster
# does not have; every other object must be accepted as written.
CERT_MANAGER = {"cert-manager.io/v1/Certificate", "cert-manager.io/v1/Issuer"}


def load(name: str) -> list[dict]:  # type: ignore[type-arg]
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def test_crds_then_podcache_yaml_apply(fresh_cluster: Cluster) -> None:
    crds = load("crds.yaml")
    for doc in crds:
        objects.create(fresh_cluster.api, doc)
    wait_crds_established(fresh_cluster, *(doc["metadata"]["name"] for doc in crds))
    rest = load("podcache.yaml")
    unserved = [doc for doc in rest if not objects.is_served(fresh_cluster.api, doc)]
    assert objects.kinds(unserved) <= CERT_MANAGER
    for doc in rest:
        if doc in unserved:
            continue
        objects.create(fresh_cluster.api, doc)
        assert objects.read(fresh_cluster.api, doc).metadata.uid
