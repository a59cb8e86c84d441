"""The operator's API surface: URLs, and ``API_CALLS`` (the RBAC the chart grants) against real use.

Aspects: resource URLs (core, grouped, cluster-scoped, subresources); every watched
resource is listed with get/list/watch; a full scenario run against KMock makes no
API call (by kopf or by us) that ``API_CALLS`` does not grant, and lists/watches
pods, ConfigMaps and Services only through server-side label selectors.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from podcache_operator import kubeapi
from tests.operator import samples
from tests.operator.conftest import (
    CRDS,
    NAMESPACE,
    WEBHOOKS,
    ClusterEmulator,
    eventually,
    get,
    install_servicemonitor_crd,
    servicemonitor_crd,
    webhook_ssl_context,
)
from tests.operator.test_operator import create, patch_spec, ready
from tests.operator.test_webhook import review

VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def test_urls() -> None:
    assert kubeapi.PODS.url(namespace="a") == "/api/v1/namespaces/a/pods"
    assert kubeapi.CACHECONFIGS.url(namespace="a", name="b", subresource="status") == (
        "/apis/podcache.io/v1alpha1/namespaces/a/cacheconfigs/b/status"
    )
    assert kubeapi.CRDS.url(namespace="ignored", name="x") == (
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x"
    )
    assert kubeapi.SERVICEMONITORS.api_version == "monitoring.coreos.com/v1"
    assert kubeapi.CONFIGMAPS.api_version == "v1"


def test_watched_resources_are_granted() -> None:
    granted = {(call.group, call.resource): set(call.verbs) for call in kubeapi.API_CALLS}
    for resource in kubeapi.WATCHED:
        assert {"list", "watch"} <= granted[(resource.group, resource.plural)], resource


def test_established() -> None:
    assert kubeapi.is_established(servicemonitor_crd())
    assert not kubeapi.is_established(None)
    assert not kubeapi.is_established({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert not kubeapi.is_established(
        {"status": {"conditions": [{"type": "Established", "status": "False"}]}}
    )


def verb(request: Any) -> str:
    if request.method.value == "GET":
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return VERBS[request.method.value]


@pytest.mark.parametrize("operator_settings", [{"check_secrets": True}], indirect=True)
async def test_every_call_in_a_scenario_is_granted(
    cluster: ClusterEmulator, operator: Any, certificates: dict[str, Path]
) -> None:
    install_servicemonitor_crd(cluster)
    cluster.objects[CRDS, None, "servicemonitors.monitoring.coreos.com"] = servicemonitor_crd()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis-auth", "namespace": NAMESPACE},
        "data": {"password": base64.b64encode(b"pw").decode()},
    }
    await cluster.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json=secret)
    await create(cluster, "shop", samples.REDIS_SPEC)
    await create(cluster, "bad", samples.spec(samples.MEMORY_SPEC, defaultTTL="soon"))
    await eventually(lambda: ready(cluster, "shop"), what="Ready")
    await patch_spec(cluster, "shop", {"metrics": {"serviceMonitor": {"enabled": False}}})
    await eventually(lambda: ready(cluster, "shop", generation=2), what="Ready again")
    pod = samples.pod()
    pod["metadata"]["annotations"] = {"podcache.io/injected": "native"}
    pod["status"] = {"phase": "Running"}
    await cluster.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod)
    await eventually(
        lambda: (
            (get(cluster, "podcache.io/v1alpha1/cacheconfigs", "shop") or {})
            .get("status", {})
            .get("pods")
            == 1
        ),
        what="status.pods",
    )
    url = get(cluster, WEBHOOKS, "podcache.io", None)["webhooks"][0]["clientConfig"]["url"]
    connector = aiohttp.TCPConnector(ssl=webhook_ssl_context(certificates))
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.post(url, json=review(samples.pod(config="missing"))) as response,
    ):
        assert response.status == 200
    await cluster.delete(f"/apis/podcache.io/v1alpha1/namespaces/{NAMESPACE}/cacheconfigs/shop")

    # Only labelled pods and our own objects are listed and watched (server-side selectors).
    selectors = {
        request.resource.plural: request.params.get("labelSelector")
        for request in list(cluster)
        if request.resource is not None
        and verb(request) in ("list", "watch")
        and request.resource.plural in ("pods", "configmaps", "services")
    }
    assert selectors == {
        "pods": "podcache.io/config",
        "configmaps": "app.kubernetes.io/managed-by=podcache-operator",
        "services": "app.kubernetes.io/managed-by=podcache-operator",
    }

    granted = {(c.group, c.resource): set(c.verbs) for c in kubeapi.API_CALLS}
    used: set[tuple[str, str, str]] = set()
    for request in list(cluster):
        if (
            not request.headers.get("User-Agent", "").startswith("kopf/")
            or request.resource is None
        ):
            continue
        if request.resource.plural is None:
            continue  # API discovery, allowed to everyone
        plural = request.resource.plural + (
            f"/{request.subresource}" if request.subresource else ""
        )
        used.add((request.resource.group or "", plural, verb(request)))
    missing = sorted(call for call in used if call[2] not in granted.get(call[:2], set()))
    assert not missing, f"calls not in API_CALLS: {missing}"
    # The scenario did exercise the interesting calls.
    assert ("", "configmaps", "patch") in used
    assert ("monitoring.coreos.com", "servicemonitors", "delete") in used
    assert ("podcache.io", "cacheconfigs/status", "patch") in used
    assert ("", "secrets", "get") in used
