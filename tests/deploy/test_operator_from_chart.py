"""The operator started the way the chart starts it, against the KMock emulator.

The chart's Deployment is rendered, and ``podcache-operator`` runs as a process with
exactly that container's environment and the chart-generated webhook TLS Secret as
files. Only what cannot work outside a pod is changed: the mount directory of the
Secret (a temporary one), the listening ports (free ones, never fixed) and the API
server (KMock, through a kubeconfig).

Aspects:
- the operator accepts the chart's environment and serves kopf's liveness endpoint;
- the admission webhook serves HTTPS with the chart's certificate, verified with the
  caBundle the chart put into the MutatingWebhookConfiguration, for the Service name
  the API server dials, at the path the configuration names;
- a pod labelled for a CacheConfig gets the sidecar image and the pull secret the
  chart's values chose;
- the operator keeps alive in the ClusterKopfPeering object the chart names;
- HA: two replicas with the chart's env (no priority set) draw distinct priorities and
  exactly the highest stays active (kopf pauses every peer sharing the top priority,
  so equal ones would leave none active); with explicit priorities, whichever starts
  first, the higher one is active and the lower one stands by.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from tests.deploy import chart
from tests.operator import emulator

DEADLINE = 30.0  # seconds for the operator to come up; it is usually about two
PEERINGS = "kopf.dev/v1/clusterkopfpeerings"
# The image set once for operator and sidecar; the sidecar's pull secret for app pods.
VALUES = {
    "image": {"registry": "registry.example", "repository": "podcache", "tag": "9.9.9"},
    "sidecar": {"imagePullSecrets": [{"name": "regcred"}]},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": kmock.KubernetesEmulator}


@pytest.fixture
def release() -> chart.Release:
    return chart.render(VALUES)


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator, release: chart.Release) -> kmock.KubernetesEmulator:
    """An API server with the resources the operator discovers, the CRD and the peering."""
    emulator.declare_resources(kmock)
    kmock.resources[PEERINGS] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", namespaced=False, verbs=emulator.VERBS
    )
    for crd in release.of_kind("CustomResourceDefinition"):
        kmock.objects[
            "apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]
        ] = crd
    # The operator creates its peering object when it is missing (the chart no longer
    # ships it: a post-install hook raced the CRD's discovery); seeded here as it would be.
    name = peering_name(release)
    kmock.objects[PEERINGS, None, name] = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": name},
    }
    return kmock


def peering_name(release: chart.Release) -> str:
    """The peering object's name, as the chart tells the operator."""
    return chart.env_of(chart.container(release.one("Deployment"), "operator"))[
        "PODCACHE_PEERING_NAME"
    ]


class Operator:
    """One podcache-operator process with the chart's environment."""

    def __init__(
        self, *, process: asyncio.subprocess.Process, webhook_port: int, tls_dir: Path
    ) -> None:
        self.process = process
        self.webhook_port = webhook_port
        self.tls_dir = tls_dir
        self.output = ""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.output += line.decode(errors="replace")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, timeout=5)
        print(self.output[-4000:])  # shown by pytest when the test fails


def _prepare_files(
    cluster: kmock.KubernetesEmulator, release: chart.Release, workdir: Path
) -> tuple[Path, Path]:
    """The chart's TLS Secret as files (what the volume mount gives), and a kubeconfig."""
    workdir.mkdir()
    tls_dir = workdir / "webhook-tls"
    tls_dir.mkdir()
    for key, value in release.one("Secret")["data"].items():
        (tls_dir / key).write_bytes(base64.b64decode(value))
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "clusters": [
                    {"name": "kmock", "cluster": {"server": str(cluster.url).rstrip("/")}}
                ],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
            }
        )
    )
    return tls_dir, kubeconfig


