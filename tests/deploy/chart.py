"""Rendering the chart for the deploy tests: helm-python-sdk (Helm's own engine, offline).

``render`` returns the parsed objects of one release, each tagged with the template
it came from; ``VALUE_SETS`` are the configurations every structural test runs on.
Nothing here contacts a cluster: Helm's ``lookup`` returns nothing offline, so the
self-signed webhook mode generates a fresh CA on every render.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native as helm_native

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "podcache"
CRD_FILE = CHART_DIR / "files" / "crds" / "cacheconfigs.podcache.io.yaml"
MANIFESTS_DIR = ROOT / "manifests"
EXAMPLES_DIR = MANIFESTS_DIR / "examples"
RELEASE = "podcache"
NAMESPACE = "podcache-system"

# The configurations the structural tests render: defaults and one per feature area.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ha": {
        "operator": {
            "replicaCount": 3,
            "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": None},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "podcache"}},
                }
            ],
        },
        "webhook": {"failurePolicy": "Fail"},
    },
    "cert-manager": {
        "webhook": {"selfSigned": {"enabled": False}, "certManager": {"enabled": True}}
    },
    "cert-manager-issuer": {
        "webhook": {
            "selfSigned": {"enabled": False},
            "certManager": {
                "enabled": True,
                "issuerRef": {
                    "name": "corp-ca",
                    "kind": "ClusterIssuer",
                    "group": "cert-manager.io",
                },
            },
        }
    },
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "podcache"}},
        }
    },
    "no-crds": {"crds": {"enabled": False}},
    "private-registry": {
        "image": {"registry": "registry.corp.example", "tag": "2.0.0", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "sidecar": {"imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}]},
    },
    "legacy-sidecar": {
        "sidecar": {"native": False},
        "operator": {
            "resources": {
                "requests": {"cpu": "50m", "memory": "96Mi"},
                "limits": {"memory": "256Mi"},
            }
        },
    },
}


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One object of a rendered release."""

    template: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


@dataclasses.dataclass(frozen=True)
class Release:
    """A rendered release: its objects and its NOTES.txt."""

    objects: list[Rendered]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [item.obj for item in self.objects if item.kind == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {item.kind for item in self.objects}


def render(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    kube_version: str | None = None,
) -> Release:
    """Render the chart as an install of release ``podcache``; ``kube_version`` sets
    ``.Capabilities.KubeVersion`` as ``helm template --kube-version`` does."""
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(dict(values or {}))
        if kube_version is None:
            manifests = chart.render(
                dict(values or {}), name=RELEASE, namespace=namespace, is_install=True
            )
        else:
            # Chart.render does not pass kube_version on yet; the C ABI takes it.
            options = {
                "name": RELEASE,
                "namespace": namespace,
                "is_install": True,
                "kube_version": kube_version,
            }
            manifests = json.loads(
                helm_native.call_string(
                    "helm_render", chart._raw(), json.dumps(dict(values or {})), json.dumps(options)
                )
            )
    objects: list[Rendered] = []
    notes = ""
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            notes = manifests[path]
            continue
        for document in yaml.safe_load_all(manifests[path]):
            if document:
                objects.append(Rendered(template=path.split("/", 1)[1], obj=document))
    return Release(objects=objects, notes=notes)


def load_yaml_documents(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as stream:
        for document in yaml.safe_load_all(stream):
            if document:
                yield document


def container(deployment: Mapping[str, Any], name: str) -> dict[str, Any]:
    for item in deployment["spec"]["template"]["spec"]["containers"]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no container {name!r}")


def env_of(container_spec: Mapping[str, Any]) -> dict[str, Any]:
    """name → value (or the valueFrom mapping)."""
    return {
        item["name"]: item.get("value", item.get("valueFrom")) for item in container_spec["env"]
    }
