"""Fixtures for the tests on a real control plane (etcd, kube-apiserver,
kube-controller-manager; see ``cluster``).

``control_plane`` is one cluster for the session; ``installed_chart`` installs the chart
into it once with the built helm, exactly as a user would, then points the webhook at
the loopback operator; ``operator`` is that operator process (a test may stop and start
it). Tests that install, upgrade and uninstall the chart themselves use
``fresh_control_plane``. When the binaries cannot be built or the cluster cannot start,
the tests fail under CI=true and skip elsewhere (``tests.availability``).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kubernetes import client, config

from tests.availability import unavailable
from tests.controlplane.cluster import ControlPlane, ControlPlaneUnavailable, find_binaries
from tests.controlplane.harness import (
    RELEASE,
    RELEASE_NAMESPACE,
    Cluster,
    Installation,
    eventually,
    wait_crds_established,
)
from tests.controlplane.helm import Helm
from tests.controlplane.operator_process import OperatorProcess


@contextmanager
def running_cluster(request: pytest.FixtureRequest, name: str) -> Iterator[Cluster]:
    try:
        binaries = find_binaries()
        plane = ControlPlane(binaries)
        plane.start()
    except ControlPlaneUnavailable as exc:
        unavailable("A Kubernetes control plane", str(exc))
    failed_before = request.session.testsfailed
    try:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        yield Cluster(plane, api, Helm(binaries / "helm", plane.kubeconfig, plane.workdir / "helm"))
        api.close()
    finally:
        plane.stop()
        if request.session.testsfailed > failed_before:
            print(f"\n{name}: logs kept in {plane.logs}")
        else:
            shutil.rmtree(plane.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One control plane shared by the session."""
    with running_cluster(request, "control plane") as running:
        yield running


@pytest.fixture(scope="module")
def fresh_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A control plane of this module's own (for chart install/upgrade/uninstall)."""
    with running_cluster(request, f"control plane of {request.module.__name__}") as running:
        yield running


@pytest.fixture(scope="session")
def installation(cluster: Cluster) -> Iterator[Installation]:
    """The unmodified chart installed with helm; its operator running as a local process."""
    cluster.helm.install(RELEASE, RELEASE_NAMESPACE)
    wait_crds_established(cluster, "cacheconfigs.podcache.io", "clusterkopfpeerings.kopf.dev")
    workdir = cluster.plane.workdir / "operator"
    workdir.mkdir(exist_ok=True)
    webhook_cert = cluster.plane.ca.issue(
        "webhook", common_name="podcache-webhook", ips=("127.0.0.1",), server=True
    )
    operator = OperatorProcess(
        cluster.plane,
        cluster.api,
        namespace=RELEASE_NAMESPACE,
        deployment=RELEASE,
        service_account=RELEASE,
        webhook_cert=webhook_cert,
        workdir=workdir,
    )
    installed = Installation(cluster, operator, webhook_cert)
    # Before any labelled pod exists: the apiserver must never dial a Service IP here.
    installed.point_webhook()
    operator.start()
    try:
        yield installed
    finally:
        operator.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    eventually(
        lambda: cluster.core.read_namespaced_service_account("default", name),
        what=f"the default ServiceAccount of {name}",
    )
    yield name
    cluster.core.delete_namespace(name)
