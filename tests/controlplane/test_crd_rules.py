"""The CacheConfig CRD as the apiserver sees it: defaults, CEL rules, patterns, columns.

Each rule and pattern is broken once and must be refused with 422 and its message; an
emulator accepts all of these.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from tests.controlplane.harness import (
    GROUP,
    PLURAL,
    VERSION,
    Installation,
    cache_config,
)
from tests.controlplane.harness import create_cache_config as create


def test_defaults_are_applied_on_create(installation: Installation, namespace: str) -> None:
    stored = create(installation.cluster, namespace, cache_config("plain", {"memory": {}}))
    spec = stored["spec"]
    assert spec["backend"] == "memory"
    assert spec["defaultTTL"] == "5m"
    assert spec["memory"] == {"maxItems": 100000, "maxBytes": "64Mi"}
    assert spec["locks"] == {"defaultTTL": "30s", "maxTTL": "5m"}
    assert spec["metrics"] == {
        "namespace": "lab",
        "serviceMonitor": {"enabled": True, "interval": "30s"},
    }
    assert spec["sidecar"] == {"logLevel": "info"}


def test_nested_defaults_of_redis(installation: Installation, namespace: str) -> None:
    spec = {
        "backend": "redis",
        "redis": {
            "url": "redis://redis:6379/0",
            "passwordSecretRef": {"name": "redis"},
            "tls": {"caSecretRef": {"name": "ca"}},
        },
    }
    stored = create(installation.cluster, namespace, cache_config("redis", spec))["spec"]
    assert stored["redis"]["timeouts"] == {"connect": "2s", "operation": "1s"}
    assert stored["redis"]["passwordSecretRef"]["key"] == "password"
    assert stored["redis"]["tls"] == {
        "enabled": False,
        "insecureSkipVerify": False,
        "caSecretRef": {"name": "ca", "key": "ca.crt"},
    }


ELECTION = {"name": "jobs", "leaseDuration": "1s", "renewInterval": "2s"}
INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    ("name-too-long", "n" * 55, {}, "must be at most 54 characters"),
    ("name-with-dot", "my.cache", {}, "metadata.name must consist of lower case letters"),
    ("redis-missing", "c", {"backend": "redis"}, "spec.redis is required when"),
    (
        "redis-on-memory",
        "c",
        {"backend": "memory", "redis": {"url": "redis://r:6379"}},
        "spec.redis must not be set when spec.backend is memory",
    ),
    (
        "redis-on-default-backend",
        "c",
        {"redis": {"url": "redis://r:6379"}},
        "spec.redis must not be set when spec.backend is memory",
    ),
    (
        "redis-two-topologies",
        "c",
        {"backend": "redis", "redis": {"url": "redis://r:6379", "cluster": {"nodes": ["a:1"]}}},
        "spec.redis needs exactly one of url, sentinel or cluster",
    ),
    (
        "redis-empty-key-prefix",  # issue 10, item 6: it shared every tenant's keys and locks
        "c",
        {"backend": "redis", "redis": {"url": "redis://r:6379", "keyPrefix": ""}},
        "spec.redis.keyPrefix",
    ),
    (
        "redis-username-with-space",  # Redis ACL user names have no white space
        "c",
        {"backend": "redis", "redis": {"url": "redis://r:6379", "username": "shop sessions"}},
        "spec.redis.username",
    ),
    (
        "redis-no-topology",
        "c",
        {"backend": "redis", "redis": {"keyPrefix": "x"}},
        "spec.redis needs exactly one of url, sentinel or cluster",
    ),
    (
        "lock-ttl-over-default-max",
        "c",
        {"locks": {"defaultTTL": "10m"}},
        "spec.locks.defaultTTL must not exceed spec.locks.maxTTL",
    ),
    (
        "lock-ttl-over-max",
        "c",
        {"locks": {"defaultTTL": "2m", "maxTTL": "1m"}},
        "spec.locks.defaultTTL must not exceed spec.locks.maxTTL",
    ),
    (
        "lease-shorter-than-renew",
        "c",
        {"leaderElection": {"elections": [ELECTION]}},
        "leaseDuration must be longer than renewInterval",
    ),
    (
        "lease-shorter-than-default-renew",
        "c",
        {"leaderElection": {"elections": [{"name": "jobs", "leaseDuration": "1s"}]}},
        "leaseDuration must be longer than renewInterval",
    ),
    ("bad-duration", "c", {"defaultTTL": "5 minutes"}, "spec.defaultTTL in body should match"),
    ("bad-backend", "c", {"backend": "disk"}, 'Unsupported value: "disk"'),
    (
        "bad-url",
        "c",
        {"backend": "redis", "redis": {"url": "http://r"}},
        "spec.redis.url in body should match",
    ),
    (
        "bad-sentinel-address",
        "c",
        {"backend": "redis", "redis": {"sentinel": {"masterName": "m", "addresses": ["host"]}}},
        "spec.redis.sentinel.addresses[0] in body should match",
    ),
    (
        "bad-max-bytes",
        "c",
        {"memory": {"maxBytes": "64MB"}},
        "spec.memory.maxBytes in body should match",
    ),
    (
        "zero-max-items",
        "c",
        {"memory": {"maxItems": 0}},
        "spec.memory.maxItems in body should be greater than or equal to 1",
    ),
    (
        "bad-metrics-namespace",
        "c",
        {"metrics": {"namespace": "1lab"}},
        "spec.metrics.namespace in body should match",
    ),
    # Valid for the sidecar, not for Prometheus: the ServiceMonitor would be refused.
    (
        "fractional-scrape-interval",
        "c",
        {"metrics": {"serviceMonitor": {"interval": "1.5s"}}},
        "spec.metrics.serviceMonitor.interval in body should match",
    ),
    ("bad-log-level", "c", {"sidecar": {"logLevel": "trace"}}, 'Unsupported value: "trace"'),
    (
        "bad-quantity",
        "c",
        {"sidecar": {"resources": {"limits": {"memory": "lots"}}}},
        "spec.sidecar.resources.limits.memory in body should match",
    ),
    (
        "bad-secret-key",
        "c",
        {
            "backend": "redis",
            "redis": {"url": "redis://r:1", "passwordSecretRef": {"name": "s", "key": "a/b"}},
        },
        "spec.redis.passwordSecretRef.key in body should match",
    ),
    (
        "bad-election-name",
        "c",
        {"leaderElection": {"elections": [{"name": "-x"}]}},
        "spec.leaderElection.elections[0].name in body should match",
    ),
]


@pytest.mark.parametrize(
    ("name", "spec", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_specs_are_refused_with_their_message(
    installation: Installation, namespace: str, name: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(client.ApiException) as refused:
        create(installation.cluster, namespace, cache_config(name, spec))
    assert refused.value.status == 422
    assert message in json.loads(refused.value.body)["message"]


def test_printer_columns(installation: Installation, namespace: str) -> None:
    create(installation.cluster, namespace, cache_config("shown", {}))
    table = json.loads(
        installation.cluster.plane.get(
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
            accept="application/json;as=Table;g=meta.k8s.io;v=v1",
        )
    )
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Backend",
        "Ready",
        "Pods",
        "Age",
    ]
    row = next(r for r in table["rows"] if r["cells"][0] == "shown")
    assert row["cells"][1] == "memory"
