"""``spec.redis.waitPoolSize``, ``spec.sidecar.maxWatchStreams`` and ``spec.allowPersist``:
CRD, validation, rendering.

Aspects: the fields are in the CRD with the operator's bounds, and the CRD's schema
takes and refuses what the operator does; rendered into the sidecar config
(``config.waitPoolSize``, ``limits.maxWatchStreams``, ``limits.allowPersist``) only when
set (allowPersist: when true), so existing CacheConfigs keep their ConfigMap and hash;
what the sidecar parses back; bad values refused naming the spec field, by the operator
and by the sidecar's parser.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from podcache import config, configfile
from podcache_operator import rendering, settings, validation
from tests.operator import samples

SPEC_SCHEMA = samples.load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
    "properties"]["spec"]


def with_fields(
    *, wait_pool: Any = None, watches: Any = None, persist: Any = None
) -> dict[str, Any]:
    spec = samples.spec(samples.REDIS_SPEC)
    if persist is not None:
        spec["allowPersist"] = persist
    if wait_pool is not None:
        spec["redis"]["waitPoolSize"] = wait_pool
    if watches is not None:
        spec["sidecar"] = {**spec.get("sidecar", {}), "maxWatchStreams": watches}
    return spec


def problems(spec: dict[str, Any]) -> list[str]:
    return [str(p) for p in validation.check_spec(
        spec, namespace="shop", name="sessions", sidecar=settings.SidecarSettings())]


def schema_accepts(spec: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(spec, SPEC_SCHEMA)
    except jsonschema.ValidationError:
        return False
    return True


def test_crd_bounds_are_the_operators() -> None:
    wait_pool = SPEC_SCHEMA["properties"]["redis"]["properties"]["waitPoolSize"]
    watches = SPEC_SCHEMA["properties"]["sidecar"]["properties"]["maxWatchStreams"]
    assert (wait_pool["type"], wait_pool["minimum"]) == ("integer", 1)
    assert wait_pool["maximum"] == validation.MAX_WAIT_POOL_SIZE
    assert (watches["type"], watches["minimum"]) == ("integer", 1)
    assert watches["maximum"] == validation.MAX_WATCH_STREAMS
    assert "default" not in wait_pool  # absent: the sidecar's own default
    assert "default" not in watches
    persist = SPEC_SCHEMA["properties"]["allowPersist"]
    assert persist["type"] == "boolean"
    assert "default" not in persist  # absent: off, and existing objects unchanged


def test_rendered_only_when_set() -> None:
    plain = rendering.render(samples.REDIS_SPEC, namespace="shop", name="sessions",
                             metrics_port=9090)
    assert "waitPoolSize" not in plain.config["config"]
    assert "limits" not in plain.config
    spec = with_fields(wait_pool=8, watches=1000)
    rendered = rendering.render(spec, namespace="shop", name="sessions", metrics_port=9090)
    assert rendered.config["config"]["waitPoolSize"] == 8
    assert rendered.config["limits"] == {"maxWatchStreams": 1000}
    parsed = configfile.parse(rendered.config)
    backend = config.parse_settings(parsed.backend.type, parsed.backend.config)
    assert isinstance(backend, config.RedisSettings)
    assert backend.wait_pool_size == 8
    assert parsed.limits.max_watch_streams == 1000
    assert rendered.config_hash != plain.config_hash


def test_allow_persist_rendered_only_when_true() -> None:
    plain = rendering.render(samples.REDIS_SPEC, namespace="shop", name="sessions",
                             metrics_port=9090)
    off = rendering.render(with_fields(persist=False), namespace="shop", name="sessions",
                           metrics_port=9090)
    assert off.config_hash == plain.config_hash  # false is the default: same ConfigMap
    on = rendering.render(with_fields(persist=True, watches=10), namespace="shop",
                          name="sessions", metrics_port=9090)
    assert on.config["limits"] == {"maxWatchStreams": 10, "allowPersist": True}
    assert configfile.parse(on.config).limits.allow_persist is True
    assert configfile.parse(plain.config).limits.allow_persist is False


@pytest.mark.parametrize("value", [1, 64])
def test_valid_values_pass(value: int) -> None:
    spec = with_fields(wait_pool=value, watches=value, persist=value == 1)
    assert problems(spec) == []
    assert schema_accepts(spec)


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("spec.redis.waitPoolSize", {"wait_pool": 0}),
        ("spec.redis.waitPoolSize", {"wait_pool": validation.MAX_WAIT_POOL_SIZE + 1}),
        ("spec.redis.waitPoolSize", {"wait_pool": "8"}),
        ("spec.redis.waitPoolSize", {"wait_pool": True}),
        ("spec.sidecar.maxWatchStreams", {"watches": 0}),
        ("spec.sidecar.maxWatchStreams", {"watches": validation.MAX_WATCH_STREAMS + 1}),
        ("spec.sidecar.maxWatchStreams", {"watches": 2.5}),
        ("spec.allowPersist", {"persist": "true"}),
        ("spec.allowPersist", {"persist": 1}),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, changes: dict[str, Any]) -> None:
    spec = with_fields(**changes)
    found = problems(spec)
    assert any(problem.startswith(f"{field}: ") for problem in found), found
    assert not schema_accepts(spec)


def test_sidecar_parser_errors_map_to_the_spec_fields() -> None:
    assert validation.spec_field("config.waitPoolSize") == "spec.redis.waitPoolSize"
    assert validation.spec_field("limits.maxWatchStreams") == "spec.sidecar.maxWatchStreams"
    assert validation.spec_field("limits.allowPersist") == "spec.allowPersist"
