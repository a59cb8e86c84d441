"""Fixtures for the tests on a real control plane (etcd, kube-apiserver,
kube-controller-manager; see ``cluster``).

``cluster`` is one control plane for the session; ``installation`` installs the chart
into it once with the built helm, exactly as a user would, and runs its operator as a
local process the webhook is pointed at (a test may stop and start it). Tests that
install, upgrade and uninstall the chart themselves use ``fresh_cluster``. When the
binaries cannot be built or the cluster cannot start, the tests fail under CI=true and
skip elsewhere (``tests.availability``); a failing test keeps the cluster's logs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.availability import unavailable
from tests.controlplane.cluster import ControlPlaneUnavailable
from tests.controlplane.harness import (
    Cluster,
    Installation,
    create_namespace,
    installed_chart,
    start_cluster,
)


def running_cluster(request: pytest.FixtureRequest, name: str) -> Iterator[Cluster]:
    failed_before = request.session.testsfailed
    with ExitStack() as stack:
        try:
            running = stack.enter_context(start_cluster())
        except ControlPlaneUnavailable as exc:
            unavailable("A Kubernetes control plane", str(exc))
        yield running
        running.keep_logs = request.session.testsfailed > failed_before
        if running.keep_logs:
            print(f"\n{name}: logs kept in {running.plane.logs}")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One control plane shared by the session."""
    yield from running_cluster(request, "control plane")


@pytest.fixture(scope="module")
def fresh_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A control plane of this module's own (for chart install/upgrade/uninstall)."""
    yield from running_cluster(request, f"control plane of {request.module.__name__}")


@pytest.fixture(scope="session")
def installation(cluster: Cluster) -> Iterator[Installation]:
    """The unmodified chart installed with helm; its operator running as a local process."""
    with installed_chart(cluster) as installed:
        yield installed


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards."""
    name = create_namespace(cluster.core, f"t-{uuid.uuid4().hex[:10]}")
    yield name
    cluster.core.delete_namespace(name)
