"""The sidecar's config file (``/etc/podcache/config.yaml``): parse, validate, render.

This module is the one contract between the operator, which renders the file into a
ConfigMap, and the sidecar, which loads and hot-reloads it. The core is the seed's
``type`` + ``config`` shape (see ``podcache.config``); around it sit the sidecar's
own settings. Every problem raises ``ConfigError`` naming the field, so a broken
reload can be refused while the previous config keeps serving.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from podcache import durations
from podcache.config import Config
from podcache.errors import ConfigError

DEFAULT_SOCKET = "/var/run/podcache/cache.sock"
DEFAULT_RESP_SOCKET = "/var/run/podcache/redis.sock"
DEFAULT_METRICS_PORT = 9090
DEFAULT_METRICS_NAMESPACE = "lab"
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAMESPACE_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ELECTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    namespace: str = DEFAULT_METRICS_NAMESPACE
    """Prefix of every metric name (``<namespace>_cache_requests_total``)."""
    port: int = DEFAULT_METRICS_PORT
    """TCP port of ``/metrics``; 0 turns the metrics listener off."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_value_bytes: int = 1024 * 1024
    max_key_bytes: int = 1024
    max_connections: int = 1024
    """Concurrent socket connections served; more wait in the listen backlog. A watch
    stream leaves this count when it starts: it counts in ``max_watch_streams``."""
    max_watch_streams: int = 256
    """Watch streams open at once; one more is refused with 429 too_many_watches."""
    request_timeout: float = 10.0
    """A request (including a blocking lock acquire) never runs longer than this."""
    max_inflight_bytes: int = 32 * 1024 * 1024
    """Request bodies held in memory at once, all connections together (a body of n
    bytes counts 2n: it is joined from its chunks); a PUT beyond it answers 503."""
    allow_persist: bool = False
    """Let RESP ``PERSIST`` and ``GETEX ... PERSIST`` take a key's TTL away. Off, every
    key has a TTL (an entry never outlives its use unnoticed); a SET without a TTL gets
    the default TTL either way."""


@dataclasses.dataclass(frozen=True)
class RespSettings:
    """The cache in the Redis protocol on a second socket (``podcache.sidecar.resp_server``)."""

    enabled: bool = True
    socket: str = DEFAULT_RESP_SOCKET
    """Off-pod (no ``/var/run/podcache``) the default goes beside the HTTP socket."""


@dataclasses.dataclass(frozen=True)
class LockSettings:
    default_ttl: float = 30.0
    max_ttl: float = 300.0


@dataclasses.dataclass(frozen=True)
class ElectionSettings:
    """One election joined at start (client-go's defaults: 15s / 10s / 2s)."""

    name: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclasses.dataclass(frozen=True)
class SidecarConfig:
    backend: Config = dataclasses.field(default_factory=Config)
    socket: str = DEFAULT_SOCKET
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    limits: Limits = dataclasses.field(default_factory=Limits)
    resp: RespSettings = dataclasses.field(default_factory=RespSettings)
    locks: LockSettings = dataclasses.field(default_factory=LockSettings)
    elections: tuple[ElectionSettings, ...] = ()
    log_level: str = "info"
    shutdown_grace_period: float = 10.0


def load(path: str | Path) -> SidecarConfig:
    """Read and validate a config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("file", f"cannot read {path}: {exc.strerror or exc}") from exc
    return loads(text)


def loads(text: str) -> SidecarConfig:
    """Parse YAML text and validate it."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("file", f"not valid YAML: {_yaml_problem(exc)}") from None
    return parse(raw if raw is not None else {})


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, but never PyYAML's snippet of the line: it may be a password's."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return where + " ".join(part for part in (exc.context, exc.problem) if part)
    return type(exc).__name__


