"""The CacheConfig CRD as shipped in the chart (``charts/podcache/files/crds``).

Aspects: valid apiextensions/v1 object; names, scope, short name, status
subresource, printer columns; spec/status fields the operator reads exist with the
defaults the operator assumes; CEL rules present for cross-field checks; duration
and quantity patterns accept and refuse what the operator's parsers do.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from podcache import durations
from podcache_operator import rendering
from tests.operator import samples

CRD = samples.load_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]["properties"]


def prop(*path: str) -> dict[str, Any]:
    node = SCHEMA["properties"]["spec"]
    for key in path:
        node = node["properties"][key] if key != "[]" else node["items"]
    return node  # type: ignore[no-any-return]


def test_is_a_valid_crd() -> None:
    kubernetes_validate.validate(CRD, "1.30", strict=True)


def test_names_and_scope() -> None:
    assert CRD["metadata"]["name"] == "cacheconfigs.podcache.io"
    assert CRD["spec"]["group"] == "podcache.io"
    assert CRD["spec"]["scope"] == "Namespaced"
    assert CRD["spec"]["names"]["kind"] == "CacheConfig"
    assert CRD["spec"]["names"]["shortNames"] == ["pcc"]
    assert VERSION["name"] == "v1alpha1"
    assert VERSION["served"]
    assert VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns == {
        "Backend": ".spec.backend",
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Pods": ".status.pods",
        "Age": ".metadata.creationTimestamp",
    }


@pytest.mark.parametrize(
    ("path", "default"),
    [
        (("backend",), "memory"),
        (("defaultTTL",), rendering.DEFAULT_TTL),
        (("memory", "maxItems"), rendering.DEFAULT_MAX_ITEMS),
        (("memory", "maxBytes"), rendering.DEFAULT_MAX_BYTES),
        (("redis", "timeouts", "connect"), rendering.DEFAULT_CONNECT_TIMEOUT),
        (("redis", "timeouts", "operation"), rendering.DEFAULT_OPERATION_TIMEOUT),
        (("redis", "nearCache", "enabled"), False),
        (("redis", "nearCache", "maxItems"), rendering.DEFAULT_NEAR_MAX_ITEMS),
        (("redis", "nearCache", "maxBytes"), rendering.DEFAULT_NEAR_MAX_BYTES),
        (("redis", "nearCache", "maxTTL"), rendering.DEFAULT_NEAR_MAX_TTL),
        (("locks", "defaultTTL"), rendering.DEFAULT_LOCK_TTL),
        (("locks", "maxTTL"), rendering.DEFAULT_LOCK_MAX_TTL),
        (("leaderElection", "elections", "[]", "leaseDuration"), rendering.DEFAULT_LEASE_DURATION),
        (("leaderElection", "elections", "[]", "renewInterval"), rendering.DEFAULT_RENEW_INTERVAL),
        (("metrics", "namespace"), rendering.DEFAULT_METRICS_NAMESPACE),
        (("metrics", "serviceMonitor", "interval"), rendering.DEFAULT_SCRAPE_INTERVAL),
        (("metrics", "serviceMonitor", "enabled"), True),
        (("sidecar", "logLevel"), rendering.DEFAULT_LOG_LEVEL),
        (("redis", "passwordSecretRef", "key"), "password"),
        (("redis", "tls", "caSecretRef", "key"), "ca.crt"),
    ],
)
def test_defaults_match_the_operator(path: tuple[str, ...], default: object) -> None:
    assert prop(*path)["default"] == default


def test_enums() -> None:
    assert prop("backend")["enum"] == ["memory", "redis"]
    assert prop("sidecar", "logLevel")["enum"] == ["debug", "info", "warning", "error"]


def test_cel_rules_cover_cross_field_checks() -> None:
    rules = [r["rule"] for r in prop("redis")["x-kubernetes-validations"]]
    assert any(
        "has(self.url)" in r and "has(self.sentinel)" in r and "has(self.cluster)" in r
        for r in rules
    )
    # The near cache works with every topology (issue 13): no rule ties it to one.
    assert not any("has(self.nearCache)" in r for r in rules)
    spec_rules = [r["rule"] for r in SCHEMA["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("has(self.redis)" in r and "'redis'" in r for r in spec_rules)
    election = prop("leaderElection", "elections", "[]")["x-kubernetes-validations"]
    assert any("duration(self.leaseDuration) > duration(self.renewInterval)" in r["rule"]
               for r in election)
    locks = prop("locks")["x-kubernetes-validations"]
    assert any("duration(self.defaultTTL) <= duration(self.maxTTL)" in r["rule"] for r in locks)


def _schemas_with_rules(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path or ".", node)] if node.get("x-kubernetes-validations") else []
    for key, child in (node.get("properties") or {}).items():
        found += _schemas_with_rules(child, f"{path}.{key}")
    if "items" in node:
        found += _schemas_with_rules(node["items"], f"{path}[]")
    return found


RULED = _schemas_with_rules(SCHEMA)


@pytest.mark.parametrize(("path", "schema"), RULED, ids=[path for path, _ in RULED])
def test_cel_rules_guard_optional_fields_with_has(path: str, schema: dict[str, Any]) -> None:
    """The apiserver evaluates each rule against every `default:` too (`locks: {default: {}}`),
    without filling that default's own field defaults: an unguarded optional field there
    makes the apiserver refuse the whole CRD ("no such key")."""
    required = set(schema.get("required", ())) | {"metadata"}
    for validation in schema["x-kubernetes-validations"]:
        rule = validation["rule"]
        for field in set(re.findall(r"\bself\.([A-Za-z_]\w*)", rule)) - required:
            assert f"has(self.{field})" in rule, f"{path}: {rule!r} reads self.{field} unguarded"


@pytest.mark.parametrize("text", ["300ms", "30s", "5m", "1h30m", "1.5h", "0", "10us"])
def test_duration_pattern_accepts_what_the_sidecar_parses(text: str) -> None:
    assert re.fullmatch(prop("defaultTTL")["pattern"], text)
    durations.parse_duration(text)


@pytest.mark.parametrize("text", ["5 minutes", "-1s", "1d", "", "m5"])
def test_duration_pattern_refuses(text: str) -> None:
    assert not re.fullmatch(prop("defaultTTL")["pattern"], text)


@pytest.mark.parametrize("text", ["64Mi", "1G", "1000", "1.5Gi"])
def test_quantity_pattern(text: str) -> None:
    assert re.fullmatch(prop("memory", "maxBytes")["pattern"], text)
    rendering.parse_quantity(text, field="f")


def test_status_schema() -> None:
    status = SCHEMA["properties"]["status"]["properties"]
    assert set(status) == {
        "observedGeneration",
        "configHash",
        "pods",
        "podsWithoutSidecar",
        "conditions",
        "kopf",
    }
    # Kopf's diff base and progress: free-form, kept by the apiserver (not pruned).
    assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    condition = status["conditions"]["items"]
    assert set(condition["required"]) == {
        "type",
        "status",
        "lastTransitionTime",
        "reason",
        "message",
    }
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_spec_fields() -> None:
    assert set(SPEC) == {
        "backend",
        "defaultTTL",
        "allowPersist",
        "memory",
        "redis",
        "locks",
        "leaderElection",
        "metrics",
        "sidecar",
    }
    assert set(prop("redis")["properties"]) == {
        "url",
        "sentinel",
        "cluster",
        "username",
        "passwordSecretRef",
        "tls",
        "keyPrefix",
        "waitPoolSize",
        "timeouts",
        "nearCache",
    }
    assert set(prop("redis", "nearCache")["properties"]) == {
        "enabled", "maxItems", "maxBytes", "maxTTL",
    }
    assert set(prop("sidecar")["properties"]) == {
        "image",
        "resources",
        "logLevel",
        "native",
        "redisSocket",
        "maxWatchStreams",
    }
    assert set(prop("metrics", "serviceMonitor")["properties"]) == {"enabled", "interval", "labels"}
