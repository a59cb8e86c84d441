"""Rendering a CacheConfig spec into the objects the operator owns (pure functions).

Aspects: every spec field's effect on the sidecar config; defaults when fields are
absent; every rendered config is accepted by the sidecar's own parser
(``podcache.configfile.parse``); secrets never reach the ConfigMap; the config hash
is stable and follows content; ConfigMap, headless Service and ServiceMonitor shape;
owned-object names stay valid DNS labels; quantities.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from podcache import configfile
from podcache.errors import ConfigError
from podcache_operator import rendering
from tests.operator import samples


def render(spec: dict[str, Any], name: str = "shop") -> rendering.Rendered:
    return rendering.render(spec, namespace="shop", name=name, metrics_port=9090)


class TestSidecarConfig:
    def test_memory_fields(self) -> None:
        config = render(samples.MEMORY_SPEC).config
        assert config["type"] == "memory"
        assert config["config"] == {"defaultTTL": "10m", "maxItems": 500, "maxBytes": 32 * 2**20}

    def test_redis_socket_on_unless_turned_off(self) -> None:
        assert "resp" not in render(samples.MEMORY_SPEC).config  # the sidecar's default: on
        spec = samples.spec(samples.MEMORY_SPEC, sidecar={"redisSocket": False})
        assert render(spec).config["resp"] == {"enabled": False}

    def test_memory_defaults(self) -> None:
        config = render({}).config
        assert config["type"] == "memory"
        assert config["config"] == {"defaultTTL": "5m", "maxItems": 100_000, "maxBytes": 64 * 2**20}
        assert config["locks"] == {"defaultTTL": "30s", "maxTTL": "5m"}
        assert config["metrics"] == {"namespace": "lab", "port": 9090}
        assert config["elections"] == []
        assert config["logLevel"] == "info"
        assert config["socket"] == "/var/run/podcache/cache.sock"

    def test_redis_url_fields(self) -> None:
        config = render(samples.REDIS_SPEC).config
        assert config["type"] == "redis"
        assert config["config"] == {
            "defaultTTL": "1m",
            "url": "redis://redis.shop.svc:6379/0",
            "keyPrefix": "shop/sessions:",
            "timeouts": {"connect": "3s", "operation": "500ms"},
        }
        assert config["locks"] == {"defaultTTL": "10s", "maxTTL": "1m"}
        assert config["metrics"] == {"namespace": "shop", "port": 9090}
        assert config["logLevel"] == "debug"

    def test_acl_username_is_rendered_and_its_password_is_not(self) -> None:
        redis = {**samples.REDIS_SPEC["redis"], "username": "shop-sessions"}
        rendered = render(samples.spec(samples.REDIS_SPEC, redis=redis))
        assert rendered.config["config"]["username"] == "shop-sessions"
        assert "password" not in rendered.config_map["data"]["config.yaml"]

    def test_key_prefix_defaults_to_namespace_and_name(self) -> None:
        spec = samples.spec(samples.REDIS_SPEC, redis={"url": "redis://r:6379"})
        assert render(spec, name="carts").config["config"]["keyPrefix"] == "shop/carts:"

    def test_empty_key_prefix_is_never_rendered(self) -> None:
        # It shared every tenant's keys, locks and fences (issue 10, item 6); the CRD and
        # check_spec refuse it first, the sidecar's own validation here.
        spec = samples.spec(samples.REDIS_SPEC, redis={"url": "redis://r:6379", "keyPrefix": ""})
        with pytest.raises(ConfigError, match="keyPrefix"):
            render(spec)

    def test_sentinel(self) -> None:
        redis = {
            "sentinel": {
                "masterName": "mymaster",
                "addresses": ["s-0:26379", "s-1:26379"],
                "passwordSecretRef": {"name": "sentinel-auth"},
            }
        }
        config = render(samples.spec(samples.REDIS_SPEC, redis=redis)).config["config"]
        assert config["sentinel"] == {
            "masterName": "mymaster",
            "addresses": ["s-0:26379", "s-1:26379"],
        }
        assert "url" not in config

    def test_cluster(self) -> None:
        redis = {"cluster": {"nodes": ["r-0:6379", "r-1:6379"]}}
        config = render(samples.spec(samples.REDIS_SPEC, redis=redis)).config["config"]
        assert config["cluster"] == {"nodes": ["r-0:6379", "r-1:6379"]}

    def test_near_cache_rendered_only_when_enabled(self) -> None:
        config = render(samples.REDIS_SPEC).config["config"]
        assert "nearCache" not in config  # off: ConfigMaps render as before
        off = {"url": "redis://r:6379/0", "nearCache": {"enabled": False, "maxItems": 5}}
        assert "nearCache" not in render(
            samples.spec(samples.REDIS_SPEC, redis=off)).config["config"]
        on = {"url": "redis://r:6379/0", "nearCache": {"enabled": True, "maxBytes": "1Mi"}}
        config = render(samples.spec(samples.REDIS_SPEC, redis=on)).config["config"]
        assert config["nearCache"] == {
            "enabled": True, "maxItems": rendering.DEFAULT_NEAR_MAX_ITEMS,
            "maxBytes": 1 << 20, "maxTTL": rendering.DEFAULT_NEAR_MAX_TTL,
        }

    def test_tls_with_ca_refers_to_the_mounted_file(self) -> None:
        redis = {
            "url": "redis://r:6379",
            "tls": {"enabled": True, "caSecretRef": {"name": "ca"}, "insecureSkipVerify": True},
        }
        config = render(samples.spec(samples.REDIS_SPEC, redis=redis)).config["config"]
        assert config["tls"] == {
            "enabled": True,
            "insecureSkipVerify": True,
            "caFile": "/var/run/secrets/podcache/redis-ca/ca.crt",
        }

    def test_rediss_url_turns_tls_on(self) -> None:
        config = render(samples.spec(samples.REDIS_SPEC, redis={"url": "rediss://r:6380"})).config
        assert config["config"]["tls"] == {"enabled": True, "insecureSkipVerify": False}

    def test_tls_off_renders_no_tls(self) -> None:
        redis = {"url": "redis://r:6379", "tls": {"enabled": False}}
        assert "tls" not in render(samples.spec(samples.REDIS_SPEC, redis=redis)).config["config"]

    @pytest.mark.parametrize(
        ("lease", "interval", "deadline"),
        [("15s", "2s", "10s"), ("3s", "2s", "2500ms"), ("1m", "5s", "40s")],
    )
    def test_elections_map_to_client_go_timing(
        self, lease: str, interval: str, deadline: str
    ) -> None:
        spec = samples.spec(
            samples.MEMORY_SPEC,
            leaderElection={
                "elections": [{"name": "jobs", "leaseDuration": lease, "renewInterval": interval}]
            },
        )
        assert render(spec).config["elections"] == [
            {
                "name": "jobs",
                "leaseDuration": lease,
                "renewDeadline": deadline,
                "retryPeriod": interval,
            }
        ]

    def test_election_defaults(self) -> None:
        spec = samples.spec(samples.MEMORY_SPEC, leaderElection={"elections": [{"name": "jobs"}]})
        assert render(spec).config["elections"] == [
            {"name": "jobs", "leaseDuration": "15s", "renewDeadline": "10s", "retryPeriod": "2s"}
        ]

    def test_metrics_port_comes_from_the_operator(self) -> None:
        config = rendering.render({}, namespace="a", name="b", metrics_port=9191).config
        assert config["metrics"]["port"] == 9191

    @pytest.mark.parametrize(
        "spec",
        [
            samples.MEMORY_SPEC,
            samples.REDIS_SPEC,
            {},
            {
                "backend": "redis",
                "redis": {"cluster": {"nodes": ["a:1"]}, "tls": {"enabled": True}},
            },
            {"backend": "redis", "redis": {"sentinel": {"masterName": "m", "addresses": ["a:1"]}}},
            {"backend": "redis", "redis": {"url": "unix:///var/run/redis.sock"}},
        ],
    )
    def test_every_rendering_is_what_the_sidecar_parses(self, spec: dict[str, Any]) -> None:
        rendered = render(spec)
        parsed = configfile.loads(rendered.config_map["data"]["config.yaml"])
        assert parsed.backend.type == (spec.get("backend") or "memory")
        assert parsed.socket == "/var/run/podcache/cache.sock"

    def test_a_spec_the_sidecar_refuses_raises(self) -> None:
        with pytest.raises(ValueError, match=r"locks\.defaultTTL"):
            render(samples.spec(samples.MEMORY_SPEC, locks={"defaultTTL": "10m", "maxTTL": "1m"}))


class TestSecrets:
    def test_password_never_reaches_the_configmap(self) -> None:
        spec = samples.spec(samples.REDIS_SPEC)
        text = render(spec).config_map["data"]["config.yaml"]
        assert "redis-auth" not in text
        assert "password" not in text.lower()


class TestHash:
    def test_same_spec_same_hash(self) -> None:
        assert render(samples.REDIS_SPEC).config_hash == render(samples.REDIS_SPEC).config_hash

    def test_hash_follows_content(self) -> None:
        changed = samples.spec(samples.REDIS_SPEC, defaultTTL="2m")
        assert render(samples.REDIS_SPEC).config_hash != render(changed).config_hash

    def test_hash_is_on_the_configmap(self) -> None:
        rendered = render(samples.MEMORY_SPEC)
        annotations = rendered.config_map["metadata"]["annotations"]
        assert annotations["podcache.io/config-hash"] == rendered.config_hash
        assert rendered.config_hash == rendering.config_hash(
            rendered.config_map["data"]["config.yaml"]
        )


class TestObjects:
    def test_config_map(self) -> None:
        rendered = render(samples.MEMORY_SPEC)
        cm = rendered.config_map
        assert cm["metadata"]["name"] == "podcache-shop"
        assert cm["metadata"]["namespace"] == "shop"
        assert cm["metadata"]["labels"]["podcache.io/config"] == "shop"
        assert yaml.safe_load(cm["data"]["config.yaml"]) == rendered.config

    def test_service_is_headless_over_the_labelled_pods_metrics_port(self) -> None:
        svc = render(samples.MEMORY_SPEC).service
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"] == {"podcache.io/config": "shop"}
        assert svc["spec"]["ports"] == [
            {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}
        ]

    def test_service_monitor_selects_the_service(self) -> None:
        rendered = render(samples.REDIS_SPEC)
        monitor = rendered.service_monitor
        assert monitor is not None
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= rendered.service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}
        assert monitor["spec"]["endpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "15s"}
        ]
        assert monitor["metadata"]["labels"]["release"] == "prometheus"

    def test_service_monitor_disabled(self) -> None:
        spec = samples.spec(samples.MEMORY_SPEC, metrics={"serviceMonitor": {"enabled": False}})
        assert render(spec).service_monitor is None

    def test_service_monitor_default_interval(self) -> None:
        monitor = render({}).service_monitor
        assert monitor is not None
        assert monitor["spec"]["endpoints"][0]["interval"] == "30s"

    def test_our_labels_win_over_user_labels(self) -> None:
        spec = samples.spec(
            samples.MEMORY_SPEC,
            metrics={"serviceMonitor": {"labels": {"app.kubernetes.io/managed-by": "me"}}},
        )
        monitor = render(spec).service_monitor
        assert monitor is not None
        assert monitor["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "podcache-operator"

    @pytest.mark.parametrize("kind", ["config_map", "service"])
    def test_objects_are_valid_kubernetes(self, kind: str) -> None:
        kubernetes_validate.validate(getattr(render(samples.REDIS_SPEC), kind), "1.30", strict=True)

    def test_long_names_stay_dns_labels(self) -> None:
        name = "x" * 80
        short = rendering.object_name(name)
        assert len(short) <= 63
        assert short != rendering.object_name("x" * 81)
        assert rendering.object_name("shop") == "podcache-shop"

    @pytest.mark.parametrize("name", ["my.cache", "My_Cache", "a.b", "x" * 54 + ".y"])
    def test_owned_names_are_always_dns_labels(self, name: str) -> None:
        owned = rendering.object_name(name)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", owned), owned
        assert len(owned) <= 63
        if "." in name:
            assert owned != rendering.object_name(name.replace(".", "-"))


class TestQuantities:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("64Mi", 64 * 2**20),
            ("1G", 10**9),
            ("1.5Ki", 1536),
            (1000, 1000),
            ("42", 42),
            ("2k", 2000),
        ],
    )
    def test_parse(self, text: object, expected: int) -> None:
        assert rendering.parse_quantity(text, field="f") == expected

    @pytest.mark.parametrize("text", ["lots", "-1", "1Xi", True, ""])
    def test_refuse(self, text: object) -> None:
        with pytest.raises(ValueError, match="f"):
            rendering.parse_quantity(text, field="f")


@pytest.mark.parametrize(
    "config",
    [
        {"defaultTTL": "5m", "memory": {"maxItems": 10}},
        {"a": 1},
        {"a": 1.0},
        {"a": True},
        {"a": "1"},
        {"a": [1, "x", None], "b": {"c": "é"}},
    ],
)
def test_dump_config_is_pyyaml_text_however_often_it_is_asked(config: dict[str, Any]) -> None:
    """The text is remembered by the config's JSON, which must tell 1, 1.0, true and
    "1" apart as YAML does: each is asked twice after all the others were seen."""
    expected = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    for _ in range(2):
        for other in ({"a": 1}, {"a": 1.0}, {"a": True}, {"a": "1"}):
            rendering.dump_config(other)
        assert rendering.dump_config(config) == expected
