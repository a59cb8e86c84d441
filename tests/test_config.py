"""Config validation: durations, the seed's Config shape, and the sidecar config file.

Aspects: Go-style durations and seconds; unknown type / key, bad duration and
negative numbers named in the error; the config file round-trips through render;
the Redis endpoint as logs show it names its field and never the password.
"""

from __future__ import annotations

import pytest

from podcache import configfile, durations
from podcache.config import Config, MemorySettings, RedisSettings
from podcache.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        (7, 7.0),
        (2.5, 2.5),
        ("12", 12.0),
        ("250us", 0.00025),
    ],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert durations.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5 minutes", "-3s", -1, "1x", "s", "3s5", True, None, [1]])
def test_bad_durations_name_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="defaultTTL"):
        durations.parse_duration(bad, field="defaultTTL")


@pytest.mark.parametrize("seconds", [0.25, 1, 30, 90, 5400, 3661])
def test_format_duration_round_trips(seconds: float) -> None:
    assert durations.parse_duration(durations.format_duration(seconds)) == pytest.approx(seconds)


def test_memory_config_defaults_and_overrides() -> None:
    config = Config(type="memory", config={"defaultTTL": "5m", "maxItems": 10})
    assert isinstance(config.settings, MemorySettings)
    assert config.settings.default_ttl == 300.0
    assert config.settings.max_items == 10


def test_redis_config_parses_url_prefix_and_timeouts() -> None:
    config = Config(
        type="redis",
        config={"url": "rediss://h:6380/1", "keyPrefix": "t:", "timeouts": {"operation": "250ms"}},
    )
    settings = config.settings
    assert isinstance(settings, RedisSettings)
    assert settings.tls.enabled
    assert settings.key_prefix == "t:"
    assert settings.operation_timeout == 0.25


@pytest.mark.parametrize(
    ("backend", "raw", "field"),
    [
        ("disk", {}, "type"),
        ("memory", {"defaultTTL": "5 minutes"}, "config.defaultTTL"),
        ("memory", {"maxItems": -1}, "config.maxItems"),
        ("memory", {"colour": "blue"}, "config.colour"),
        ("redis", {}, "config"),
        ("redis", {"url": "http://x"}, "config.url"),
        (
            "redis",
            {"url": "redis://x", "sentinel": {"masterName": "m", "addresses": ["a:1"]}},
            "config",
        ),
        ("redis", {"sentinel": {"addresses": ["a:1"]}}, "config.sentinel.masterName"),
        (
            "redis",
            {"url": "redis://x", "timeouts": {"operation": "-1s"}},
            "config.timeouts.operation",
        ),
    ],
)
def test_bad_config_names_the_field(backend: str, raw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(type=backend, config=raw)
    assert info.value.field == field
    assert field in str(info.value)


def test_config_file_round_trips() -> None:
    text = """
type: redis
config: {url: "redis://r:6379/0", defaultTTL: 5m, keyPrefix: "shop:"}
metrics: {namespace: shop, port: 9191}
limits: {maxValueBytes: 2048}
locks: {defaultTTL: 20s, maxTTL: 1m}
elections: [{name: scheduler, leaseDuration: 15s, renewDeadline: 10s, retryPeriod: 2s}]
"""
    parsed = configfile.loads(text)
    assert parsed.metrics.namespace == "shop"
    assert parsed.limits.max_value_bytes == 2048
    assert parsed.elections[0].lease_duration == 15.0
    assert configfile.parse(configfile.render(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("colour: blue", "colour"),
        ("type: disk", "type"),
        ("metrics: {namespace: '9bad'}", "metrics.namespace"),
        ("limits: {maxValueBytes: 0}", "limits.maxValueBytes"),
        ("locks: {defaultTTL: 10m, maxTTL: 1m}", "locks.defaultTTL"),
        (
            "elections: [{name: a, leaseDuration: 5s, renewDeadline: 10s}]",
            "elections[0].renewDeadline",
        ),
        ("elections: [{name: a}, {name: a}]", "elections[1].name"),
        ("logLevel: loud", "logLevel"),
        ("[1, 2", "file"),
    ],
)
def test_bad_config_file_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        configfile.loads(text)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ({"url": "redis://:s3cret@r:6379/0"}, "redis://r:6379/0 (config.url)"),
        ({"url": "rediss://app:s3cret@r:6380/1"}, "rediss://app@r:6380/1 (config.url)"),
        (
            {"url": "unix:///run/redis.sock?db=2&password=s3cret"},
            "unix:///run/redis.sock?db=2 (config.url)",
        ),
        (
            {"sentinel": {"masterName": "m", "addresses": ["s1:26379", "s2:26379"]}},
            "sentinel master 'm' via s1:26379, s2:26379 (config.sentinel)",
        ),
        (
            {"cluster": {"nodes": ["c1:7000", "c2:7000"]}},
            "cluster nodes c1:7000, c2:7000 (config.cluster.nodes)",
        ),
    ],
)
def test_redis_endpoint_names_the_field_without_the_password(
    raw: dict[str, object], shown: str
) -> None:
    settings = Config(type="redis", config=raw).settings
    assert isinstance(settings, RedisSettings)
    assert settings.endpoint() == shown
