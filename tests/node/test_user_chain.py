"""The user's chain on a node, as the README tells it.

Aspects, in the order a user meets them (one test: each step needs the one before):
- a CacheConfig becomes Ready; a Deployment's two pods labelled for it are admitted
  through the chart's webhook Service (apiserver → kube-proxy → the operator pod) and
  get the native sidecar (an init container with restartPolicy Always);
- the app container uses the socket at ``$PODCACHE_SOCKET`` (exec, the podcache client);
- a change of the CacheConfig reaches the running sidecars through the ConfigMap and
  their hot reload, without a restart: timed from the patch to the new setting being
  in force in every pod, with the data stored before still there;
- the CacheConfig deleted: its ConfigMap goes (garbage collector), running pods keep
  their last config and keep serving, and a new pod is admitted without the sidecar
  (``webhook.rejectMissingConfig: false``, the chart's default).
"""

from __future__ import annotations

import time

import pytest

from tests.controlplane.harness import (
    GROUP,
    PLURAL,
    VERSION,
    cache_config,
    cache_config_ready,
    create_cache_config,
    eventually,
)
from tests.node.harness import TIMINGS, NodeCluster, app_deployment, wait_deleted, wait_pods_ready

pytestmark = pytest.mark.timeout(900)

# Writes N keys through the socket and prints how many are still stored: with
# memory.maxItems below N the least recently used are evicted.
FILL = (
    "import podcache, sys\n"
    "c = podcache.Client()\n"
    "n = int(sys.argv[1])\n"
    "for i in range(n): c.set(f'fill-{i}', b'x')\n"
    "kept = 0\n"
    "for i in range(n):\n"
    "    try:\n"
    "        c.get(f'fill-{i}'); kept += 1\n"
    "    except podcache.CacheMiss:\n"
    "        pass\n"
    "print('kept', kept)\n"
)


def kept_after_filling(release: NodeCluster, namespace: str, pod: str, count: int) -> int:
    code, out = release.exec(namespace, pod, "app", "python", "-c", FILL, str(count))
    assert code == 0, out
    return int(out.split("kept", 1)[1].split()[0])


def test_cacheconfig_to_socket_to_live_change_to_deletion(
    release: NodeCluster, namespace: str
) -> None:
    spec = {"backend": "memory", "defaultTTL": "5m", "memory": {"maxItems": 1000}}
    create_cache_config(release.cluster, namespace, cache_config("sessions", spec))
    eventually(lambda: cache_config_ready(release.cluster, namespace, "sessions"), what="Ready")

    started = time.monotonic()
    release.apps.create_namespaced_deployment(namespace, app_deployment("shop", "sessions", 2))
    pods = wait_pods_ready(release, namespace, "app=shop", 2)
    TIMINGS["2 injected pods to all Ready"] = time.monotonic() - started
    for pod in pods:
        (sidecar,) = pod.spec.init_containers
        assert sidecar.name == "podcache"
        assert sidecar.restart_policy == "Always"
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert env["PODCACHE_SOCKET"] == "/var/run/podcache/cache.sock"

    # The app talks to its own sidecar over the socket.
    name = pods[0].metadata.name
    code, out = release.exec(
        namespace, name, "app", "python", "-c",
        "import os, podcache; c = podcache.Client();"
        " c.set('greeting', b'hello', ttl=300); print(os.environ['PODCACHE_SOCKET'],"
        " c.get('greeting'))",
    )  # fmt: skip
    assert code == 0, out
    assert "/var/run/podcache/cache.sock b'hello'" in out
    assert kept_after_filling(release, namespace, name, 20) == 20

    # A smaller store: in force once 20 writes keep only 5.
    changed = time.monotonic()
    release.cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "sessions", {"spec": {"memory": {"maxItems": 5}}}
    )
    for pod in pods:
        eventually(
            lambda pod=pod: kept_after_filling(release, namespace, pod.metadata.name, 20) == 5,
            timeout=120,
            what=f"maxItems 5 in force in {pod.metadata.name}",
        )
    TIMINGS["CacheConfig change in force in 2 running sidecars"] = time.monotonic() - changed
    after = wait_pods_ready(release, namespace, "app=shop", 2)
    assert {p.metadata.uid for p in after} == {p.metadata.uid for p in pods}
    for pod in after:
        assert [s.restart_count for s in pod.status.init_container_statuses] == [0]
        assert [s.restart_count for s in pod.status.container_statuses] == [0]

    # Deleted: the ConfigMap goes; running pods keep serving their last config.
    config_map = release.core.list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/managed-by=podcache-operator"
    ).items
    release.cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "sessions"
    )
    for item in config_map:
        wait_deleted(
            lambda item=item: release.core.read_namespaced_config_map(
                item.metadata.name, namespace
            ),
            what=f"ConfigMap {item.metadata.name} collected",
        )
    time.sleep(3)  # a kubelet volume sync later, the pods still serve
    for pod in after:
        assert kept_after_filling(release, namespace, pod.metadata.name, 20) == 5
    # A new pod is admitted without the sidecar.
    release.apps.patch_namespaced_deployment_scale("shop", namespace, {"spec": {"replicas": 3}})
    pods = wait_pods_ready(release, namespace, "app=shop", 3)
    (new,) = [p for p in pods if p.metadata.uid not in {q.metadata.uid for q in after}]
    assert not new.spec.init_containers
    assert [c.name for c in new.spec.containers] == ["app"]
