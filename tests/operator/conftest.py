"""Fixtures for running the operator for real against the KMock Kubernetes emulator.

``kmock`` (the KMock plugin's fixture) is made a little more like a real apiserver
by ``ClusterEmulator``: objects get a uid, creationTimestamp, resourceVersion and a
generation that grows with spec changes, and deleting an owner deletes what its
``ownerReferences`` point at (the garbage collector's job in a cluster). The
``cluster`` fixture declares the resources the operator needs for discovery.

``operator`` runs ``kopf.operator(...)`` in-process (the same handlers and startup
configure as ``podcache-operator``) with test settings: no peering, short backoffs,
the webhook on HTTPS with a throwaway CA on a free port, managed by kopf.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import itertools
import ssl
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import kmock
import kopf
import pytest
from kopf._cogs.structs import credentials

from podcache_operator import main as operator_main
from podcache_operator import settings as podcache_settings
from tests.operator import samples

CACHECONFIGS = "podcache.io/v1alpha1/cacheconfigs"
SERVICEMONITORS = "monitoring.coreos.com/v1/servicemonitors"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
WEBHOOKS = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
NAMESPACE = "shop"
DEADLINE = 10.0  # seconds a condition may take to come true; usually well under one


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """KMock's emulator plus the bits of apiserver behaviour the operator relies on."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _handle(self, request: kmock.Request) -> Any:
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


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ClusterEmulator}


@pytest.fixture
def cluster(kmock: ClusterEmulator) -> ClusterEmulator:
    """The emulator with the resources of a cluster without the Prometheus Operator."""
    info = kmock.ResourceInfo
    verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    kmock.resources[CACHECONFIGS] = info(
        kind="CacheConfig",
        singular="cacheconfig",
        namespaced=True,
        shortnames={"pcc"},
        subresources={"status"},
        verbs=verbs,
    )
    for plural, kind in [
        ("pods", "Pod"),
        ("configmaps", "ConfigMap"),
        ("services", "Service"),
        ("secrets", "Secret"),
        ("events", "Event"),
    ]:
        kmock.resources[f"v1/{plural}"] = info(
            kind=kind, singular=kind.lower(), namespaced=True, verbs=verbs
        )
    # kopf waits to discover namespaces even when it runs cluster-wide.
    kmock.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs=verbs)
    kmock.resources[CRDS] = info(kind="CustomResourceDefinition", namespaced=False, verbs=verbs)
    kmock.resources[WEBHOOKS] = info(
        kind="MutatingWebhookConfiguration", namespaced=False, verbs=verbs
    )
    kmock.objects[CRDS, None, "cacheconfigs.podcache.io"] = samples.load_crd()
    return kmock


def install_servicemonitor_crd(cluster: ClusterEmulator) -> None:
    """What installing the Prometheus Operator's CRD does, as far as we care."""
    cluster.resources[SERVICEMONITORS] = cluster.ResourceInfo(
        kind="ServiceMonitor",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
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


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("webhook-tls")
    paths = {
        name: folder / name for name in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt", "ext")
    }
    paths["ext"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    try:
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
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the openssl CLI is needed to make the webhook's test certificates: {exc}")
    return paths


@pytest.fixture
def operator_settings(
    certificates: dict[str, Path], request: pytest.FixtureRequest
) -> podcache_settings.Settings:
    """Test settings; parametrize indirectly with a dict of WebhookSettings fields to change."""
    webhook_changes: dict[str, Any] = getattr(request, "param", {})
    settings = podcache_settings.Settings(
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
        liveness_endpoint=None,
        secret_retry_delay=0.2,
    )
    return dataclasses.replace(
        settings, webhook=dataclasses.replace(settings.webhook, **webhook_changes)
    )


@pytest.fixture
async def operator(
    cluster: ClusterEmulator, operator_settings: podcache_settings.Settings
) -> AsyncIterator[podcache_settings.Settings]:
    """The operator running in a thread of its own (its own event loop) until the test ends.

    A separate loop, as in ``kopf.testing.KopfRunner``: at exit kopf waits for and
    cancels every task of its loop it did not know at start — here only its own.
    """
    assert operator_main.configure  # the startup handler is registered by importing main
    server = str(cluster.url).rstrip("/")
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    async def run() -> None:
        vault = credentials.Vault()
        await vault.populate({"kmock": kopf.ConnectionInfo(server=server)})
        await kopf.operator(
            clusterwide=True,
            standalone=True,
            vault=vault,
            stop_flag=stop,
            ready_flag=ready,
            memo=kopf.Memo(config=operator_settings),
        )

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="kopf-operator", daemon=True)
    thread.start()
    await asyncio.to_thread(ready.wait, DEADLINE)
    if errors:
        raise errors[0]
    assert ready.is_set(), "the operator did not start"
    try:
        yield operator_settings
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, DEADLINE)
        assert not thread.is_alive(), "the operator did not stop"
        if errors:
            raise errors[0]


async def eventually(check: Callable[[], Any], *, within: float = DEADLINE, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (and return it); fail after ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (KeyError, ValueError, AssertionError) as exc:
            last = exc
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what or check}: last result {last!r}")
        await asyncio.sleep(0.02)


def get(
    cluster: ClusterEmulator, resource: str, name: str, namespace: str | None = NAMESPACE
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


def webhook_ssl_context(certificates: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates["ca.crt"]))


Checker = Callable[[], Awaitable[Any]]
