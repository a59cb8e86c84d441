"""The chart as a user installs it, on a node: the operator runs in-cluster.

Aspects:
- ``helm install --wait`` of the unmodified chart returns once the operator pod, from
  the image built from the Dockerfile, is Ready; it reaches the apiserver through the
  ``kubernetes`` Service and CoreDNS, and never restarts;
- ``helm upgrade`` with a new image tag rolls the operator to it;
- ``helm uninstall`` leaves running apps running (and their sidecars serving).
"""

from __future__ import annotations

import time

import pytest

from tests.controlplane.harness import (
    RELEASE,
    RELEASE_NAMESPACE,
    cache_config,
    cache_config_ready,
    create_cache_config,
    eventually,
)
from tests.node.harness import (
    IMAGE,
    TIMINGS,
    NodeCluster,
    app_deployment,
    images_version,
    pod_ready,
    wait_pods_ready,
)

# The first test's setup builds the image (cold: minutes) and starts the node.
pytestmark = pytest.mark.timeout(900)


def test_install_wait_runs_the_operator_from_the_built_image(release: NodeCluster) -> None:
    (pod,) = release.operator_pods()
    assert pod_ready(pod)
    (container,) = pod.spec.containers
    assert container.image == f"{IMAGE}:{images_version()}"
    status = pod.status.container_statuses[0]
    assert status.ready
    assert status.restart_count == 0
    # It peered and is watching: the kopf peering object carries it.
    logs = release.core.read_namespaced_pod_log(pod.metadata.name, RELEASE_NAMESPACE)
    assert "Traceback" not in logs, logs[-3000:]


def test_upgrade_rolls_and_uninstall_leaves_apps_running(
    release: NodeCluster, namespace: str
) -> None:
    (before,) = release.operator_pods()
    started = time.monotonic()
    release.helm.run(
        "upgrade", RELEASE, str(release.helm_chart), "--namespace", RELEASE_NAMESPACE,
        "--reuse-values", "--set", f"operator.image.tag={release.upgrade_tag}",
        "--wait", "--timeout", "180s", timeout=240,
    )  # fmt: skip
    TIMINGS["helm upgrade --wait (new operator image)"] = time.monotonic() - started
    (after,) = eventually(
        lambda: [p for p in release.operator_pods() if pod_ready(p)] or None,
        what="the upgraded operator Ready",
    )
    assert after.metadata.uid != before.metadata.uid
    assert after.spec.containers[0].image == f"{IMAGE}:{release.upgrade_tag}"

    create_cache_config(release.cluster, namespace, cache_config("keep", {"backend": "memory"}))
    eventually(lambda: cache_config_ready(release.cluster, namespace, "keep"), what="Ready")
    release.apps.create_namespaced_deployment(namespace, app_deployment("kept", "keep"))
    (app,) = wait_pods_ready(release, namespace, "app=kept", 1)
    assert len(app.spec.init_containers or []) + len(app.spec.containers) == 2

    release.helm.run("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait",
                     timeout=240)  # fmt: skip
    try:
        eventually(lambda: not release.operator_pods(), what="the operator gone")
        time.sleep(3)  # long enough for a kubelet sync: a stop would have begun
        (still,) = wait_pods_ready(release, namespace, "app=kept", 1)
        assert still.metadata.uid == app.metadata.uid
        code, out = release.exec(
            namespace, app.metadata.name, "app",
            "python", "-c", "import podcache; c = podcache.Client(); c.set('k', b'v');"
            " print(c.get('k'))",
        )  # fmt: skip
        assert code == 0, out
        assert "b'v'" in out
    finally:
        # The next tests expect the release as a user left it after install.
        TIMINGS["helm install --wait (again, CRDs kept)"] = release.install()
