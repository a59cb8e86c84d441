"""A KMock-based stand-in for a cluster, and the operator running against it.

Shared by the operator tests (through ``conftest``) and ``bench/operator_bench.py``.

``ClusterEmulator`` is KMock's emulator plus the apiserver behaviour the operator
relies on: objects get a uid, creationTimestamp, resourceVersion and a generation
that grows with spec changes, and deleting an owner deletes what its
``ownerReferences`` point at (the garbage collector's job in a real cluster).
``OperatorThread`` runs ``kopf.operator(...)`` — the same handlers and startup
configure as ``podcache-operator`` — in a thread with its own event loop, as
``kopf.testing.KopfRunner`` does: at exit kopf cancels every task of its loop it did
not know at start, which must be only its own.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import kmock
import kopf
from kopf._cogs.structs import credentials

from podcache_operator import main as operator_main
from podcache_operator import settings as podcache_settings
from tests.operator import samples

CACHECONFIGS = "podcache.io/v1alpha1/cacheconfigs"
SERVICEMONITORS = "monitoring.coreos.com/v1/servicemonitors"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
WEBHOOKS = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
NAMESPACE = "shop"
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """KMock's emulator plus the bits of apiserver behaviour the operator relies on."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    forget_requests: bool = False
    """Keep no request history: KMock re-filters its whole history on every request,
    which makes a long benchmark quadratic. Tests keep it for assertions."""

    async def _handle(self, request: kmock.Request) -> Any:
        if self.forget_requests:
            del self._requests[:-1]
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                metadata = request.data.setdefault("metadata", {})
                metadata.setdefault("uid", str(uuid.uuid4()))
                metadata.setdefault(
                    "creationTimestamp",
                    datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
                metadata.setdefault("generation", 1)
                metadata["resourceVersion"] = str(next(self._versions))
            elif request.action == kmock.action.UPDATE and request.name is not None:
                self._bump(request)
        response = await super()._handle(request)
        if request.action == kmock.action.DELETE and request.resource is not None:
            await self._collect_garbage()
        return response

    def _bump(self, request: kmock.Request) -> None:
        metadata = request.data.setdefault("metadata", {})
        metadata["resourceVersion"] = str(next(self._versions))
        key = (request.resource, request.namespace, request.name)
        stored = self._objects._objects.get(key)  # type: ignore[arg-type]
        if stored is None or stored.deleted or request.subresource is not None:
            return
        spec = request.data.get("spec")
        if spec is not None and spec != stored.raw.get("spec"):
            metadata["generation"] = stored.raw.get("metadata", {}).get("generation", 1) + 1

    async def _collect_garbage(self) -> None:
        """Delete objects whose owners are all gone, repeatedly (owners may own owners)."""
        while True:
            async with self._lock:
                alive = {
                    obj.raw["metadata"].get("uid")
                    for obj in self._objects.values()
                    if not obj.deleted
                }
                orphans = [
                    (key, obj)
                    for key, obj in self._objects.items()
                    if not obj.deleted
                    and (refs := obj.raw.get("metadata", {}).get("ownerReferences"))
                    and not any(ref.get("uid") in alive for ref in refs)
                ]
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            if not orphans:
                return


def declare_resources(cluster: kmock.KubernetesEmulator) -> None:
    """The resources of a cluster without the Prometheus Operator, and our CRD."""
    info = kmock.ResourceInfo
    cluster.resources[CACHECONFIGS] = info(
        kind="CacheConfig",
        singular="cacheconfig",
        namespaced=True,
        shortnames={"pcc"},
        subresources={"status"},
        verbs=VERBS,
    )
    for plural, kind in [
        ("pods", "Pod"),
        ("configmaps", "ConfigMap"),
        ("services", "Service"),
        ("secrets", "Secret"),
        ("events", "Event"),
    ]:
        cluster.resources[f"v1/{plural}"] = info(
            kind=kind, singular=kind.lower(), namespaced=True, verbs=VERBS
        )
    # kopf waits to discover namespaces even when it runs cluster-wide.
    cluster.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs=VERBS)
    cluster.resources[CRDS] = info(kind="CustomResourceDefinition", namespaced=False, verbs=VERBS)
    cluster.resources[WEBHOOKS] = info(
        kind="MutatingWebhookConfiguration", namespaced=False, verbs=VERBS
    )
    cluster.objects[CRDS, None, "cacheconfigs.podcache.io"] = samples.load_crd()


