"""Checks of a CacheConfig beyond what the CRD schema can say.

The schema already refuses most bad specs at ``kubectl apply``; these checks run
again in the operator because a spec may predate a stricter CRD, and because some
rules need more than one field or the cluster itself: durations must be positive
and ordered (a lease longer than its renew interval), the in-memory cache must fit
under the sidecar's memory limit, referenced Secrets must exist and hold the key.

Every problem names the spec field it is about (``spec.redis.url``), so the
condition message and the Warning event tell the user exactly what to fix.
``check_spec`` is pure; ``check_secrets`` takes the Secret lookup as a callable so
it is testable without an API server.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from podcache import config, durations
from podcache.errors import ConfigError
from podcache_operator import injection, quantities, rendering, settings

SecretFetcher = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""Secret name → the Secret object in the CacheConfig's namespace, or None when absent."""

_METRICS_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Prometheus' duration syntax (the ServiceMonitor CRD's pattern): whole units only.
_PROMETHEUS_DURATION = re.compile(
    r"0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?"
)
_LOG_LEVELS = ("debug", "info", "warning", "error")

SIDECAR_BASELINE_BYTES = 56 * 1024 * 1024
"""RSS of an idle sidecar: 49.6 MiB measured (bench/bench_memory.py), rounded up."""
MAX_BYTES_RSS_FACTOR = 1.15
"""RSS growth per byte of maxBytes, which already charges each entry's overhead: 1.11x
measured under a flood of tiny entries (bench/bench_memory.py; allocator slack)."""
INFLIGHT_BODY_BYTES = 32 * 1024 * 1024
"""Request bodies in memory at once: the sidecar's limits.maxInflightBytes default."""

