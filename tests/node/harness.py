"""What the node tests share: the running node as a ``Cluster``, the chart installed
as a user installs it (``helm install --wait``, the operator a pod of the built image),
exec into containers, and the timings the suite reports at its end.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.stream import stream

from tests.controlplane.cluster import ControlPlaneUnavailable, find_binaries
from tests.controlplane.harness import RELEASE, RELEASE_NAMESPACE, Cluster, eventually
from tests.controlplane.helm import CHART, Helm
from tests.node import images
from tests.node.node import Node, find_node_binaries, remove_workdir

IMAGE = "ghcr.io/podcache/podcache"
TIMINGS: dict[str, float] = {}
"""Figures measured by the node tests (seconds), printed at the end of the session."""


@dataclasses.dataclass
class NodeCluster:
    """The one-node cluster: the control-plane handle plus the node's own parts."""

    cluster: Cluster
    node: Node
    upgrade_tag: str
    """A second tag of the same image in containerd, for ``helm upgrade`` to roll to."""

    @property
    def core(self) -> client.CoreV1Api:
        return self.cluster.core

    @property
    def apps(self) -> client.AppsV1Api:
        return self.cluster.apps

    @property
    def helm(self) -> Helm:
        return self.cluster.helm

    def exec(
        self, namespace: str, pod: str, container: str, *argv: str, timeout: float = 60
    ) -> tuple[int, str]:
        """Run ``argv`` in a container through the apiserver and the kubelet (as
        ``kubectl exec`` does); its exit code and combined output."""
        response = stream(
            self.core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=list(argv),
            stdin=False,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
        )
        output = ""
        deadline = time.monotonic() + timeout
        while response.is_open() and time.monotonic() < deadline:
            response.update(timeout=1)
            output += response.read_stdout() + response.read_stderr()
        output += response.read_stdout() + response.read_stderr()
        response.close()
        code = response.returncode
        return (code if code is not None else -1), output

    @property
    def helm_chart(self) -> Path:
        return CHART

    def install(self, *values: str, timeout: str = "180s") -> float:
        """``helm install --wait`` of the unmodified chart; the seconds it took."""
        started = time.monotonic()
        self.helm.run(
            "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
            "--create-namespace", "--wait", "--timeout", timeout,
            *[arg for value in values for arg in ("--set", value)],
            timeout=240,
        )  # fmt: skip
        self.wait_webhook_reachable()
        return time.monotonic() - started

    def wait_webhook_reachable(self) -> None:
        """Until the webhook Service accepts a connection. ``--wait`` ends when the operator
        pod is Ready, a moment before kube-proxy routes the Service to it; a labelled pod
        created in that moment is admitted without the sidecar (failurePolicy Ignore)."""
        (service,) = self.core.list_namespaced_service(
            RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=webhook"
        ).items
        address, port = service.spec.cluster_ip, service.spec.ports[0].port

        def accepts() -> bool:
            try:
                self.node.netns.connect(address, port, timeout=1).close()
            except OSError:
                return False
            return True

        eventually(accepts, timeout=60, what=f"the webhook Service {address}:{port}")

    def operator_pods(self, *, terminating: bool = False) -> list[client.V1Pod]:
        """The operator's pods; with ``terminating``, also those shutting down (they still
        answer admissions until their process exits)."""
        pods = self.core.list_namespaced_pod(
            RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=operator"
        ).items
        return [p for p in pods if terminating or p.metadata.deletion_timestamp is None]


def sidecar_story(nodes: NodeCluster, namespace: str, pod_name: str) -> str:
    """The sidecar's restarts and log, for a failing assertion's message."""
    pod = nodes.core.read_namespaced_pod(pod_name, namespace)
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    restarts = {s.name: s.restart_count for s in statuses}
    try:
        log = nodes.core.read_namespaced_pod_log(pod_name, namespace, container="podcache")
    except client.ApiException as exc:
        log = f"(no log: {exc.reason})"
    return f"restarts {restarts}; sidecar log:\n{log}"


