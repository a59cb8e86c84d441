"""Backend configuration: the seed's ``Config{Type, Config}`` shape, validated up front.

``Config(type=..., config={...})`` keeps the seed's loose map for familiarity, but it
is checked as soon as it is built: an unknown type, an unknown key, a bad duration
or a negative number raises ``ConfigError`` naming the field before anything
starts. ``Config.settings`` is the typed result the backends consume.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

from podcache import durations
from podcache.errors import ConfigError

BackendType = Literal["memory", "redis"]
BACKEND_TYPES: tuple[str, ...] = ("memory", "redis")

DEFAULT_TTL_SECONDS = 300.0  # the seed's examples use 5m; a cache entry should not live forever


@dataclasses.dataclass(frozen=True)
class MemorySettings:
    """Settings of the in-process backend."""

    default_ttl: float = DEFAULT_TTL_SECONDS
    """TTL applied when a caller passes ttl=0."""
    max_items: int = 100_000
    """Entries kept at most; the least recently used go first."""
    max_bytes: int = 256 * 1024 * 1024
    """Sum of key and value sizes kept at most; LRU eviction beyond it."""
    reap_interval: float = 1.0
    """How often expired entries are swept out in the background."""


@dataclasses.dataclass(frozen=True)
class TLSSettings:
    """TLS towards Redis (``rediss://`` turns it on as well)."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


@dataclasses.dataclass(frozen=True)
class SentinelSettings:
    """Redis Sentinel: where the sentinels are and which primary to follow."""

    master_name: str
    addresses: tuple[str, ...]
    password: str | None = dataclasses.field(default=None, repr=False)  # never in a log line
    """Password of the sentinels themselves (the data password is RedisSettings.password)."""
    read_from_replicas: bool = False
    """Serve ``get`` from replicas; off by default because replicas lag."""


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """Redis Cluster: seed nodes, the rest is discovered."""

    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class NearCacheSettings:
    """A bounded local copy of keys read through this sidecar, kept coherent by Redis's
    client-side-caching invalidations (``backends.near_cache``). Off by default."""

    enabled: bool = False
    max_items: int = 10_000
    """Entries kept at most; the least recently used go first."""
    max_bytes: int = 64 * 1024 * 1024
    """Bytes charged (as the memory backend charges them) at most."""
    max_ttl: float = 60.0
    """A local copy lives at most this long, and never past the key's TTL in Redis."""


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    """Settings of the Redis backend (standalone, Sentinel or Cluster)."""

    url: str | None = None
    sentinel: SentinelSettings | None = None
    cluster: ClusterSettings | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)  # never in a log line
    password_file: str | None = None
    """A mounted Secret file holding the password; read at connect time."""
    tls: TLSSettings = dataclasses.field(default_factory=TLSSettings)
    key_prefix: str = ""
    """Prepended to every key so tenants sharing one Redis never see each other's keys."""
    default_ttl: float = DEFAULT_TTL_SECONDS
    connect_timeout: float = 2.0
    operation_timeout: float = 1.0
    """A dead Redis makes calls fail within this instead of hanging."""
    pool_size: int = 64
    """Connections for short commands: election scripts, the item count, the cache and
    lock calls on Cluster and the lock calls with ``replica_ack_timeout``; otherwise those
    go through the backend's one auto-pipelined connection (``redis_pipeline``)."""
    wait_pool_size: int = 32
    """Connections for lock acquires blocked waiting for a release (one per lock name
    waited on at once), apart from ``pool_size``; beyond it a waiter is refused."""
    items_refresh_interval: float = 10.0
    """How often ``<ns>_cache_items`` is recounted by an incremental SCAN."""
    replica_ack_timeout: float = 0.0
    """After a lock or lease write, WAIT for one replica up to this long (0 = do not wait)."""
    near_cache: NearCacheSettings = dataclasses.field(default_factory=NearCacheSettings)
    """The near cache in front of Redis (``config.nearCache``)."""

    def endpoint(self) -> str:
        """Where this connects and the field that says so, for logs: never a password."""
        if self.sentinel is not None:
            master, addresses = self.sentinel.master_name, ", ".join(self.sentinel.addresses)
            return f"sentinel master {master!r} via {addresses} (config.sentinel)"
        if self.cluster is not None:
            return f"cluster nodes {', '.join(self.cluster.nodes)} (config.cluster.nodes)"
        return f"{redact_url(self.url or '')} (config.url)"


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}")
_CREDENTIAL_PARAM = re.compile(r"pass|user|auth|token|secret", re.IGNORECASE)