@contextlib.asynccontextmanager
async def start_operator(
    cluster: kmock.KubernetesEmulator,
    release: chart.Release,
    workdir: Path,
    *,
    pod_id: str,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Operator]:
    """Run podcache-operator with the chart's env (plus extra_env) until the block ends."""
    container = chart.container(release.one("Deployment"), "operator")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")["mountPath"]
    tls_dir, kubeconfig = _prepare_files(cluster, release, workdir)
    webhook_port, health_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODCACHE_", "KUBE"))}
    for name, value in chart.env_of(container).items():
        if isinstance(value, str):
            env[name] = value.replace(mount, str(tls_dir))
    env.update(
        POD_ID=pod_id,  # what the chart's fieldRef gives each pod
        KUBECONFIG=str(kubeconfig),
        PODCACHE_WEBHOOK_ADDR="127.0.0.1",
        PODCACHE_WEBHOOK_PORT=str(webhook_port),
        PODCACHE_OPERATOR_METRICS_ADDR="127.0.0.1",  # the chart's fixed port: not in tests
        PODCACHE_OPERATOR_METRICS_PORT=str(_free_port()),
        PODCACHE_LIVENESS_ENDPOINT=env["PODCACHE_LIVENESS_ENDPOINT"].replace(
            "0.0.0.0:8080", f"127.0.0.1:{health_port}"
        ),
    )
    assert str(health_port) in env["PODCACHE_LIVENESS_ENDPOINT"]
    env.update(extra_env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "podcache_operator.main",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    operator = Operator(process=process, webhook_port=webhook_port, tls_dir=tls_dir)
    try:
        await _wait_live(f"http://127.0.0.1:{health_port}/healthz", process)
        yield operator
    finally:
        await operator.stop()


@pytest.fixture
async def operator(
    cluster: kmock.KubernetesEmulator, release: chart.Release, tmp_path: Path
) -> AsyncIterator[Operator]:
    async with start_operator(cluster, release, tmp_path / "op-0", pod_id="podcache-test-0") as op:
        yield op


async def _wait_live(url: str, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"podcache-operator exited with {process.returncode}")
        with contextlib.suppress(OSError):
            status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=1).status)
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the operator's liveness endpoint never answered")


