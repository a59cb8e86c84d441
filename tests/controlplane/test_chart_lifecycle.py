"""The chart as a user installs it with helm, on a real apiserver of its own.

Order matters within this module (one release on one cluster): install, upgrade,
uninstall. The apiserver decides here what an emulator cannot: CRD structural and CEL
checks (including CEL against every `default:`), RBAC objects, Helm's `lookup`.
"""

from __future__ import annotations

import base64

import pytest
from kubernetes.dynamic.exceptions import NotFoundError

from tests.controlplane import objects
from tests.controlplane.harness import (
    RELEASE,
    RELEASE_NAMESPACE,
    Cluster,
    wait_crds_established,
)

CRDS = ("cacheconfigs.podcache.io", "clusterkopfpeerings.kopf.dev")
SECRET = f"{RELEASE}-webhook-tls"


def webhook_secret_and_bundle(cluster: Cluster) -> tuple[dict[str, str], str]:
    secret = cluster.core.read_namespaced_secret(SECRET, RELEASE_NAMESPACE)
    hook = cluster.admission.read_mutating_webhook_configuration(RELEASE).webhooks[0]
    return dict(secret.data), hook.client_config.ca_bundle


def test_the_chart_installs_unmodified(fresh_cluster: Cluster) -> None:
    """Regression: the apiserver refused the CRD (a CEL rule failed on `locks: {default: {}}`)."""
    fresh_cluster.helm.install(RELEASE, RELEASE_NAMESPACE)
    wait_crds_established(fresh_cluster, *CRDS)
    manifest = fresh_cluster.helm.manifest(RELEASE, RELEASE_NAMESPACE)
    assert len(manifest) >= 10
    for doc in manifest:
        stored = objects.read(fresh_cluster.api, doc)
        assert stored.metadata.name == doc["metadata"]["name"]
    assert fresh_cluster.helm.status(RELEASE, RELEASE_NAMESPACE)["info"]["status"] == "deployed"


def test_upgrade_keeps_the_webhook_certificate(fresh_cluster: Cluster) -> None:
    """Helm's `lookup` (live only on a real apiserver) reuses the Secret on upgrade."""
    secret_before, bundle_before = webhook_secret_and_bundle(fresh_cluster)
    fresh_cluster.helm.upgrade(RELEASE, RELEASE_NAMESPACE, "operator.logLevel=debug")
    secret_after, bundle_after = webhook_secret_and_bundle(fresh_cluster)
    assert secret_after == secret_before
    assert bundle_after == bundle_before
    assert base64.b64decode(bundle_after) == base64.b64decode(secret_after["ca.crt"])
    deployment = fresh_cluster.apps.read_namespaced_deployment(RELEASE, RELEASE_NAMESPACE)
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["PODCACHE_LOG_LEVEL"] == "debug"


def test_uninstall_keeps_the_crds_and_removes_the_rest(fresh_cluster: Cluster) -> None:
    manifest = fresh_cluster.helm.manifest(RELEASE, RELEASE_NAMESPACE)
    fresh_cluster.helm.uninstall(RELEASE, RELEASE_NAMESPACE)
    for name in CRDS:
        assert fresh_cluster.extensions.read_custom_resource_definition(name).metadata.name
    gone = [doc for doc in manifest if doc["kind"] != "CustomResourceDefinition"]
    for doc in gone:
        with pytest.raises(NotFoundError):
            objects.read(fresh_cluster.api, doc)