def url_credentials(url: str) -> str | None:
    """What credential ``url`` carries (never its value), or None when it carries none.

    Both the user info and any query parameter count: redis-py passes every query
    parameter on as a connection argument, ``?password=`` and ``?username=`` included.
    """
    parts = urllib.parse.urlsplit(url)
    userinfo, has_userinfo, _ = parts.netloc.rpartition("@")
    if has_userinfo:
        return "a password in its user info" if ":" in userinfo else "a user name in its user info"
    for name, _value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if _CREDENTIAL_PARAM.search(name):
            return f"a {name!r} query parameter" if _SCHEME.fullmatch(name) else (
                "a credential query parameter")
    return None


def url_scheme(url: str) -> str:
    """The scheme of ``url`` for an error message: never anything past it (it may hold a
    password), and a placeholder when there is no plausible scheme."""
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://" if sep and _SCHEME.fullmatch(scheme) else "(no scheme)"


def check_url(url: str, *, field: str) -> None:
    """Raise ConfigError naming ``field`` unless ``url`` is a credential-free Redis URL."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            field,
            f"unsupported URL scheme {url_scheme(url)} (use redis://, rediss:// or unix://)",
        )
    found = url_credentials(url)
    if found is not None:
        # The URL is rendered into a ConfigMap and named in logs: no place for secrets.
        raise ConfigError(
            field,
            f"must not carry credentials, found {found}; set config.username, and the "
            "password through config.passwordFile or PODCACHE_REDIS_PASSWORD",
        )


def redact_url(url: str) -> str:
    """``url`` without its password (in the user info or a ``password`` query parameter)."""
    parts = urllib.parse.urlsplit(url)
    user, has_userinfo, host = parts.netloc.rpartition("@")
    if not has_userinfo:
        user, host = "", parts.netloc
    user = user.partition(":")[0]
    query = urllib.parse.urlencode(
        [
            (name, value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if name != "password"
        ]
    )
    return (
        f"{parts.scheme}://{user + '@' if user else ''}{host}{parts.path}"
        f"{'?' + query if query else ''}"
    )


Settings = MemorySettings | RedisSettings


@dataclasses.dataclass(frozen=True)
class Config:
    """The seed's config: a backend ``type`` and that backend's ``config`` map."""

    type: str = "memory"
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Validate eagerly: a bad config must fail before a backend starts.
        object.__setattr__(self, "_settings", parse_settings(self.type, self.config))

    def __repr__(self) -> str:
        # The map may hold a password: a repr lands in logs and tracebacks.
        return f"Config(type={self.type!r}, config={_masked(self.config)!r})"

    @property
    def settings(self) -> Settings:
        return self._settings  # type: ignore[attr-defined,no-any-return]

    @property
    def default_ttl(self) -> float:
        return self.settings.default_ttl


def _masked(raw: Mapping[str, Any]) -> dict[str, Any]:
    masked: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "password":
            masked[key] = "<redacted>"
        elif key == "url" and isinstance(value, str):
            masked[key] = redact_url(value)
        elif isinstance(value, Mapping):
            masked[key] = _masked(value)
        else:
            masked[key] = value
    return masked


def parse_settings(backend_type: str, raw: Mapping[str, Any] | None) -> Settings:
    """Validate a backend config map into typed settings; raise ConfigError on any problem."""
    if backend_type not in BACKEND_TYPES:
        raise ConfigError(
            "type", f"unknown backend type {backend_type!r} (use one of {', '.join(BACKEND_TYPES)})"
        )
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("config", f"expected a mapping, got {type(raw).__name__}")
    if backend_type == "memory":
        return _parse_memory(raw)
    return _parse_redis(raw)


def _parse_memory(raw: Mapping[str, Any]) -> MemorySettings:
    reader = _Reader(raw, "config")
    settings = MemorySettings(
        default_ttl=reader.duration("defaultTTL", MemorySettings.default_ttl),
        max_items=reader.positive_int("maxItems", MemorySettings.max_items),
        max_bytes=reader.positive_int("maxBytes", MemorySettings.max_bytes),
        reap_interval=reader.duration("reapInterval", MemorySettings.reap_interval, positive=True),
    )
    reader.reject_unknown()
    return settings


def _parse_redis(raw: Mapping[str, Any]) -> RedisSettings:
    reader = _Reader(raw, "config")
    url = reader.optional_str("url")
    sentinel = _parse_sentinel(reader.optional_mapping("sentinel"))
    cluster = _parse_cluster(reader.optional_mapping("cluster"))
    given = [
        name
        for name, value in (("url", url), ("sentinel", sentinel), ("cluster", cluster))
        if value
    ]
    if len(given) != 1:
        raise ConfigError(
            "config",
            "redis needs exactly one of url, sentinel or cluster"
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if url is not None:
        check_url(url, field="config.url")
    timeouts = _Reader(reader.optional_mapping("timeouts") or {}, "config.timeouts")
    settings = RedisSettings(
        url=url,
        sentinel=sentinel,
        cluster=cluster,
        username=reader.optional_str("username"),
        password=reader.optional_str("password", secret=True),
        password_file=reader.optional_str("passwordFile"),
        tls=_parse_tls(reader.optional_mapping("tls"), url),
        key_prefix=_key_prefix(reader),
        default_ttl=reader.duration("defaultTTL", RedisSettings.default_ttl),
        connect_timeout=timeouts.duration("connect", RedisSettings.connect_timeout, positive=True),
        operation_timeout=timeouts.duration(
            "operation", RedisSettings.operation_timeout, positive=True
        ),
        pool_size=reader.positive_int("poolSize", RedisSettings.pool_size),
        wait_pool_size=reader.positive_int("waitPoolSize", RedisSettings.wait_pool_size),
        items_refresh_interval=reader.duration(
            "itemsRefreshInterval", RedisSettings.items_refresh_interval, positive=True
        ),
        replica_ack_timeout=reader.duration("replicaAckTimeout", RedisSettings.replica_ack_timeout),
        near_cache=_parse_near_cache(reader.optional_mapping("nearCache"), sentinel),
    )
    timeouts.reject_unknown()
    reader.reject_unknown()
    return settings


def _key_prefix(reader: _Reader) -> str:
    prefix = reader.optional_str("keyPrefix")
    if prefix == "":
        # Every tenant on the Redis would read, delete and overwrite this one's keys,
        # locks and fence counters (and it theirs).
        raise ConfigError(
            "config.keyPrefix",
            "must not be empty: give each tenant on a shared Redis its own prefix "
            '(e.g. "<namespace>/<name>:")',
        )
    return prefix or ""


def _parse_near_cache(
    raw: Mapping[str, Any] | None,
    sentinel: SentinelSettings | None,
) -> NearCacheSettings:
    if raw is None:
        return NearCacheSettings()
    reader = _Reader(raw, "config.nearCache")
    settings = NearCacheSettings(
        enabled=reader.boolean("enabled", False),  # off unless asked for, even with the section
        max_items=reader.positive_int("maxItems", NearCacheSettings.max_items),
        max_bytes=reader.positive_int("maxBytes", NearCacheSettings.max_bytes),
        max_ttl=reader.duration("maxTTL", NearCacheSettings.max_ttl, positive=True),
    )
    reader.reject_unknown()
    if settings.enabled and sentinel is not None and sentinel.read_from_replicas:
        # A lagging replica's reply could be cached after the primary's invalidation.
        raise ConfigError(
            "config.nearCache.enabled",
            "the near cache cannot be combined with config.sentinel.readFromReplicas",
        )
    return settings


def _parse_sentinel(raw: Mapping[str, Any] | None) -> SentinelSettings | None:
    if raw is None:
        return None
    reader = _Reader(raw, "config.sentinel")
    master = reader.optional_str("masterName")
    if not master:
        raise ConfigError("config.sentinel.masterName", "required")
    addresses = reader.address_list("addresses")
    settings = SentinelSettings(
        master_name=master,
        addresses=addresses,
        password=reader.optional_str("password", secret=True),
        read_from_replicas=reader.boolean("readFromReplicas", False),
    )
    reader.reject_unknown()
    return settings


def _parse_cluster(raw: Mapping[str, Any] | None) -> ClusterSettings | None:
    if raw is None:
        return None
    reader = _Reader(raw, "config.cluster")
    settings = ClusterSettings(nodes=reader.address_list("nodes"))
    reader.reject_unknown()
    return settings


def _parse_tls(raw: Mapping[str, Any] | None, url: str | None) -> TLSSettings:
    implied = bool(url and url.startswith("rediss://"))
    if raw is None:
        return TLSSettings(enabled=implied)
    reader = _Reader(raw, "config.tls")
    settings = TLSSettings(
        enabled=reader.boolean("enabled", True) or implied,
        ca_file=reader.optional_str("caFile"),
        cert_file=reader.optional_str("certFile"),
        key_file=reader.optional_str("keyFile"),
        insecure_skip_verify=reader.boolean("insecureSkipVerify", False),
    )
    reader.reject_unknown()
    return settings


class _Reader:
    """Reads typed fields from a raw mapping, remembering which keys were consumed."""

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(raw).__name__}")
        self.raw = raw
        self.path = path
        self.seen: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}"

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.raw.get(key)

    def duration(self, key: str, default: float, *, positive: bool = False) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            seconds = durations.parse_duration(value, field=self.field(key))
        except ValueError as exc:
            raise ConfigError(self.field(key), str(exc).split(": ", 1)[-1]) from exc
        if positive and seconds <= 0:
            raise ConfigError(self.field(key), f"must be greater than zero, got {value!r}")
        return seconds

    def positive_int(self, key: str, default: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.field(key), f"expected a whole number, got {value!r}")
        if value <= 0:
            raise ConfigError(self.field(key), f"must be greater than zero, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.field(key), f"expected true or false, got {value!r}")
        return value

    def optional_str(self, key: str, *, secret: bool = False) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            # A secret's value is never echoed, not even a mistyped one (YAML reads
            # `password: 12345` as a number).
            shown = f"a {type(value).__name__} (quote it in YAML)" if secret else repr(value)
            raise ConfigError(self.field(key), f"expected a string, got {shown}")
        return value

    def optional_mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(self.field(key), f"expected a mapping, got {type(value).__name__}")
        return value

    def address_list(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(self.field(key), "expected a non-empty list of host:port addresses")
        for item in value:
            if not isinstance(item, str) or ":" not in item:
                raise ConfigError(self.field(key), f"expected host:port, got {item!r}")
        return tuple(value)

    def reject_unknown(self) -> None:
        unknown = sorted(str(key) for key in self.raw if key not in self.seen)
        if unknown:
            raise ConfigError(
                self.field(unknown[0]), f"unknown key (known: {', '.join(sorted(self.seen))})"
            )
