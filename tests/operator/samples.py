"""Sample CacheConfig specs and pods shared by the operator tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CRD_PATH = Path(__file__).parents[2] / "charts/podcache/files/crds/cacheconfigs.podcache.io.yaml"

MEMORY_SPEC: dict[str, Any] = {
    "backend": "memory",
    "defaultTTL": "10m",
    "memory": {"maxItems": 500, "maxBytes": "32Mi"},
}
REDIS_SPEC: dict[str, Any] = {
    "backend": "redis",
    "defaultTTL": "1m",
    "redis": {
        "url": "redis://redis.shop.svc:6379/0",
        "passwordSecretRef": {"name": "redis-auth", "key": "password"},
        "keyPrefix": "shop/sessions:",
        "timeouts": {"connect": "3s", "operation": "500ms"},
    },
    "locks": {"defaultTTL": "10s", "maxTTL": "1m"},
    "leaderElection": {
        "elections": [{"name": "scheduler", "leaseDuration": "15s", "renewInterval": "2s"}]
    },
    "metrics": {
        "namespace": "shop",
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
    },
    "sidecar": {"logLevel": "debug"},
}


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))


def spec(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with top-level keys replaced."""
    result = copy.deepcopy(base)
    result.update(copy.deepcopy(changes))
    return result


def pod(
    *,
    containers: int = 1,
    init_containers: int = 0,
    volumes: bool = False,
    name: str = "app-0",
    config: str = "shop",
) -> dict[str, Any]:
    """A pod as kube-apiserver sends it to a mutating webhook (defaults applied, no status)."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"podcache.io/config": config}},
        "spec": {
            "containers": [
                {
                    "name": f"app{index}",
                    "image": "nginx:1.27",
                    "ports": [{"containerPort": 8080 + index}],
                }
                for index in range(containers)
            ],
        },
    }
    if init_containers:
        body["spec"]["initContainers"] = [
            {"name": f"init{index}", "image": "busybox:1.36", "command": ["true"]}
            for index in range(init_containers)
        ]
    if volumes:
        body["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
        body["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        body["spec"]["containers"][0]["env"] = [{"name": "MODE", "value": "prod"}]
    return body