def pod_ready(pod: client.V1Pod) -> bool:
    conditions = {c.type: c.status for c in (pod.status.conditions or [])}
    return conditions.get("Ready") == "True"


def wait_pods_ready(
    nodes: NodeCluster, namespace: str, selector: str, count: int, timeout: float = 120
) -> list[client.V1Pod]:
    """Wait until exactly ``count`` live pods match ``selector``, all Ready (a watch,
    see ``ControlPlane.watch_until``); returns them."""

    def ready(pods: dict[str, dict[str, Any]]) -> bool:
        live = [p for p in pods.values() if not p["metadata"].get("deletionTimestamp")]
        return len(live) == count and all(
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (p.get("status") or {}).get("conditions") or ()
            )
            for p in live
        )

    found = nodes.cluster.plane.watch_until(
        f"/api/v1/namespaces/{namespace}/pods?labelSelector={urllib.parse.quote(selector)}",
        ready,
        timeout=timeout,
        what=f"{count} Ready pods {selector} in {namespace}",
    )
    names = {name for name, p in found.items() if not p["metadata"].get("deletionTimestamp")}
    pods = nodes.core.list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.metadata.name in names]


def app_deployment(name: str, config_name: str | None, replicas: int = 1,
                   **pod_extra: Any) -> dict[str, Any]:  # fmt: skip
    """A Deployment whose app is ``sleep`` in the project's image (it has Python and the
    podcache client, so a test can talk to the socket from the app container)."""
    labels = {"app": name}
    if config_name is not None:
        labels["podcache.io/config"] = config_name
    container: dict[str, Any] = {
        "name": "app",
        "image": f"{IMAGE}:{images_version()}",
        "imagePullPolicy": "Never",
        "command": ["sleep", "infinity"],
    }
    container.update(pod_extra.pop("container", {}))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 10,
                         **pod_extra},
            },
        },
    }  # fmt: skip


def images_version() -> str:
    return images.project_version()


@contextmanager
def start_node() -> Iterator[NodeCluster]:
    """The image built, a node started with it; raises ``ControlPlaneUnavailable`` (or
    a subclass) when anything cannot start, keeping the logs. Set ``cluster.keep_logs``
    to keep them after a failed test."""
    started = time.monotonic()
    image = images.build()
    TIMINGS["image build (cached by content)"] = time.monotonic() - started
    node = Node(find_binaries(), find_node_binaries(), image)
    running: NodeCluster | None = None
    try:
        started = time.monotonic()
        try:
            node.start()
        except ControlPlaneUnavailable as exc:
            raise type(exc)(f"{exc}\n(every component's log is in {node.plane.logs})") from exc
        TIMINGS["node start (namespace to CoreDNS ready)"] = time.monotonic() - started
        for phase, at in node.timings.items():
            TIMINGS[f"  node start: {phase} at"] = at
        api = config.new_client_from_config(config_file=str(node.plane.kubeconfig))
        helm = Helm(
            node.plane.binaries / "helm", node.plane.kubeconfig, node.plane.workdir / "helm"
        )
        upgrade_tag = f"e2e-{image.rsplit(':', 1)[1]}"
        node.containerd.ctr("images", "tag", "--force", image, f"{IMAGE}:{upgrade_tag}")
        running = NodeCluster(Cluster(node.plane, api, helm), node, upgrade_tag)
        yield running
        api.close()
    finally:
        node.stop()
        if running is not None and not running.cluster.keep_logs:
            remove_workdir(node.plane.workdir)
        else:  # a failed start or test: logs and configs stay, images and layers go
            remove_workdir(node.containerd.folder / "root")


def wait_deleted(probe: Any, what: str, timeout: float = 60) -> None:
    def gone() -> bool:
        try:
            probe()
        except client.ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    eventually(gone, timeout=timeout, what=what)
