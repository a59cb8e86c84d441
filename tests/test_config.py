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
limits: {maxValueBytes: 2048, allowPersist: true}
locks: {defaultTTL: 20s, maxTTL: 1m}
elections: [{name: scheduler, leaseDuration: 15s, renewDeadline: 10s, retryPeriod: 2s}]
"""
    parsed = configfile.loads(text)
    assert parsed.metrics.namespace == "shop"
    assert parsed.limits.max_value_bytes == 2048
    assert parsed.limits.allow_persist is True
    assert configfile.loads("type: memory").limits.allow_persist is False  # off by default
    assert parsed.elections[0].lease_duration == 15.0
    assert configfile.parse(configfile.render(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("colour: blue", "colour"),
        ("type: disk", "type"),
        ("metrics: {namespace: '9bad'}", "metrics.namespace"),
        ("limits: {maxValueBytes: 0}", "limits.maxValueBytes"),
        ("limits: {allowPersist: 'yes'}", "limits.allowPersist"),
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
    ("url", "shown"),
    [
        ("redis://:s3cret@r:6379/0", "redis://r:6379/0 (config.url)"),
        ("rediss://app:s3cret@r:6380/1", "rediss://app@r:6380/1 (config.url)"),
        ("unix:///run/redis.sock?db=2&password=s3cret", "unix:///run/redis.sock?db=2 (config.url)"),
    ],
)
def test_endpoint_of_settings_built_directly_never_shows_the_password(url: str,
                                                                      shown: str) -> None:
    # Config refuses such URLs; settings built in code are still redacted in logs.
    assert RedisSettings(url=url).endpoint() == shown
    assert "s3cret" not in repr(RedisSettings(url="redis://r:1", password="s3cret"))


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@r:6379/0",
        "rediss://app:s3cret@r:6380/1",
        "redis://app@r:6379/0",
        "redis://r:6379/0?password=s3cret",
        "redis://r:6379/0?db=1&Password=s3cret",
        "redis://r:6379/0?pass%77ord=s3cret",
        "redis://r:6379/0?username=app",
        "unix:///run/redis.sock?db=2&password=s3cret",
        "unix://:s3cret@/run/redis.sock",
    ],
)
def test_credentials_anywhere_in_the_url_are_refused(url: str) -> None:
    """Issue 10, item 8: the URL lands in a ConfigMap; ``?password=`` slipped through."""
    with pytest.raises(ConfigError) as info:
        Config(type="redis", config={"url": url})
    assert info.value.field == "config.url"
    assert "credentials" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("type: redis\nconfig: {url: 'http://app:s3cret@r:1/0'}", "config.url"),
        ("type: redis\nconfig: {url: 'redis:/app:s3cret@r:1/0'}", "config.url"),
        ("type: redis\nconfig: {url: 'app:s3cret@r:1'}", "config.url"),
        ("type: redis\nconfig: {url: 'redis://r:1/0', password: 31415926}", "config.password"),
        (
            "type: redis\nconfig: {sentinel: {masterName: m, addresses: ['s:1'], "
            "password: 31415926}}",
            "config.sentinel.password",
        ),
        ("type: redis\nconfig: {url: 'redis://r:1/0', password: 's3cret", "file"),
        ("type: redis\nconfig:\n  password: s3cret\n\tport: 1", "file"),
    ],
)
def test_config_errors_never_echo_a_secret(text: str, field: str) -> None:
    """Issue 10, item 9: a bad-scheme URL and a numeric password used to be echoed."""
    with pytest.raises(ConfigError) as info:
        configfile.loads(text)
    assert info.value.field == field
    for secret in ("s3cret", "31415926"):
        assert secret not in str(info.value)
        assert secret not in repr(info.value)
    assert info.value.__cause__ is None or "s3cret" not in str(info.value.__cause__)


def test_an_empty_key_prefix_is_refused() -> None:
    """Issue 10, item 6: ``keyPrefix: ""`` read and wrote every other tenant's keys."""
    with pytest.raises(ConfigError) as info:
        configfile.loads("type: redis\nconfig: {url: 'redis://r:1/0', keyPrefix: ''}")
    assert info.value.field == "config.keyPrefix"
    settings = Config(type="redis", config={"url": "redis://r:1/0", "keyPrefix": "shop:"}).settings
    assert isinstance(settings, RedisSettings)
    assert settings.key_prefix == "shop:"


def test_config_repr_hides_the_password() -> None:
    config = Config(type="redis", config={"url": "redis://r:1/0", "password": "s3cret"})
    assert "s3cret" not in repr(config)
    assert "redis://r:1/0" in repr(config)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
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
def test_redis_endpoint_names_the_field(
    raw: dict[str, object], shown: str
) -> None:
    settings = Config(type="redis", config=raw).settings
    assert isinstance(settings, RedisSettings)
    assert settings.endpoint() == shown