def install_servicemonitor_crd(cluster: kmock.KubernetesEmulator) -> None:
    """What installing the Prometheus Operator's CRD does to discovery."""
    cluster.resources[SERVICEMONITORS] = kmock.ResourceInfo(
        kind="ServiceMonitor", namespaced=True, verbs=VERBS
    )


def servicemonitor_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI.

    Raises ``OSError``/``CalledProcessError`` when openssl is missing or fails.
    """
    paths = {
        name: folder / name for name in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt", "ext")
    }
    paths["ext"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(paths["ca.key"]),
        "-out",
        str(paths["ca.crt"]),
        "-days",
        "1",
        "-subj",
        "/CN=podcache-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(paths["tls.key"]),
        "-out",
        str(paths["tls.csr"]),
        "-subj",
        "/CN=127.0.0.1",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(paths["tls.csr"]),
        "-CA",
        str(paths["ca.crt"]),
        "-CAkey",
        str(paths["ca.key"]),
        "-CAcreateserial",
        "-out",
        str(paths["tls.crt"]),
        "-days",
        "1",
        "-extfile",
        str(paths["ext"]),
    )
    return paths


def test_settings(certificates: dict[str, Path]) -> podcache_settings.Settings:
    """Settings for a fast, single-replica operator with its webhook on a free port."""
    return podcache_settings.Settings(
        sidecar=podcache_settings.SidecarSettings(image="podcache:test"),
        webhook=podcache_settings.WebhookSettings(
            addr="127.0.0.1",
            port=0,
            host="127.0.0.1",
            cert_file=str(certificates["tls.crt"]),
            key_file=str(certificates["tls.key"]),
            ca_file=str(certificates["ca.crt"]),
            managed="podcache.io",
        ),
        watch=podcache_settings.WatchSettings(
            server_timeout=30,
            client_timeout=40,
            connect_timeout=2,
            request_timeout=5,
            reconnect_backoff=0.05,
            error_backoffs=(0.05, 0.1),
        ),
        peering=podcache_settings.PeeringSettings(standalone=True),
        metrics=podcache_settings.MetricsSettings(port=0),  # off: no fixed port in tests
        liveness_endpoint=None,
        secret_retry_delay=0.2,
    )


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


class OperatorThread:
    """``kopf.operator(...)`` against ``server``, in a thread with its own event loop."""

    def __init__(
        self, *, server: str, config: podcache_settings.Settings, standalone: bool = True
    ) -> None:
        assert operator_main.configure  # importing main registers the startup handler
        self.server = server
        self.standalone = standalone
        self.config = config
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._target, name="kopf-operator", daemon=True)

    async def _run(self) -> None:
        vault = credentials.Vault()
        await vault.populate({"kmock": kopf.ConnectionInfo(server=self.server)})
        await kopf.operator(
            clusterwide=True,
            standalone=self.standalone,
            vault=vault,
            stop_flag=self.stop_flag,
            ready_flag=self.ready_flag,
            memo=kopf.Memo(config=self.config),
        )

    def _target(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to the caller, not lost in the thread
            self.errors.append(exc)
            self.ready_flag.set()

    async def start(self, *, within: float) -> None:
        self.thread.start()
        await asyncio.to_thread(self.ready_flag.wait, within)
        if self.errors:
            raise self.errors[0]
        if not self.ready_flag.is_set():
            raise TimeoutError("the operator did not start")

    async def stop(self, *, within: float) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, within)
        if self.thread.is_alive():
            raise TimeoutError("the operator did not stop")
        if self.errors:
            raise self.errors[0]


def get(
    cluster: kmock.KubernetesEmulator, resource: str, name: str, namespace: str | None = NAMESPACE
) -> dict[str, Any] | None:
    """The stored object as a plain dict, or None when absent or deleted."""
    for (res, ns, obj_name), obj in cluster.objects.items():
        if res == resource and ns == namespace and obj_name == name and not obj.deleted:
            return copy.deepcopy(obj.raw)
    return None


def condition(body: dict[str, Any] | None, type: str) -> dict[str, Any] | None:
    for item in ((body or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type:
            return item  # type: ignore[no-any-return]
    return None
