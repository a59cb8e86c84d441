"""Memory as the kubelet enforces it: the sidecar's memory limit is a cgroup, and an
OOMKill loses every cached item.

Aspect: under a write load of small values from the app (two writers, 10-byte values,
new keys all the time), the memory backend's ``maxBytes`` bound keeps the sidecar
inside its limit: no OOMKill, no restart, and the peak the cgroup saw is reported.
Issue 18 measured the opposite before issue 10's bound: OOMKilled twice in 100 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.controlplane.harness import cache_config, cache_config_ready, create_cache_config
from tests.controlplane.harness import eventually as wait_until
from tests.node.harness import TIMINGS, NodeCluster, app_deployment, wait_pods_ready

pytestmark = pytest.mark.timeout(600)
LIMIT = 128 * 1024 * 1024
WRITE_SECONDS = 45

WRITERS = f"""
import os, time, podcache
c = podcache.Client()
n = 0
deadline = time.monotonic() + {WRITE_SECONDS}
while time.monotonic() < deadline:
    c.set(f"w{{os.getpid()}}-{{n}}", b"0123456789")
    n += 1
print("wrote", n)
"""


def cgroup_peak(nodes: NodeCluster, container_id: str) -> int | None:
    """The container's peak memory from its cgroup v1 (runc's cgroupfs path), if found."""
    import json

    info = json.loads(nodes.node.containerd.ctr("containers", "info", container_id))
    path = info["Spec"]["linux"].get("cgroupsPath", "")
    peak = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.max_usage_in_bytes"
    return int(peak.read_text()) if peak.exists() else None


def test_small_values_keep_the_sidecar_inside_its_limit(
    release: NodeCluster, namespace: str
) -> None:
    spec = {
        "backend": "memory",
        # Far below what the load writes (~85,000 entries of ~265 accounted bytes here),
        # so eviction runs for most of it.
        "memory": {"maxBytes": "8Mi"},
        "sidecar": {"resources": {"requests": {"memory": "64Mi"},
                                  "limits": {"memory": "128Mi"}}},
    }  # fmt: skip
    create_cache_config(release.cluster, namespace, cache_config("small", spec))
    wait_until(lambda: cache_config_ready(release.cluster, namespace, "small"), what="Ready")
    release.apps.create_namespaced_deployment(namespace, app_deployment("load", "small"))
    (pod,) = wait_pods_ready(release, namespace, "app=load", 1)
    (sidecar,) = pod.status.init_container_statuses
    assert pod.spec.init_containers[0].resources.limits["memory"] == "128Mi"

    started = time.monotonic()
    code, out = release.exec(
        namespace, pod.metadata.name, "app", "sh", "-c",
        f"python -c '{WRITERS}' & python -c '{WRITERS}' & wait",
        timeout=WRITE_SECONDS + 60,
    )  # fmt: skip
    TIMINGS["memory load: seconds of writing"] = time.monotonic() - started
    assert code == 0, out
    writes = sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("wrote"))
    TIMINGS["memory load: 10-byte writes"] = writes
    after = release.core.read_namespaced_pod(pod.metadata.name, namespace)
    (status,) = after.status.init_container_statuses
    assert status.restart_count == 0, status.last_state
    assert status.container_id == sidecar.container_id
    peak = cgroup_peak(release, status.container_id.removeprefix("containerd://"))
    if peak is not None:
        TIMINGS["memory load: sidecar cgroup peak (MiB)"] = peak / 2**20
        assert peak < LIMIT
