"""The operator when something it needs is missing, on a real apiserver of its own.

Aspects (issue 9, defect 3): the chart installed with ``crds.enabled=false`` and only
the CacheConfig CRD applied by hand — one replica serves standalone without kopf's
peering CRD; once that CRD is there but its object is not, the operator creates the
ClusterKopfPeering under the chart's RBAC and peers in it; both said at WARNING.
``podcache-operator`` run locally with its defaults (no webhook certificate) keeps
running with the webhook off and says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.controlplane import objects
from tests.controlplane.cluster import ROOT
from tests.controlplane.harness import (
    RELEASE,
    RELEASE_NAMESPACE,
    Cluster,
    cache_config,
    chart_operator,
    eventually,
    wait_crds_established,
)
from tests.controlplane.harness import cache_config_ready as ready
from tests.controlplane.harness import create_cache_config as create
from tests.controlplane.operator_process import OperatorProcess, point_webhook_at
from tests.redis_server import free_port

FILES = ROOT / "charts" / "podcache" / "files"
CACHECONFIG_CRD = FILES / "crds" / "cacheconfigs.podcache.io.yaml"
PEERING_CRD = FILES / "kopf" / "clusterkopfpeerings.kopf.dev.yaml"
OPERATOR = Path(sys.executable).with_name("podcache-operator")


@pytest.fixture(scope="module")
def without_crds(fresh_cluster: Cluster) -> Cluster:
    """The chart installed with crds.enabled=false; only the CacheConfig CRD applied."""
    fresh_cluster.helm.install(RELEASE, RELEASE_NAMESPACE, "crds.enabled=false")
    objects.create(fresh_cluster.api, yaml.safe_load(CACHECONFIG_CRD.read_text()))
    wait_crds_established(fresh_cluster, "cacheconfigs.podcache.io")
    return fresh_cluster


def new_namespace(cluster: Cluster) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture
def operator(without_crds: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    cluster = without_crds
    process = chart_operator(cluster, tmp_path / f"operator-{uuid.uuid4().hex[:6]}")
    point_webhook_at(cluster.api, RELEASE, process.webhook_url + "/inject", cluster.plane.ca.pem)
    yield process
    process.stop()


def warnings(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and text in line]


def test_serves_without_peering_crd_then_creates_the_missing_peering_object(
    without_crds: Cluster, operator: OperatorProcess
) -> None:
    """Regression: peering was mandatory and kopf waited, at debug level, for an object
    that crds.enabled=false (or a GitOps prune of the chart's hook) never made."""
    cluster = without_crds
    # No kopf CRD: the one replica serves standalone.
    operator.start()
    namespace = new_namespace(cluster)
    create(cluster, namespace, cache_config("alone", {}))
    eventually(lambda: ready(cluster, namespace, "alone"), what="Ready, standalone")
    assert warnings(operator.log(), "running standalone")
    operator.stop()

    # kopf's CRD but no object: the operator creates it and peers in it.
    objects.create(cluster.api, yaml.safe_load(PEERING_CRD.read_text()))
    wait_crds_established(cluster, "clusterkopfpeerings.kopf.dev")
    operator.start()
    peer = operator.env["POD_ID"]

    def peering_lists_us() -> bool:
        peering = cluster.custom.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", operator.env["PODCACHE_PEERING_NAME"]
        )
        return any(key.startswith(peer) for key in (peering.get("status") or {}))

    eventually(peering_lists_us, timeout=30, what="the operator peering in the object it made")
    create(cluster, namespace, cache_config("peered", {}))
    eventually(lambda: ready(cluster, namespace, "peered"), what="Ready, peered")
    assert warnings(operator.log(), "was missing")
    assert "forbidden: User" not in operator.log()


def test_runs_locally_with_defaults(without_crds: Cluster, tmp_path: Path) -> None:
    """Regression: with no webhook certificate configured kopf needed certbuilder and the
    operator died at start. Only the listeners move to free ports (others share this host)."""
    health = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "KUBECONFIG": str(without_crds.plane.kubeconfig),
        "PODCACHE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{health}/healthz",
        "PODCACHE_OPERATOR_METRICS_PORT": str(free_port()),
        "PODCACHE_WEBHOOK_PORT": str(free_port()),
    }
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(OPERATOR)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:

        def healthy() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        eventually(healthy, timeout=30, what="the operator's /healthz")
        time.sleep(1.0)  # kopf's webhook server would have failed by now
        assert process.poll() is None, log_path.read_text()
        assert warnings(log_path.read_text(), "admission webhook is OFF")
    finally:
        process.terminate()
        process.wait(timeout=20)