_REDIS_SOURCES = ("url", "sentinel", "cluster")
MAX_WAIT_POOL_SIZE = 10_000
"""``spec.redis.waitPoolSize`` at most (the CRD's maximum): each is a Redis connection
per sidecar, and Redis serves 10,000 clients by default (``maxclients``)."""
MAX_WATCH_STREAMS = 100_000
"""``spec.sidecar.maxWatchStreams`` at most (the CRD's maximum)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec; ``field`` is the path the user has to edit."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclasses.dataclass(frozen=True)
class SecretRef:
    field: str
    name: str
    key: str


def check_spec(
    spec: Mapping[str, Any], *, namespace: str, name: str, sidecar: settings.SidecarSettings
) -> list[Problem]:
    """Every problem of a spec that can be seen without the cluster; [] when it is fine."""
    problems: list[Problem] = []
    backend = spec.get("backend", "memory")
    if backend not in ("memory", "redis"):
        return [Problem("spec.backend", f"unknown backend {backend!r} (use memory or redis)")]
    _duration(problems, spec.get("defaultTTL"), "spec.defaultTTL")
    if backend == "redis":
        problems += _check_redis(spec.get("redis"))
    elif spec.get("redis"):
        problems.append(Problem("spec.redis", "must not be set when spec.backend is memory"))
    else:
        problems += _check_memory(spec, sidecar)
    locks = spec.get("locks") or {}
    default_ttl = _duration(
        problems, locks.get("defaultTTL"), "spec.locks.defaultTTL", positive=True
    )
    max_ttl = _duration(problems, locks.get("maxTTL"), "spec.locks.maxTTL", positive=True)
    if default_ttl is not None and max_ttl is not None and default_ttl > max_ttl:
        problems.append(
            Problem(
                "spec.locks.defaultTTL",
                f"{locks['defaultTTL']} must not exceed spec.locks.maxTTL ({locks['maxTTL']})",
            )
        )
    problems += _check_sidecar_resources(spec, sidecar)
    problems += _check_elections((spec.get("leaderElection") or {}).get("elections"))
    problems += _check_metrics(spec.get("metrics") or {})
    _count(problems, (spec.get("sidecar") or {}).get("maxWatchStreams"),
           "spec.sidecar.maxWatchStreams", MAX_WATCH_STREAMS)
    allow_persist = spec.get("allowPersist")
    if allow_persist is not None and not isinstance(allow_persist, bool):
        problems.append(
            Problem("spec.allowPersist", f"expected true or false, got {allow_persist!r}")
        )
    log_level = (spec.get("sidecar") or {}).get("logLevel")
    if log_level is not None and log_level not in _LOG_LEVELS:
        problems.append(
            Problem(
                "spec.sidecar.logLevel",
                f"unknown level {log_level!r} (use one of {', '.join(_LOG_LEVELS)})",
            )
        )
    if problems:
        return problems
    # The sidecar's own parser has the last word on what we would render.
    try:
        rendering.sidecar_config(
            spec, namespace=namespace, name=name, metrics_port=sidecar.metrics_port
        )
    except ConfigError as exc:
        return [Problem(spec_field(exc.field), exc.reason)]
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        return [Problem(field if field.startswith("spec.") else "spec", message or str(exc))]
    return []


def secret_refs(spec: Mapping[str, Any]) -> list[SecretRef]:
    """The Secret keys a redis spec points at (nothing for the memory backend)."""
    if spec.get("backend") != "redis":
        return []
    redis = spec.get("redis") or {}
    refs: list[SecretRef] = []
    candidates = [
        ("spec.redis.passwordSecretRef", redis.get("passwordSecretRef"), "password"),
        (
            "spec.redis.sentinel.passwordSecretRef",
            (redis.get("sentinel") or {}).get("passwordSecretRef"),
            "password",
        ),
        ("spec.redis.tls.caSecretRef", (redis.get("tls") or {}).get("caSecretRef"), "ca.crt"),
    ]
    for field, ref, default_key in candidates:
        if isinstance(ref, Mapping) and ref.get("name"):
            refs.append(
                SecretRef(
                    field=field, name=str(ref["name"]), key=str(ref.get("key") or default_key)
                )
            )
    return refs


async def check_secrets(spec: Mapping[str, Any], *, fetch: SecretFetcher) -> list[Problem]:
    """Referenced Secrets that are missing or lack the key."""
    problems: list[Problem] = []
    for ref in secret_refs(spec):
        secret = await fetch(ref.name)
        if secret is None:
            problems.append(Problem(ref.field, f"Secret {ref.name!r} not found"))
            continue
        keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
        if ref.key not in keys:
            problems.append(Problem(ref.field, f"Secret {ref.name!r} has no key {ref.key!r}"))
    return problems


def spec_field(config_field: str) -> str:
    """A sidecar-config field path (``config.url``) → the CacheConfig field that produced it."""
    head, _, rest = config_field.partition(".")
    if head == "config":
        first = rest.split(".", 1)[0]
        if first in ("maxItems", "maxBytes"):
            return f"spec.memory.{rest}"
        if first == "defaultTTL":
            return "spec.defaultTTL"
        return f"spec.redis.{rest}" if rest else "spec.redis"
    if head.startswith("elections"):
        return "spec.leaderElection." + head + (f".{rest}" if rest else "")
    if head == "logLevel":
        return "spec.sidecar.logLevel"
    if config_field == "limits.maxWatchStreams":
        return "spec.sidecar.maxWatchStreams"
    if config_field == "limits.allowPersist":
        return "spec.allowPersist"
    if head == "type":
        return "spec.backend"
    return f"spec.{config_field}"


def _duration(
    problems: list[Problem], value: Any, field: str, *, positive: bool = False
) -> float | None:
    if value is None:
        return None
    try:
        seconds = durations.parse_duration(value, field=field)
    except ValueError as exc:
        problems.append(Problem(field, str(exc).split(": ", 1)[-1]))
        return None
    if positive and seconds <= 0:
        problems.append(Problem(field, f"must be greater than zero, got {value!r}"))
        return None
    return seconds


def _count(problems: list[Problem], value: Any, field: str, maximum: int) -> None:
    """A whole number from 1 to ``maximum`` (a spec from before the CRD's bounds)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        problems.append(Problem(field, f"must be a whole number from 1 to {maximum},"
                                f" got {value!r}"))


