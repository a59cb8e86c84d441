"""The chart rendered against a cluster: Helm's ``lookup`` keeps the webhook TLS.

The chart is rendered cluster-aware (helm-python-sdk's ``Config.render``) against the
KMock Kubernetes emulator serving Secrets, so ``lookup`` really asks an API server.

Aspects:
- first install (no Secret yet): a CA and a serving certificate are generated, and the
  webhook's caBundle is that CA;
- upgrade with the Secret in the cluster: the same key pair and CA are rendered again,
  so running operator pods and the caBundle stay in step;
- a Secret missing one of its keys is not reused: a complete new pair is generated.
"""

from __future__ import annotations

import asyncio
from typing import Any

import helm_python as helm
import kmock
import pytest
import yaml

from tests.deploy import chart

SECRETS = "v1/secrets"
SECRET_NAME = "podcache-webhook-tls"


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": kmock.KubernetesEmulator}


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    kmock.resources[SECRETS] = kmock.ResourceInfo(
        kind="Secret",
        singular="secret",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
    )
    return kmock


async def _render(
    cluster: kmock.KubernetesEmulator,
    *,
    upgrade: bool,
    values: dict[str, Any] | None = None,
) -> chart.Release:
    kubeconfig = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(cluster.url).rstrip("/")}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
        }
    )

    def render() -> dict[str, str]:
        with (
            helm.Config(kubeconfig_content=kubeconfig, namespace=chart.NAMESPACE) as config,
            helm.Chart.load(chart.CHART_DIR) as loaded,
        ):
            return config.render(
                loaded,
                values or {},
                name=chart.RELEASE,
                namespace=chart.NAMESPACE,
                is_install=not upgrade,
                is_upgrade=upgrade,
            )

    # Helm blocks in native code: run it off the loop that serves the emulator.
    manifests = await asyncio.wait_for(asyncio.to_thread(render), timeout=60)
    objects = [
        chart.Rendered(template=path, obj=document)
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for document in yaml.safe_load_all(text)
        if document
    ]
    notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
    return chart.Release(objects=objects, notes=notes)


def _tls(release: chart.Release) -> tuple[dict[str, str], str]:
    secret = release.one("Secret")
    (hook,) = release.one("MutatingWebhookConfiguration")["webhooks"]
    return secret["data"], hook["clientConfig"]["caBundle"]


async def test_install_generates_and_upgrade_reuses(cluster: kmock.KubernetesEmulator) -> None:
    installed, ca_bundle = _tls(await _render(cluster, upgrade=False))
    assert set(installed) == {"ca.crt", "tls.crt", "tls.key"}
    assert ca_bundle == installed["ca.crt"]

    cluster.objects[SECRETS, chart.NAMESPACE, SECRET_NAME] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET_NAME, "namespace": chart.NAMESPACE},
        "data": installed,
    }
    upgraded, upgraded_bundle = _tls(await _render(cluster, upgrade=True))
    assert upgraded == installed
    assert upgraded_bundle == installed["ca.crt"]


async def test_incomplete_secret_is_replaced(cluster: kmock.KubernetesEmulator) -> None:
    first, _ = _tls(await _render(cluster, upgrade=False))
    cluster.objects[SECRETS, chart.NAMESPACE, SECRET_NAME] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET_NAME, "namespace": chart.NAMESPACE},
        "data": {"tls.crt": first["tls.crt"], "tls.key": first["tls.key"]},
    }
    replaced, ca_bundle = _tls(await _render(cluster, upgrade=True))
    assert replaced["tls.key"] != first["tls.key"]
    assert ca_bundle == replaced["ca.crt"]
