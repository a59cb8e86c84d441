"""Every rendered or shipped object is valid Kubernetes, for more than one version.

Aspects:
- each object of every value set passes kubernetes-validate (strict: unknown fields
  fail) for the oldest version the chart admits (1.25), the first with native
  sidecars on by default (1.29) and the newest schema available;
- kinds that come from other projects' CRDs (ServiceMonitor, Issuer, Certificate) have
  no schema in kubernetes-validate: they are checked for
  their apiVersion and the fields we rely on, and skipped by kind only;
- the plain manifests validate the same way;
- the examples: Kubernetes kinds by kubernetes-validate, CacheConfigs by our CRD the
  way the API server applies it (defaulting, openAPIV3Schema through jsonschema, the
  CEL rules through cel-python) and by the operator's own spec checks;
- malformed specs are refused by the schema; specs breaking a CEL rule are refused
  by that rule (with its message) and by the operator's checks alike;
- the demo pod after the operator's injection (with the sidecar defaults the chart
  passes, native sidecar or regular container) is a valid Pod on every version.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy import chart, crd

# The oldest version the chart's kubeVersion admits, the first with native sidecars on
# by default, and the newest schema kubernetes-validate ships.
OLDEST = "1.25.0"
NATIVE_SIDECARS = "1.29.0"
K8S_VERSIONS = (OLDEST, NATIVE_SIDECARS, kubernetes_validate.utils.latest_version())

# Kinds of CRDs that other projects own; kubernetes-validate has no schema for them.
FOREIGN_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "Issuer": "cert-manager.io/v1",
    "Certificate": "cert-manager.io/v1",
}


def _validate(obj: dict[str, Any], version: str) -> None:
    if obj["kind"] == "CacheConfig":
        _validate_cacheconfig(obj)
        return
    if obj["kind"] in FOREIGN_KINDS:
        assert obj["apiVersion"] == FOREIGN_KINDS[obj["kind"]]
        assert obj["metadata"]["name"]
        return
    kubernetes_validate.validate(obj, version, strict=True)


def _operator_problems(obj: dict[str, Any]) -> list[str]:
    validation = pytest.importorskip("podcache_operator.validation")
    settings = pytest.importorskip("podcache_operator.settings")
    problems = validation.check_spec(
        obj["spec"],
        namespace=obj["metadata"].get("namespace", "default"),
        name=obj["metadata"]["name"],
        sidecar=settings.SidecarSettings(),
    )
    return [str(problem) for problem in problems]


def _validate_cacheconfig(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "podcache.io/v1alpha1"
    assert crd.validate(obj) == []
    assert _operator_problems(obj) == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(chart.VALUE_SETS))
def test_rendered_objects_are_valid(
    releases: dict[str, chart.Release], value_set: str, version: str
) -> None:
    for item in releases[value_set].objects:
        try:
            _validate(item.obj, version)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{item.template}: {item.kind}/{item.name} on {version}: {exc.message}")


def test_foreign_kinds_are_really_rendered(releases: dict[str, chart.Release]) -> None:
    """The skip list is not dead weight: each kind appears in some value set."""
    rendered = set().union(*(release.kinds() for release in releases.values()))
    assert set(FOREIGN_KINDS) <= rendered


def _shipped_files() -> list[Path]:
    return sorted(chart.MANIFESTS_DIR.glob("*.yaml")) + sorted(chart.EXAMPLES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _shipped_files(), ids=lambda p: p.name)
def test_shipped_manifests_are_valid(path: Path, version: str) -> None:
    documents = list(chart.load_yaml_documents(path))
    assert documents, f"{path} is empty"
    for obj in documents:
        _validate(obj, version)


def test_examples_cover_every_backend_shape() -> None:
    configs = [
        obj
        for path in sorted(chart.EXAMPLES_DIR.glob("*.yaml"))
        for obj in chart.load_yaml_documents(path)
        if obj["kind"] == "CacheConfig"
    ]
    shapes = {(c["spec"]["backend"], next(iter(c["spec"].get("redis", {"": 0})))) for c in configs}
    assert {("memory", ""), ("redis", "url"), ("redis", "sentinel")} <= shapes
    secrets = {
        obj["metadata"]["name"]
        for path in chart.EXAMPLES_DIR.glob("*.yaml")
        for obj in chart.load_yaml_documents(path)
        if obj["kind"] == "Secret"
    }
    for config in configs:
        ref = config["spec"].get("redis", {}).get("passwordSecretRef")
        if ref:
            assert ref["name"] in secrets


def test_demo_deployment_uses_the_socket() -> None:
    (deployment,) = chart.load_yaml_documents(chart.EXAMPLES_DIR / "demo-deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    configs = {
        obj["metadata"]["name"]
        for path in chart.EXAMPLES_DIR.glob("*.yaml")
        for obj in chart.load_yaml_documents(path)
        if obj["kind"] == "CacheConfig"
    }
    assert labels["podcache.io/config"] in configs
    script = " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert '--unix-socket "$PODCACHE_SOCKET"' in script


def _memory_example() -> dict[str, Any]:
    (config,) = chart.load_yaml_documents(chart.EXAMPLES_DIR / "memory-cacheconfig.yaml")
    return config


def _redis_example() -> dict[str, Any]:
    path = chart.EXAMPLES_DIR / "redis-cacheconfig.yaml"
    return next(o for o in chart.load_yaml_documents(path) if o["kind"] == "CacheConfig")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["spec"].update(backend="memcached"),
        lambda c: c["spec"].update(defaultTTL="five minutes"),
        lambda c: c["spec"].update(replicas=3),
        lambda c: c["spec"]["redis"]["passwordSecretRef"].pop("name"),
        lambda c: c["spec"].update(allowPersist="yes"),
    ],
    ids=["unknown-backend", "bad-duration", "unknown-field", "secret-ref-without-name",
         "allow-persist-not-a-boolean"],
)
def test_schema_refuses_malformed_specs(mutate: Any) -> None:
    config = copy.deepcopy(_redis_example())
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        crd.validate(config)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["spec"]["redis"].update(
                sentinel={"masterName": "m", "addresses": ["s:26379"]}
            ),
            "exactly one of url, sentinel or cluster",
        ),
        (lambda c: c["spec"].pop("redis"), "spec.redis is required when spec.backend is redis"),
        (lambda c: c["spec"].update(backend="memory"), "spec.redis must not be set"),
        (
            lambda c: c["spec"]["locks"].update(defaultTTL="10m", maxTTL="1m"),
            "defaultTTL must not exceed spec.locks.maxTTL",
        ),
        (
            lambda c: (
                c["spec"]["locks"].update(defaultTTL="10m") or c["spec"]["locks"].pop("maxTTL")
            ),
            "defaultTTL must not exceed spec.locks.maxTTL",
        ),  # maxTTL defaulted to 5m first
        (
            lambda c: c["spec"]["leaderElection"]["elections"][0].update(renewInterval="1m"),
            "leaseDuration must be longer than renewInterval",
        ),
        (lambda c: c["metadata"].update(name="x" * 60), "metadata.name must be at most 54"),
    ],
    ids=[
        "two-redis-sources",
        "redis-without-redis",
        "memory-with-redis",
        "lock-ttl-over-max",
        "lock-ttl-over-default-max",
        "lease-shorter-than-renew",
        "name-too-long",
    ],
)
def test_cel_rules_refuse_and_the_operator_agrees(mutate: Any, message: str) -> None:
    """The CEL rules, evaluated on the defaulted object, refuse what they are meant to;
    the operator's own checks refuse the same specs (they guard specs admitted before
    a rule existed), naming a spec field."""
    config = copy.deepcopy(_redis_example())
    mutate(config)
    violations = crd.validate(config)
    assert any(message in violation for violation in violations), violations
    if not config["metadata"]["name"].startswith("x" * 60):  # a name is not a spec problem
        assert _operator_problems(config) != []


def test_valid_memory_example_passes() -> None:
    _validate_cacheconfig(_memory_example())


@pytest.mark.parametrize(
    ("version", "native"),
    [(v, True) for v in K8S_VERSIONS if v != OLDEST] + [(v, False) for v in K8S_VERSIONS],
)
def test_demo_pod_after_injection_is_valid(
    default_release: chart.Release, version: str, native: bool
) -> None:
    """What users end up running: the demo pod, injected by the operator's own code with
    the sidecar defaults the chart passes it, for each example CacheConfig (a native
    sidecar from 1.29, a regular container on every supported version)."""
    injection = pytest.importorskip("podcache_operator.injection")
    settings = pytest.importorskip("podcache_operator.settings")
    env = chart.env_of(chart.container(default_release.one("Deployment"), "operator"))
    strings = {name: value for name, value in env.items() if isinstance(value, str)}
    sidecar = settings.Settings.from_env(
        {**strings, "PODCACHE_SIDECAR_NATIVE": str(native)}
    ).sidecar
    (deployment,) = chart.load_yaml_documents(chart.EXAMPLES_DIR / "demo-deployment.yaml")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **deployment["spec"]["template"]["metadata"],
            "name": "demo-0",
            "namespace": "default",
        },
        "spec": deployment["spec"]["template"]["spec"],
    }
    configs = [
        obj
        for path in sorted(chart.EXAMPLES_DIR.glob("*.yaml"))
        for obj in chart.load_yaml_documents(path)
        if obj["kind"] == "CacheConfig"
    ]
    for config in configs:
        defaulted = crd.apply_defaults(copy.deepcopy(config), crd.schema())
        ops = injection.build_patch(
            pod, cacheconfig=config["metadata"]["name"], spec=defaulted["spec"], sidecar=sidecar
        )
        injected = injection.apply_patch(pod, ops)
        kubernetes_validate.validate(injected, version, strict=True)
        where = "initContainers" if native else "containers"
        names = [c["name"] for c in injected["spec"].get(where, [])]
        assert injection.SIDECAR_NAME in names
