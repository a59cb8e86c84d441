"""The chart's RBAC grants exactly the API calls the operator makes.

Aspects:
- the ClusterRole's (group, resource, verb) triples equal the operator's own list,
  ``podcache_operator.kubeapi.API_CALLS``, minus the calls the chart's settings turn
  off (each exclusion is tied to the rendered setting that turns it off, and must
  still be in API_CALLS, so a stale exclusion fails);
- no wildcards; the binding gives the role to the operator's ServiceAccount;
- no access to Secrets by default; operator.checkSecrets=true grants exactly get;
- rbac.create=false renders no RBAC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from tests.deploy import chart

kubeapi = pytest.importorskip("podcache_operator.kubeapi")

Triple = tuple[str, str, str]

# (group, resource) → (why it is not granted, predicate on the rendered operator
# container that must hold for the exclusion to be valid).
EXCLUDED: dict[tuple[str, str], tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): (
        "the chart owns the webhook configuration",
        lambda operator: chart.env_of(operator).get("PODCACHE_WEBHOOK_MANAGED") == "",
    ),
    ("kopf.dev", "kopfpeerings"): (
        "namespaced peering; the operator runs cluster-wide",
        lambda operator: not _namespace_restricted(operator),
    ),
    ("", "namespaces"): (
        "kopf only lists namespaces for --namespace patterns; cluster-wide here",
        lambda operator: not _namespace_restricted(operator),
    ),
    ("", "secrets"): (
        "the Secret existence check is opt-in (operator.checkSecrets)",
        lambda operator: chart.env_of(operator).get("PODCACHE_CHECK_SECRETS") == "false",
    ),
    ("", "pods/eviction"): (
        "restarting pods without the sidecar is opt-in (operator.restartPodsWithoutSidecar)",
        lambda operator: chart.env_of(operator).get("PODCACHE_RESTART_PODS_WITHOUT_SIDECAR")
        == "false",
    ),
}


def _namespace_restricted(operator: Mapping[str, Any]) -> bool:
    """podcache-operator -n/--namespace: kopf then peers in KopfPeerings and lists namespaces."""
    words = [*operator.get("command", []), *operator.get("args", [])]
    return any(w in ("-n", "--namespace") or w.startswith("--namespace=") for w in words)


def _field(call: Any, *names: str) -> Any:
    """API_CALLS entries are read by name (NamedTuple, dataclass or mapping)."""
    for name in names:
        if isinstance(call, Mapping) and name in call:
            return call[name]
        if hasattr(call, name):
            return getattr(call, name)
    raise AssertionError(f"API_CALLS entry {call!r} has none of {names}")


def _operator_triples() -> set[Triple]:
    triples: set[Triple] = set()
    for call in kubeapi.API_CALLS:
        group = _field(call, "group", "api_group")
        resource = _field(call, "resource", "plural", "resources")
        verbs = _field(call, "verbs", "verb")
        for verb in [verbs] if isinstance(verbs, str) else verbs:
            triples.add((group, resource, verb))
    return triples


def _rule_triples(rules: Iterable[Mapping[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _granted(release: chart.Release) -> set[Triple]:
    rules = [
        rule
        for kind in ("ClusterRole", "Role")
        for role in release.of_kind(kind)
        for rule in role["rules"]
    ]
    return _rule_triples(rules)


def test_api_calls_is_not_empty() -> None:
    assert len(kubeapi.API_CALLS) >= 5


def test_rbac_equals_operator_api_calls(default_release: chart.Release) -> None:
    operator = chart.container(default_release.one("Deployment"), "operator")
    needed = _operator_triples()
    for (group, resource), (reason, holds) in EXCLUDED.items():
        assert any(t[:2] == (group, resource) for t in needed), (
            f"stale exclusion {group}/{resource}: the operator no longer calls it"
        )
        assert holds(operator), f"{group}/{resource} is not granted ({reason}), but it is needed"
        needed = {t for t in needed if t[:2] != (group, resource)}
    granted = _granted(default_release)
    assert sorted(needed - granted) == [], "calls the operator makes but may not"
    assert sorted(granted - needed) == [], "grants the operator never uses"


def test_no_wildcards(default_release: chart.Release) -> None:
    for group, resource, verb in _granted(default_release):
        assert "*" not in (group, resource, verb)


def test_binding_targets_the_operator_service_account(default_release: chart.Release) -> None:
    binding = default_release.one("ClusterRoleBinding")
    role = default_release.one("ClusterRole")
    account = default_release.one("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": chart.NAMESPACE,
        }
    ]
    pod = default_release.one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    release = chart.render({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & release.kinds()


def test_no_secret_access_by_default(default_release: chart.Release) -> None:
    """Regression (issue 9, defect 8): get on Secrets in every namespace reads every Helm
    release's values; the existence check it served is opt-in."""
    assert not [t for t in _granted(default_release) if t[1] == "secrets"]


def test_secret_check_grants_exactly_get_on_secrets() -> None:
    release = chart.render({"operator": {"checkSecrets": True}})
    operator = chart.container(release.one("Deployment"), "operator")
    assert chart.env_of(operator)["PODCACHE_CHECK_SECRETS"] == "true"
    assert [t for t in _granted(release) if t[1] == "secrets"] == [("", "secrets", "get")]


def test_no_eviction_by_default(default_release: chart.Release) -> None:
    assert not [t for t in _granted(default_release) if t[1] == "pods/eviction"]


def test_restarting_bare_pods_grants_exactly_eviction() -> None:
    release = chart.render({"operator": {"restartPodsWithoutSidecar": True}})
    operator = chart.container(release.one("Deployment"), "operator")
    assert chart.env_of(operator)["PODCACHE_RESTART_PODS_WITHOUT_SIDECAR"] == "true"
    assert [t for t in _granted(release) if t[1] == "pods/eviction"] == [
        ("", "pods/eviction", "create")
    ]
