"""What a cluster admin's rules and a Prometheus see of injected pods, on the node.

Aspects:
- in a namespace enforcing the ``restricted`` Pod Security level, a compliant app's pod
  is admitted with the sidecar and runs (the injected container is restricted too);
- the sidecar's metrics are served on the pod IP's metrics port (what the CacheConfig's
  Service and a ServiceMonitor scrape), counting the app's requests.
"""

from __future__ import annotations

import pytest

from tests.controlplane.harness import cache_config, cache_config_ready, create_cache_config
from tests.controlplane.harness import eventually as wait_until
from tests.node.harness import NodeCluster, app_deployment, wait_pods_ready

pytestmark = pytest.mark.timeout(600)
RESTRICTED_CONTAINER = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def test_restricted_namespace_runs_the_injected_pod(release: NodeCluster, namespace: str) -> None:
    release.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    create_cache_config(release.cluster, namespace, cache_config("c", {"backend": "memory"}))
    wait_until(lambda: cache_config_ready(release.cluster, namespace, "c"), what="Ready")
    release.apps.create_namespaced_deployment(
        namespace, app_deployment("strict", "c", container=RESTRICTED_CONTAINER)
    )
    (pod,) = wait_pods_ready(release, namespace, "app=strict", 1)
    assert [c.name for c in pod.spec.init_containers] == ["podcache"]
    code, out = release.exec(
        namespace, pod.metadata.name, "app", "python", "-c",
        "import podcache; c = podcache.Client(); c.set('k', b'v'); print(c.get('k'))",
    )  # fmt: skip
    assert code == 0, out
    assert "b'v'" in out


def test_metrics_are_served_on_the_pod_ip(release: NodeCluster, namespace: str) -> None:
    create_cache_config(release.cluster, namespace, cache_config("m", {"backend": "memory"}))
    wait_until(lambda: cache_config_ready(release.cluster, namespace, "m"), what="Ready")
    release.apps.create_namespaced_deployment(namespace, app_deployment("scraped", "m"))
    (pod,) = wait_pods_ready(release, namespace, "app=scraped", 1)
    code, out = release.exec(
        namespace, pod.metadata.name, "app", "python", "-c",
        "import podcache; c = podcache.Client()\nfor i in range(7): c.set(f'k{i}', b'v')",
    )  # fmt: skip
    assert code == 0, out
    (sidecar,) = pod.spec.init_containers
    (port,) = sidecar.ports
    body = release.node.http_get(pod.status.pod_ip, port.container_port, "/metrics")
    assert body is not None
    lines = body.decode().splitlines()
    sets = [
        line
        for line in lines
        if line.startswith("lab_cache_requests_total{") and 'operation="set"' in line
    ]
    assert sets, "\n".join(lines[:40])
    assert sum(float(line.rsplit(" ", 1)[1]) for line in sets) >= 7
