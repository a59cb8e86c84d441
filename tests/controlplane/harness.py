"""What the control-plane tests share: the cluster handle, the installed release, polling.

``Cluster`` bundles a running ``ControlPlane`` with an admin client and helm;
``Installation`` is the chart installed as release ``podcache`` with its operator as a
local process; ``eventually`` polls the apiserver until a condition holds.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from tests.controlplane.cluster import ControlPlane, find_binaries
from tests.controlplane.helm import Helm
from tests.controlplane.operator_process import OperatorProcess, point_webhook_at
from tests.controlplane.pki import KeyPair

RELEASE = "podcache"
RELEASE_NAMESPACE = "podcache-system"
WEBHOOK_PATH = "/inject"
T = TypeVar("T")


@dataclasses.dataclass
class Cluster:
    """A running control plane with an admin client and helm bound to it."""

    plane: ControlPlane
    api: client.ApiClient
    helm: Helm
    keep_logs: bool = False
    """Set before leaving ``start_cluster`` to keep the work folder (a test failed)."""

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def extensions(self) -> client.ApiextensionsV1Api:
        return client.ApiextensionsV1Api(self.api)

    @property
    def admission(self) -> client.AdmissionregistrationV1Api:
        return client.AdmissionregistrationV1Api(self.api)


@dataclasses.dataclass
class Installation:
    """The chart installed as release ``podcache`` with its operator running locally."""

    cluster: Cluster
    operator: OperatorProcess
    webhook_cert: KeyPair

    def point_webhook(self, **changes: Any) -> None:
        point_webhook_at(
            self.cluster.api,
            RELEASE,
            self.operator.webhook_url + WEBHOOK_PATH,
            self.cluster.plane.ca.pem,
            **changes,
        )


def eventually(probe: Callable[[], T | None], *, timeout: float = 20.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise
            result, last_error = None, exc
        if result is not None and result is not False:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}: {last_error}")


def create_namespace(core: client.CoreV1Api, name: str) -> str:
    """Create namespace ``name`` and wait until it can take pods: the ServiceAccount
    admission plugin refuses them until the controller made its default ServiceAccount."""
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    eventually(
        lambda: core.read_namespaced_service_account("default", name),
        what=f"the default ServiceAccount of {name}",
    )
    return name


def wait_crds_established(cluster: Cluster, *names: str) -> None:
    def established() -> bool:
        for name in names:
            crd = cluster.extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") != "True":
                return False
        return True

    eventually(established, what=f"CRDs {names} Established")


GROUP, VERSION, PLURAL = "podcache.io", "v1alpha1", "cacheconfigs"


def cache_config(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CacheConfig",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_cache_config(cluster: Cluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def read_cache_config(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return body


def cache_config_ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The CacheConfig once Ready=True at its current generation, else None."""
    body = read_cache_config(cluster, namespace, name)
    return body if is_ready(body) else None


def is_ready(body: dict[str, Any]) -> bool:
    """Whether a CacheConfig's status says Ready=True for its current generation."""
    status = body.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    return (
        conditions.get("Ready", {}).get("status") == "True"
        and status.get("observedGeneration") == body["metadata"]["generation"]
    )


@contextmanager
def start_cluster() -> Iterator[Cluster]:
    """A control plane of its own; raises ``ControlPlaneUnavailable`` when it cannot start
    (its logs are then kept, as they are when ``keep_logs`` was set)."""
    binaries = find_binaries()
    plane = ControlPlane(binaries)
    running: Cluster | None = None
    try:
        plane.start()
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        helm = Helm(binaries / "helm", plane.kubeconfig, plane.workdir / "helm")
        running = Cluster(plane, api, helm)
        yield running
        api.close()
    finally:
        plane.stop()
        if running is not None and not running.keep_logs:
            shutil.rmtree(plane.workdir, ignore_errors=True)


@contextmanager
def installed_chart(cluster: Cluster, *values: str) -> Iterator[Installation]:
    """The chart installed with the built helm, its operator a local process under the
    chart's ServiceAccount, the webhook pointed at it by url: before any labelled pod."""
    cluster.helm.install(RELEASE, RELEASE_NAMESPACE, *values)
    wait_crds_established(cluster, "cacheconfigs.podcache.io", "clusterkopfpeerings.kopf.dev")
    operator = chart_operator(cluster, cluster.plane.workdir / "operator")
    installed = Installation(cluster, operator, operator.webhook_cert)
    # The apiserver must never dial the chart's Service IP here.
    installed.point_webhook()
    operator.start()
    try:
        yield installed
    finally:
        operator.stop()


def chart_operator(
    cluster: Cluster, workdir: Path, overrides: dict[str, str] | None = None
) -> OperatorProcess:
    """An operator process (not started) as the installed chart's Deployment runs it,
    serving its webhook with a certificate for 127.0.0.1 from the cluster's CA."""
    webhook_cert = cluster.plane.ca.issue(
        f"webhook-{workdir.name}",
        common_name="podcache-webhook",
        ips=("127.0.0.1",),
        server=True,
    )
    return OperatorProcess(
        cluster.plane,
        cluster.api,
        namespace=RELEASE_NAMESPACE,
        deployment=RELEASE,
        service_account=RELEASE,
        webhook_cert=webhook_cert,
        workdir=workdir,
        overrides=overrides,
    )
