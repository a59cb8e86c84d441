"""Fixtures for the tests on a real one-node cluster (see ``node``).

``nodes`` is one node for the tests of this package: the project's image built with podman and
imported into containerd, the control plane, kubelet, scheduler, kube-proxy and CoreDNS
inside a network namespace of its own. ``release`` is the unmodified chart installed
into it with ``helm install --wait``: the operator runs in a pod of the built image and
the apiserver calls its webhook through the chart's Service. When the node cannot
start, the tests fail under CI=true and skip elsewhere (``tests.availability``); a
failing test keeps the cluster's logs and prints where.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.availability import unavailable
from tests.controlplane.cluster import ControlPlaneUnavailable
from tests.controlplane.harness import RELEASE, RELEASE_NAMESPACE, create_namespace
from tests.node.harness import TIMINGS, NodeCluster, start_node
from tests.node.images import ImageUnavailable
from tests.node.netns import NetworkUnavailable


# Package scope: the node stops once tests/node is done, before the rest of the suite
# runs on the same two cores.
@pytest.fixture(scope="package")
def nodes(request: pytest.FixtureRequest) -> Iterator[NodeCluster]:
    failed_before = request.session.testsfailed
    with ExitStack() as stack:
        try:
            running = stack.enter_context(start_node())
        except (ControlPlaneUnavailable, ImageUnavailable, NetworkUnavailable) as exc:
            unavailable("A Kubernetes node", str(exc))
        yield running
        running.cluster.keep_logs = request.session.testsfailed > failed_before
        if running.cluster.keep_logs:
            print(f"\nnode: logs kept in {running.node.plane.logs}")


@pytest.fixture(scope="package")
def release(nodes: NodeCluster) -> NodeCluster:
    """The chart installed (once; a test that uninstalls it installs it again)."""
    installed = nodes.helm.run("list", "--namespace", RELEASE_NAMESPACE, "--short")
    if RELEASE not in installed.split():
        TIMINGS["helm install --wait"] = nodes.install()
    return nodes


@pytest.fixture
def namespace(nodes: NodeCluster) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards."""
    name = create_namespace(nodes.core, f"t-{uuid.uuid4().hex[:10]}")
    yield name
    nodes.core.delete_namespace(name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("e2e node figures (seconds)")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f}")
