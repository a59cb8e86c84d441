"""Checks of CacheConfig specs beyond the schema (pure, and Secret lookups via a fake fetcher).

Aspects: valid specs pass; each bad field is reported with the spec path to fix
(backend, durations, redis sources, URL credentials, lock TTL order, elections
timing and duplicates, memory bound vs the sidecar's memory limit, metrics
namespace, log level); referenced Secrets missing or lacking their key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from podcache_operator import settings, validation
from tests.operator import samples


def problems(spec: dict[str, Any]) -> list[str]:
    found = validation.check_spec(
        spec, namespace="shop", name="shop", sidecar=settings.SidecarSettings()
    )
    return [str(problem) for problem in found]


@pytest.mark.parametrize("spec", [samples.MEMORY_SPEC, samples.REDIS_SPEC, {}])
def test_valid_specs_pass(spec: dict[str, Any]) -> None:
    assert problems(spec) == []


def test_near_cache_with_cluster_passes() -> None:
    """Issue 13: the near cache on Cluster (one invalidation channel per primary)."""
    spec = {"backend": "redis", "redis": {
        "cluster": {"nodes": ["r-0:6379"]}, "nearCache": {"enabled": True}}}
    assert problems(spec) == []


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"backend": "memcached"}, "spec.backend", "unknown backend"),
        ({"defaultTTL": "5 minutes"}, "spec.defaultTTL", "invalid duration"),
        ({"redis": {}}, "spec.redis", "exactly one of url, sentinel or cluster"),
        (
            {"redis": {"url": "redis://a:1", "cluster": {"nodes": ["b:2"]}}},
            "spec.redis",
            "got url, cluster",
        ),
        ({"redis": {"url": "http://a:1"}}, "spec.redis.url", "unsupported URL"),
        ({"redis": {"url": "redis://:hunter2@a:1"}}, "spec.redis.url", "passwordSecretRef"),
        ({"redis": {"url": "redis://a:1?password=hunter2"}}, "spec.redis.url", "credentials"),
        ({"redis": {"url": "unix:///s.sock?password=hunter2"}}, "spec.redis.url", "credentials"),
        ({"redis": {"url": "redis://app@a:1"}}, "spec.redis.url", "a user name"),
        ({"redis": {"url": "http://app:hunter2@a:1"}}, "spec.redis.url", "unsupported URL"),
        ({"redis": {"url": "redis://a:1", "keyPrefix": ""}}, "spec.redis.keyPrefix", "empty"),
        ({"redis": {"url": "redis://a:1", "username": " "}}, "spec.redis.username", "white"),
        ({"redis": {"url": "redis://app@a:1"}}, "spec.redis.url", "spec.redis.username"),
        (
            {"redis": {"url": "redis://a:1", "timeouts": {"operation": "0s"}}},
            "spec.redis.timeouts.operation",
            "greater than zero",
        ),
        (
            {"locks": {"defaultTTL": "10m", "maxTTL": "1m"}},
            "spec.locks.defaultTTL",
            "must not exceed",
        ),
        (
            {
                "leaderElection": {
                    "elections": [{"name": "a", "leaseDuration": "2s", "renewInterval": "2s"}]
                }
            },
            "spec.leaderElection.elections[0].leaseDuration",
            "longer than renewInterval",
        ),
        (
            {"leaderElection": {"elections": [{"name": "a"}, {"name": "a"}]}},
            "spec.leaderElection.elections[1].name",
            "duplicate",
        ),
        ({"metrics": {"namespace": "my-app"}}, "spec.metrics.namespace", "must match"),
        (
            {"metrics": {"serviceMonitor": {"interval": "often"}}},
            "spec.metrics.serviceMonitor.interval",
            "invalid duration",
        ),
        (
            {"metrics": {"serviceMonitor": {"interval": "1.5s"}}},
            "spec.metrics.serviceMonitor.interval",
            "must be a Prometheus duration",
        ),
        ({"sidecar": {"logLevel": "trace"}}, "spec.sidecar.logLevel", "unknown level"),
        (
            {"redis": {"url": "redis://a:1", "nearCache": {"enabled": True, "maxTTL": "0s"}}},
            "spec.redis.nearCache.maxTTL",
            "greater than zero",
        ),
        (
            {"redis": {"url": "redis://a:1", "nearCache": {"enabled": True, "maxItems": 0}}},
            "spec.redis.nearCache.maxItems",
            ">= 1",
        ),
        (
            {"redis": {"url": "redis://a:1", "nearCache": {"maxBytes": "lots"}}},
            "spec.redis.nearCache.maxBytes",
            "",
        ),
    ],
)
def test_bad_redis_fields_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    found = problems(samples.spec(samples.REDIS_SPEC, **changes))
    assert any(problem.startswith(f"{field}: ") and words in problem for problem in found), found
    assert not any("hunter2" in problem for problem in found), found  # never echoed


def test_redis_settings_on_a_memory_backend() -> None:
    assert problems({"backend": "memory", "redis": {"url": "redis://a:1"}}) == [
        "spec.redis: must not be set when spec.backend is memory"
    ]


def test_redis_backend_without_redis() -> None:
    assert problems({"backend": "redis"}) == ["spec.redis: required when spec.backend is redis"]


def test_memory_cache_must_fit_under_the_memory_limit() -> None:
    spec = samples.spec(samples.MEMORY_SPEC, memory={"maxBytes": "1Gi"})
    (problem,) = problems(spec)
    assert problem.startswith(
        "spec.memory.maxBytes: 1Gi does not fit under the sidecar's memory limit 256Mi"
    )
    raised = samples.spec(spec, sidecar={"resources": {"limits": {"memory": "2Gi"}}})
    assert problems(raised) == []


def test_memory_cache_needs_room_for_the_baseline_and_bodies() -> None:
    """The issue's case: 200Mi under the default 256Mi limit reached 284-296 MiB RSS."""
    (problem,) = problems(samples.spec(samples.MEMORY_SPEC, memory={"maxBytes": "200Mi"}))
    assert problem.startswith("spec.memory.maxBytes: 200Mi does not fit under the sidecar's")
    assert "baseline (56Mi)" in problem
    assert "at most 146Mi fits" in problem
    assert problems(samples.spec(samples.MEMORY_SPEC, memory={"maxBytes": "146Mi"})) == []
    assert problems(samples.spec(samples.MEMORY_SPEC, memory={})) == []  # the default fits