def _check_redis(redis: Any) -> list[Problem]:
    if not isinstance(redis, Mapping):
        return [Problem("spec.redis", "required when spec.backend is redis")]
    problems: list[Problem] = []
    given = [source for source in _REDIS_SOURCES if redis.get(source)]
    if len(given) != 1:
        detail = f" (got {', '.join(given)})" if given else ""
        problems.append(
            Problem("spec.redis", f"needs exactly one of url, sentinel or cluster{detail}")
        )
    url = redis.get("url")
    if url is not None:
        # The sidecar's own rule: a scheme it serves and no credentials anywhere in the URL
        # (it lands in a ConfigMap); the message never echoes the URL itself.
        try:
            config.check_url(str(url), field="spec.redis.url")
        except ConfigError as exc:
            message = exc.reason.replace(
                "set config.username, and the password through config.passwordFile or "
                "PODCACHE_REDIS_PASSWORD",
                "give the user name in spec.redis.username and the password through"
                " spec.redis.passwordSecretRef",
            )
            problems.append(Problem("spec.redis.url", message))
    username = redis.get("username")
    if username is not None and not (
        isinstance(username, str) and username and not any(c.isspace() for c in username)
    ):  # a spec from before the CRD's pattern
        problems.append(Problem("spec.redis.username", "must be a non-empty name without"
                                " white space (a Redis ACL user)"))
    if redis.get("keyPrefix") == "":  # a spec from before the CRD's minLength
        problems.append(Problem("spec.redis.keyPrefix", "must not be empty (omit it for the "
                                "default <namespace>/<name>:)"))
    _count(problems, redis.get("waitPoolSize"), "spec.redis.waitPoolSize", MAX_WAIT_POOL_SIZE)
    timeouts = redis.get("timeouts") or {}
    _duration(problems, timeouts.get("connect"), "spec.redis.timeouts.connect", positive=True)
    _duration(problems, timeouts.get("operation"), "spec.redis.timeouts.operation", positive=True)
    problems += _check_near_cache(redis)
    return problems


def _check_near_cache(redis: Mapping[str, Any]) -> list[Problem]:
    near = redis.get("nearCache")
    if near is None:
        return []
    if not isinstance(near, Mapping):
        return [Problem("spec.redis.nearCache", "expected an object")]
    problems: list[Problem] = []
    enabled = near.get("enabled", False)
    if not isinstance(enabled, bool):
        problems.append(Problem("spec.redis.nearCache.enabled", "expected true or false"))
    max_items = near.get("maxItems")
    if max_items is not None and (
        isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1
    ):
        problems.append(Problem("spec.redis.nearCache.maxItems", "must be a whole number >= 1"))
    if near.get("maxBytes") is not None:
        try:
            rendering.parse_quantity(near["maxBytes"], field="spec.redis.nearCache.maxBytes")
        except ValueError as exc:
            problems.append(Problem("spec.redis.nearCache.maxBytes", str(exc).split(": ", 1)[-1]))
    _duration(problems, near.get("maxTTL"), "spec.redis.nearCache.maxTTL", positive=True)
    return problems