def parse(raw: Mapping[str, Any]) -> SidecarConfig:
    """Validate a config mapping (as YAML would give it) into a SidecarConfig."""
    if not isinstance(raw, Mapping):
        raise ConfigError("file", f"expected a mapping at the top level, got {type(raw).__name__}")
    known = {
        "type",
        "config",
        "socket",
        "metrics",
        "limits",
        "resp",
        "locks",
        "elections",
        "logLevel",
        "shutdownGracePeriod",
    }
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")
    backend_type = raw.get("type", "memory")
    if not isinstance(backend_type, str):
        raise ConfigError("type", f"expected a string, got {backend_type!r}")
    backend = Config(type=backend_type, config=raw.get("config") or {})
    socket = raw.get("socket", DEFAULT_SOCKET)
    if not isinstance(socket, str) or not socket:
        raise ConfigError("socket", f"expected a path, got {socket!r}")
    log_level = str(raw.get("logLevel", "info")).lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(
            "logLevel", f"unknown level {log_level!r} (use one of {', '.join(LOG_LEVELS)})"
        )
    locks = _parse_locks(_mapping(raw, "locks"))
    return SidecarConfig(
        backend=backend,
        socket=socket,
        metrics=_parse_metrics(_mapping(raw, "metrics")),
        limits=_parse_limits(_mapping(raw, "limits")),
        resp=_parse_resp(_mapping(raw, "resp")),
        locks=locks,
        elections=_parse_elections(raw.get("elections")),
        log_level=log_level,
        shutdown_grace_period=_duration(
            raw.get("shutdownGracePeriod"), "shutdownGracePeriod", 10.0
        ),
    )


def render(config: SidecarConfig) -> dict[str, Any]:
    """The inverse of ``parse``: a plain mapping ready for ``yaml.safe_dump``."""
    out: dict[str, Any] = {
        "type": config.backend.type,
        "config": dict(config.backend.config),
        "socket": config.socket,
        "metrics": {"namespace": config.metrics.namespace, "port": config.metrics.port},
        "limits": {
            "maxValueBytes": config.limits.max_value_bytes,
            "maxKeyBytes": config.limits.max_key_bytes,
            "maxConnections": config.limits.max_connections,
            "maxWatchStreams": config.limits.max_watch_streams,
            "maxInflightBytes": config.limits.max_inflight_bytes,
            "requestTimeout": durations.format_duration(config.limits.request_timeout),
            "allowPersist": config.limits.allow_persist,
        },
        "resp": {"enabled": config.resp.enabled, "socket": config.resp.socket},
        "locks": {
            "defaultTTL": durations.format_duration(config.locks.default_ttl),
            "maxTTL": durations.format_duration(config.locks.max_ttl),
        },
        "elections": [
            {
                "name": election.name,
                "leaseDuration": durations.format_duration(election.lease_duration),
                "renewDeadline": durations.format_duration(election.renew_deadline),
                "retryPeriod": durations.format_duration(election.retry_period),
            }
            for election in config.elections
        ],
        "logLevel": config.log_level,
        "shutdownGracePeriod": durations.format_duration(config.shutdown_grace_period),
    }
    return out


def dumps(config: SidecarConfig) -> str:
    return yaml.safe_dump(render(config), sort_keys=False)


def _mapping(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(raw: Mapping[str, Any], path: str, known: set[str]) -> None:
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})"
        )


def _duration(value: Any, field: str, default: float, *, positive: bool = False) -> float:
    if value is None:
        return default
    try:
        seconds = durations.parse_duration(value, field=field)
    except ValueError as exc:
        raise ConfigError(field, str(exc).split(": ", 1)[-1]) from exc
    if positive and seconds <= 0:
        raise ConfigError(field, f"must be greater than zero, got {value!r}")
    return seconds


def _int(
    value: Any, field: str, default: int, *, minimum: int = 1, maximum: int | None = None
) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"expected a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(field, f"must be {bound}, got {value}")
    return value


def _parse_metrics(raw: Mapping[str, Any]) -> MetricsSettings:
    _check_keys(raw, "metrics", {"namespace", "port"})
    namespace = raw.get("namespace", DEFAULT_METRICS_NAMESPACE)
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise ConfigError(
            "metrics.namespace", f"must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}"
        )
    port = _int(raw.get("port"), "metrics.port", DEFAULT_METRICS_PORT, minimum=0, maximum=65535)
    return MetricsSettings(namespace=namespace, port=port)