def test_memory_quantity() -> None:
    (problem,) = problems(samples.spec(samples.MEMORY_SPEC, memory={"maxBytes": "lots"}))
    assert problem.startswith("spec.memory.maxBytes: expected a quantity")


def test_sidecar_parser_errors_are_mapped_to_spec_fields() -> None:
    assert validation.spec_field("config.url") == "spec.redis.url"
    assert validation.spec_field("config.maxItems") == "spec.memory.maxItems"
    assert validation.spec_field("elections[2].name") == "spec.leaderElection.elections[2].name"
    assert validation.spec_field("logLevel") == "spec.sidecar.logLevel"
    assert validation.spec_field("locks.maxTTL") == "spec.locks.maxTTL"


def test_problems_reported_by_the_sidecar_parser() -> None:
    spec = samples.spec(samples.MEMORY_SPEC, memory={"maxItems": 0})
    assert problems(spec) == ["spec.memory.maxItems: must be greater than zero, got 0"]


class TestSecrets:
    SPEC = samples.spec(
        samples.REDIS_SPEC,
        redis={
            "url": "rediss://r:6380",
            "passwordSecretRef": {"name": "auth"},
            "tls": {"enabled": True, "caSecretRef": {"name": "ca", "key": "bundle.pem"}},
        },
    )

    @staticmethod
    def fetcher(secrets: dict[str, Mapping[str, Any]]) -> validation.SecretFetcher:
        async def fetch(name: str) -> Mapping[str, Any] | None:
            return secrets.get(name)

        return fetch

    async def test_present(self) -> None:
        fetch = self.fetcher(
            {"auth": {"data": {"password": "eA=="}}, "ca": {"data": {"bundle.pem": "eA=="}}}
        )
        assert await validation.check_secrets(self.SPEC, fetch=fetch) == []

    async def test_missing_secret(self) -> None:
        fetch = self.fetcher({"ca": {"data": {"bundle.pem": "eA=="}}})
        found = await validation.check_secrets(self.SPEC, fetch=fetch)
        assert [str(p) for p in found] == ["spec.redis.passwordSecretRef: Secret 'auth' not found"]

    async def test_missing_key(self) -> None:
        fetch = self.fetcher(
            {"auth": {"data": {"password": "eA=="}}, "ca": {"data": {"ca.crt": "eA=="}}}
        )
        found = await validation.check_secrets(self.SPEC, fetch=fetch)
        assert [str(p) for p in found] == [
            "spec.redis.tls.caSecretRef: Secret 'ca' has no key 'bundle.pem'"
        ]

    async def test_memory_backend_references_nothing(self) -> None:
        assert validation.secret_refs(samples.MEMORY_SPEC) == []


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ({"requests": {"cpu": "1"}, "limits": {"cpu": "500m"}}, "cpu: request 1 must be"),
        ({"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}}, "memory: request 1Gi"),
        ({"requests": {"cpu": "2e3"}, "limits": {"cpu": "1"}}, "cpu: request 2e3 must"),
    ],
)
def test_sidecar_requests_over_limits_are_refused(resources: dict[str, Any], words: str) -> None:
    """The apiserver refuses such a container: every pod selecting the CacheConfig would be."""
    spec = samples.spec(samples.MEMORY_SPEC, sidecar={"resources": resources})
    found = problems(spec)
    assert any(p.startswith("spec.sidecar.resources: ") and words in p for p in found), found


def test_sidecar_requests_equal_to_limits_pass() -> None:
    resources = {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "0.5", "memory": "268435456"},
    }
    assert problems(samples.spec(samples.MEMORY_SPEC, sidecar={"resources": resources})) == []


def test_operator_defaults_over_limits_are_reported() -> None:
    found = validation.check_spec(
        samples.MEMORY_SPEC,
        namespace="shop",
        name="shop",
        sidecar=settings.SidecarSettings(memory_request="1Gi", memory_limit="512Mi"),
    )
    assert any("the operator's default sidecar resources" in str(p) for p in found), found
