"""The native sidecar's lifecycle as the kubelet runs it.

Aspects:
- the sidecar is serving before the app starts: the app finds the socket at its first
  instruction (the kubelet holds the app until the sidecar's startup probe passes);
- on pod deletion the app stops first; the sidecar then drains and exits 0 within the
  grace period, and its log says so;
- a sidecar that crashes (SIGKILL from the runtime) is restarted alone: the app keeps
  running, unrestarted, and uses the socket again.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client, watch

from tests.controlplane.harness import cache_config, cache_config_ready, create_cache_config
from tests.controlplane.harness import eventually as wait_until
from tests.node.harness import NodeCluster, app_deployment, wait_pods_ready

pytestmark = pytest.mark.timeout(600)

# The app notes whether the socket was there when it started, and stops on SIGTERM at
# once (as a well-behaved app does), so the order of stops is the kubelet's.
APP = {
    "command": [
        "sh",
        "-c",
        'if [ -S "$PODCACHE_SOCKET" ]; then echo socket-at-start; else echo no-socket; fi;'
        ' trap "echo app-stopping; exit 0" TERM; sleep infinity & wait',
    ]
}
USE_SOCKET = (
    "python",
    "-c",
    "import podcache; c = podcache.Client(); c.set('k', b'v'); print(c.get('k'))",
)


@pytest.fixture
def app_pod(release: NodeCluster, namespace: str) -> client.V1Pod:
    create_cache_config(release.cluster, namespace, cache_config("c", {"backend": "memory"}))
    wait_until(lambda: cache_config_ready(release.cluster, namespace, "c"), what="Ready")
    release.apps.create_namespaced_deployment(namespace, app_deployment("life", "c", container=APP))
    (pod,) = wait_pods_ready(release, namespace, "app=life", 1)
    return pod


def test_sidecar_serves_before_the_app_starts(
    release: NodeCluster, namespace: str, app_pod: client.V1Pod
) -> None:
    log = release.core.read_namespaced_pod_log(app_pod.metadata.name, namespace, container="app")
    assert log.splitlines()[0] == "socket-at-start"
    (sidecar,) = app_pod.status.init_container_statuses
    (app,) = app_pod.status.container_statuses
    assert sidecar.started
    assert sidecar.state.running.started_at <= app.state.running.started_at


def test_on_deletion_the_app_stops_first_and_the_sidecar_drains(
    release: NodeCluster, namespace: str, app_pod: client.V1Pod
) -> None:
    name = app_pod.metadata.name
    sidecar_log: list[str] = []

    def follow() -> None:
        stream = release.core.read_namespaced_pod_log(
            name, namespace, container="podcache", follow=True, _preload_content=False
        )
        for line in stream.stream():
            sidecar_log.append(line.decode(errors="replace"))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    terminated: dict[str, Any] = {}
    watcher = watch.Watch()
    release.core.delete_namespaced_pod(name, namespace)
    for event in watcher.stream(
        release.core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}",
        timeout_seconds=60,
    ):  # fmt: skip
        pod = event["object"]
        statuses = (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or []
        )
        for status in statuses:
            if status.state.terminated is not None:
                terminated[status.name] = status.state.terminated
        if event["type"] == "DELETED" or len(terminated) == 2:
            break
    watcher.stop()
    follower.join(timeout=15)
    assert set(terminated) == {"app", "podcache"}, terminated
    assert terminated["app"].exit_code == 0
    assert terminated["podcache"].exit_code == 0
    assert terminated["app"].finished_at <= terminated["podcache"].finished_at
    # Within the grace period (10 s in app_deployment): not killed at its end.
    grace = terminated["podcache"].finished_at - terminated["app"].finished_at
    assert grace.total_seconds() < 10
    text = "".join(sidecar_log)
    assert "shutting down" in text
    assert "shut down" in text.split("shutting down", 1)[1]


def test_a_crashed_sidecar_restarts_alone(
    release: NodeCluster, namespace: str, app_pod: client.V1Pod
) -> None:
    (sidecar,) = app_pod.status.init_container_statuses
    (app,) = app_pod.status.container_statuses
    container_id = sidecar.container_id.removeprefix("containerd://")
    release.node.containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)

    def restarted() -> client.V1Pod | None:
        pod = release.core.read_namespaced_pod(app_pod.metadata.name, namespace)
        (now,) = pod.status.init_container_statuses
        return pod if now.restart_count == 1 and now.ready else None

    pod = wait_until(restarted, timeout=60, what="the sidecar restarted and Ready")
    (app_now,) = pod.status.container_statuses
    assert app_now.restart_count == 0
    assert app_now.state.running.started_at == app.state.running.started_at
    assert app_now.container_id == app.container_id
    code, out = release.exec(namespace, pod.metadata.name, "app", *USE_SOCKET)
    assert code == 0, out
    assert "b'v'" in out