def _parse_limits(raw: Mapping[str, Any]) -> Limits:
    _check_keys(
        raw,
        "limits",
        {
            "maxValueBytes",
            "maxKeyBytes",
            "maxConnections",
            "maxWatchStreams",
            "requestTimeout",
            "maxInflightBytes",
            "allowPersist",
        },
    )
    allow_persist = raw.get("allowPersist", False)
    if not isinstance(allow_persist, bool):
        raise ConfigError("limits.allowPersist", f"expected true or false, got {allow_persist!r}")
    limits = Limits(
        max_value_bytes=_int(
            raw.get("maxValueBytes"), "limits.maxValueBytes", Limits.max_value_bytes
        ),
        max_key_bytes=_int(
            raw.get("maxKeyBytes"), "limits.maxKeyBytes", Limits.max_key_bytes, maximum=1024
        ),
        max_connections=_int(
            raw.get("maxConnections"), "limits.maxConnections", Limits.max_connections
        ),
        max_watch_streams=_int(
            raw.get("maxWatchStreams"), "limits.maxWatchStreams", Limits.max_watch_streams
        ),
        request_timeout=_duration(
            raw.get("requestTimeout"),
            "limits.requestTimeout",
            Limits.request_timeout,
            positive=True,
        ),
        max_inflight_bytes=_int(
            raw.get("maxInflightBytes"), "limits.maxInflightBytes", Limits.max_inflight_bytes
        ),
        allow_persist=allow_persist,
    )
    if limits.max_inflight_bytes < 2 * limits.max_value_bytes:
        # A body counts twice its size (see Limits): the largest value must fit.
        raise ConfigError(
            "limits.maxInflightBytes",
            f"must be at least twice limits.maxValueBytes ({2 * limits.max_value_bytes}),"
            f" got {limits.max_inflight_bytes}",
        )
    return limits


def _parse_resp(raw: Mapping[str, Any]) -> RespSettings:
    _check_keys(raw, "resp", {"enabled", "socket"})
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("resp.enabled", f"expected true or false, got {enabled!r}")
    socket = raw.get("socket", DEFAULT_RESP_SOCKET)
    if not isinstance(socket, str) or not socket:
        raise ConfigError("resp.socket", f"expected a path, got {socket!r}")
    return RespSettings(enabled=enabled, socket=socket)


def _parse_locks(raw: Mapping[str, Any]) -> LockSettings:
    _check_keys(raw, "locks", {"defaultTTL", "maxTTL"})
    default_ttl = _duration(
        raw.get("defaultTTL"), "locks.defaultTTL", LockSettings.default_ttl, positive=True
    )
    max_ttl = _duration(raw.get("maxTTL"), "locks.maxTTL", LockSettings.max_ttl, positive=True)
    if default_ttl > max_ttl:
        raise ConfigError("locks.defaultTTL", f"must not exceed locks.maxTTL ({max_ttl}s)")
    return LockSettings(default_ttl=default_ttl, max_ttl=max_ttl)


def _parse_elections(raw: Any) -> tuple[ElectionSettings, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("elections", f"expected a list, got {type(raw).__name__}")
    elections: list[ElectionSettings] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        path = f"elections[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(item).__name__}")
        _check_keys(item, path, {"name", "leaseDuration", "renewDeadline", "retryPeriod"})
        name = item.get("name")
        if not isinstance(name, str) or not _ELECTION_RE.fullmatch(name):
            raise ConfigError(
                f"{path}.name", f"expected a name of letters, digits, '.', '_' or '-', got {name!r}"
            )
        if name in names:
            raise ConfigError(f"{path}.name", f"duplicate election {name!r}")
        names.add(name)
        election = ElectionSettings(
            name=name,
            lease_duration=_duration(
                item.get("leaseDuration"), f"{path}.leaseDuration", 15.0, positive=True
            ),
            renew_deadline=_duration(
                item.get("renewDeadline"), f"{path}.renewDeadline", 10.0, positive=True
            ),
            retry_period=_duration(
                item.get("retryPeriod"), f"{path}.retryPeriod", 2.0, positive=True
            ),
        )
        check_election_timing(election, path)
        elections.append(election)
    return tuple(elections)


def check_election_timing(election: ElectionSettings, path: str) -> None:
    """client-go's rule: leaseDuration > renewDeadline > retryPeriod, or leadership flaps."""
    if election.renew_deadline >= election.lease_duration:
        raise ConfigError(f"{path}.renewDeadline", "must be shorter than leaseDuration")
    if election.retry_period >= election.renew_deadline:
        raise ConfigError(f"{path}.retryPeriod", "must be shorter than renewDeadline")