def _check_memory(spec: Mapping[str, Any], sidecar: settings.SidecarSettings) -> list[Problem]:
    memory = spec.get("memory") or {}
    try:
        max_bytes = rendering.parse_quantity(
            memory.get("maxBytes", rendering.DEFAULT_MAX_BYTES), field="spec.memory.maxBytes"
        )
    except ValueError as exc:
        return [Problem("spec.memory.maxBytes", str(exc).split(": ", 1)[-1])]
    limits = ((spec.get("sidecar") or {}).get("resources") or {}).get("limits") or {}
    limit_text = limits.get("memory") if limits else None
    if limit_text is None and not (spec.get("sidecar") or {}).get("resources"):
        limit_text = sidecar.memory_limit
    if limit_text is None:
        return []
    try:
        limit = rendering.parse_quantity(limit_text, field="memory limit")
    except ValueError:
        return []  # not a byte quantity we understand; the apiserver judges resources
    # maxBytes already charges each entry's overhead (ENTRY_OVERHEAD in the memory
    # backend); the process needs its baseline and the in-flight bodies on top.
    fixed = SIDECAR_BASELINE_BYTES + INFLIGHT_BODY_BYTES
    if max_bytes * MAX_BYTES_RSS_FACTOR + fixed > limit:
        room = int(max(0, limit - fixed) / MAX_BYTES_RSS_FACTOR)
        return [
            Problem(
                "spec.memory.maxBytes",
                f"{memory.get('maxBytes', rendering.DEFAULT_MAX_BYTES)} does not fit under the"
                f" sidecar's memory limit {limit_text} with the sidecar's baseline"
                f" ({SIDECAR_BASELINE_BYTES >> 20}Mi) and in-flight request bodies"
                f" ({INFLIGHT_BODY_BYTES >> 20}Mi): at most {room >> 20}Mi fits;"
                " lower it or raise spec.sidecar.resources.limits.memory",
            )
        ]
    return []


def _check_sidecar_resources(
    spec: Mapping[str, Any], sidecar: settings.SidecarSettings
) -> list[Problem]:
    """Requests over limits make the apiserver refuse every pod the sidecar goes into."""
    given = (spec.get("sidecar") or {}).get("resources")
    if given is not None and not isinstance(given, Mapping):
        return [Problem("spec.sidecar.resources", "expected requests and limits")]
    field = "spec.sidecar.resources" if given else "the operator's default sidecar resources"
    return [
        Problem(field, f"{found}: pods selecting this CacheConfig would be refused")
        for found in quantities.requests_over_limits(injection.sidecar_resources(given, sidecar))
    ]


def _check_elections(elections: Any) -> list[Problem]:
    if elections is None:
        return []
    if not isinstance(elections, list):
        return [Problem("spec.leaderElection.elections", "expected a list")]
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, item in enumerate(elections):
        path = f"spec.leaderElection.elections[{index}]"
        if not isinstance(item, Mapping) or not item.get("name"):
            problems.append(Problem(f"{path}.name", "required"))
            continue
        if item["name"] in seen:
            problems.append(Problem(f"{path}.name", f"duplicate election {item['name']!r}"))
        seen.add(item["name"])
        lease = _duration(
            problems,
            item.get("leaseDuration", rendering.DEFAULT_LEASE_DURATION),
            f"{path}.leaseDuration",
            positive=True,
        )
        interval = _duration(
            problems,
            item.get("renewInterval", rendering.DEFAULT_RENEW_INTERVAL),
            f"{path}.renewInterval",
            positive=True,
        )
        # The deadline between them is rendered at millisecond precision: leave it room.
        if lease is not None and interval is not None and lease - interval < 0.002:
            problems.append(
                Problem(
                    f"{path}.leaseDuration",
                    f"must be longer than renewInterval ({item.get('renewInterval')})",
                )
            )
    return problems


def _check_metrics(metrics: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    namespace = metrics.get("namespace")
    if namespace is not None and not (
        isinstance(namespace, str) and _METRICS_NAMESPACE.fullmatch(namespace)
    ):
        problems.append(
            Problem(
                "spec.metrics.namespace", f"must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}"
            )
        )
    monitor = metrics.get("serviceMonitor") or {}
    interval = monitor.get("interval")
    field = "spec.metrics.serviceMonitor.interval"
    if _duration(problems, interval, field, positive=True) is not None and not (
        _PROMETHEUS_DURATION.fullmatch(str(interval))
    ):
        problems.append(
            Problem(field, f"must be a Prometheus duration like 30s or 1m30s, got {interval!r}")
        )
    return problems