async def _wait_port(port: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on the webhook port {port}")


def _admit(
    *, port: int, cafile: Path, server_name: str, path: str, review: dict[str, Any]
) -> dict[str, Any]:
    """POST an AdmissionReview as the API server does: TLS verified for the Service name."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        connection = http.client.HTTPConnection(server_name, timeout=10)
        connection.sock = tls
        connection.request(
            "POST", path, body=json.dumps(review), headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        return dict(json.loads(body))


async def test_webhook_injects_with_the_charts_tls_and_values(
    operator: Operator, cluster: kmock.KubernetesEmulator, release: chart.Release
) -> None:
    cluster.objects[emulator.CACHECONFIGS, "shop", "sessions"] = {
        "apiVersion": "podcache.io/v1alpha1",
        "kind": "CacheConfig",
        "metadata": {"name": "sessions", "namespace": "shop", "uid": "u-1"},
        "spec": {"backend": "memory", "defaultTTL": "5m"},
    }
    (hook,) = release.one("MutatingWebhookConfiguration")["webhooks"]
    service = hook["clientConfig"]["service"]
    ca_bundle = operator.tls_dir / "ca-bundle.crt"
    ca_bundle.write_bytes(base64.b64decode(hook["clientConfig"]["caBundle"]))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "labels": {"podcache.io/config": "sessions"},
        },
        "spec": {"containers": [{"name": "app", "image": "nginx"}]},
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "r-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": pod,
            "userInfo": {"username": "system:serviceaccount:shop:default"},
            "dryRun": False,
        },
    }
    await _wait_port(operator.webhook_port)  # kopf starts it after resource discovery
    answer = await asyncio.to_thread(
        _admit,
        port=operator.webhook_port,
        cafile=ca_bundle,
        server_name=f"{service['name']}.{service['namespace']}.svc",
        path=service["path"],
        review=review,
    )
    response = answer["response"]
    assert response["uid"] == "r-1"
    assert response["allowed"] is True
    patch = json.loads(base64.b64decode(response["patch"]))
    assert "registry.example/podcache:9.9.9" in json.dumps(patch)
    assert {
        "op": "add",
        "path": "/spec/imagePullSecrets",
        "value": [{"name": "regcred"}],
    } in patch


async def test_operator_keeps_alive_in_the_charts_peering(
    operator: Operator, cluster: kmock.KubernetesEmulator, release: chart.Release
) -> None:
    name = peering_name(release)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    status: dict[str, Any] = {}
    while loop.time() < deadline:
        status = cluster.objects[PEERINGS, None, name].get("status") or {}
        if "podcache-test-0" in status:
            break
        await asyncio.sleep(0.1)
    assert "podcache-test-0" in status, status


async def _wait_until(condition: Callable[[], bool]) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return False


def _is_active(op: Operator) -> bool:
    """kopf's own account in the log: started paused (peering is mandatory), resumed when
    no peer outranks it, paused again when one appears."""
    resumed = op.output.rfind("Resuming operations after the pause")
    paused = max(
        op.output.rfind("Pausing operations in favour of"), op.output.rfind("Pausing all operators")
    )
    return resumed > paused


async def _peers(cluster: kmock.KubernetesEmulator, name: str, count: int) -> dict[str, Any]:
    """The peering object's keep-alive records, once ``count`` replicas wrote theirs."""
    status: dict[str, Any] = {}

    def enough() -> bool:
        nonlocal status
        status = dict(cluster.objects[PEERINGS, None, name].get("status") or {})
        return len(status) >= count

    assert await _wait_until(enough), f"the replicas never all kept alive: {status}"
    return status


async def test_ha_replicas_keep_exactly_one_active(
    cluster: kmock.KubernetesEmulator, tmp_path: Path
) -> None:
    """Replicas with the chart's env (no priority set) get distinct priorities, and kopf
    keeps exactly the highest one active. kopf pauses *every* peer sharing the top
    priority, so equal priorities would leave no replica active at all."""
    release = chart.render({"operator": {"replicaCount": 3}})
    name = peering_name(release)
    async with (
        start_operator(cluster, release, tmp_path / "a", pod_id="podcache-a") as a,
        start_operator(cluster, release, tmp_path / "b", pod_id="podcache-b") as b,
    ):
        peers = await _peers(cluster, name, 2)
        priorities = {identity: record["priority"] for identity, record in peers.items()}
        assert len(set(priorities.values())) == 2, f"replicas share a priority: {priorities}"
        by_id = {"podcache-a": a, "podcache-b": b}
        high = by_id[max(priorities, key=priorities.__getitem__)]
        low = by_id[min(priorities, key=priorities.__getitem__)]
        assert await _wait_until(lambda: _is_active(high) and not _is_active(low)), (
            f"expected only the higher-priority replica active: {priorities}"
        )


@pytest.mark.parametrize("first_priority", [10, 20], ids=["lower-first", "higher-first"])
async def test_explicit_priorities_keep_the_highest_active(
    cluster: kmock.KubernetesEmulator, tmp_path: Path, first_priority: int
) -> None:
    """PODCACHE_PEERING_PRIORITY set by hand: whichever starts first, the higher one is
    the active replica and the lower one stands by."""
    release = chart.render({"operator": {"replicaCount": 2}})
    second_priority = 30 - first_priority
    async with (
        start_operator(
            cluster,
            release,
            tmp_path / "a",
            pod_id="podcache-a",
            extra_env={"PODCACHE_PEERING_PRIORITY": str(first_priority)},
        ) as a,
        start_operator(
            cluster,
            release,
            tmp_path / "b",
            pod_id="podcache-b",
            extra_env={"PODCACHE_PEERING_PRIORITY": str(second_priority)},
        ) as b,
    ):
        await _peers(cluster, peering_name(release), 2)
        high, low = (a, b) if first_priority > second_priority else (b, a)
        assert await _wait_until(lambda: _is_active(high) and not _is_active(low))
