"""CacheConfig spec → the objects the operator owns (pure functions, no API calls).

One CacheConfig becomes: the sidecar's config file (the mapping the sidecar's own
``podcache.configfile.parse`` accepts — every rendering is checked by it), a
ConfigMap holding it, a headless Service over the labelled pods' metrics port,
and a ServiceMonitor. Ownership (``ownerReferences``) is added by the caller
with ``kopf.adopt``, so these functions need nothing but the spec and names.

Beware: secrets never enter the ConfigMap. The Redis password reaches the
sidecar as the env var ``PODCACHE_REDIS_PASSWORD`` (see ``injection``) and the
TLS CA as a mounted Secret file whose *path* is all the config carries.
The defaults below mirror the CRD's, because a spec may arrive without them
(an older CRD, or an apiserver that did not default a field yet).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from podcache import configfile, durations

GROUP = "podcache.io"
VERSION = "v1alpha1"
KIND = "CacheConfig"
CONFIG_LABEL = "podcache.io/config"
"""Pods opt in with ``podcache.io/config: <cacheconfig name>``."""
HASH_ANNOTATION = "podcache.io/config-hash"
CONFIG_KEY = "config.yaml"
SOCKET_DIR = "/var/run/podcache"
SOCKET_PATH = f"{SOCKET_DIR}/cache.sock"
CONFIG_DIR = "/etc/podcache"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
REDIS_CA_DIR = "/var/run/secrets/podcache/redis-ca"
REDIS_CA_PATH = f"{REDIS_CA_DIR}/ca.crt"
METRICS_PORT_NAME = "metrics"
"""The metrics port's name on our own Service (what the ServiceMonitor scrapes)."""
SIDECAR_PORT_NAME = "podcache-prom"
"""The container port's name in the pod: unique there (apps often have a ``metrics``
port of their own), and never what the Service targets: it targets the number, which
also works where endpoints controllers do not resolve native sidecars' named ports."""
MANAGED_BY = "podcache-operator"

DEFAULT_TTL = "5m"
DEFAULT_MAX_ITEMS = 100_000
DEFAULT_MAX_BYTES = "64Mi"
DEFAULT_CONNECT_TIMEOUT = "2s"
DEFAULT_OPERATION_TIMEOUT = "1s"
DEFAULT_NEAR_MAX_ITEMS = 10_000  # the sidecar's own defaults (config.NearCacheSettings)
DEFAULT_NEAR_MAX_BYTES = "64Mi"
DEFAULT_NEAR_MAX_TTL = "1m"
DEFAULT_LOCK_TTL = "30s"
DEFAULT_LOCK_MAX_TTL = "5m"
DEFAULT_LEASE_DURATION = "15s"
DEFAULT_RENEW_INTERVAL = "2s"
DEFAULT_METRICS_NAMESPACE = "lab"
DEFAULT_SCRAPE_INTERVAL = "30s"
DEFAULT_LOG_LEVEL = "info"

_MAX_NAME = 63  # Services are DNS labels; keep every owned object within that
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # DNS-1035: what a Service name must be
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIXES = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


@dataclasses.dataclass(frozen=True)
class Rendered:
    """Everything one CacheConfig renders to, ready to apply."""

    config: dict[str, Any]
    config_hash: str
    config_map: dict[str, Any]
    service: dict[str, Any]
    service_monitor: dict[str, Any] | None
    """None when ``spec.metrics.serviceMonitor.enabled`` is false."""


def object_name(cacheconfig: str) -> str:
    """Name of the ConfigMap, Service and ServiceMonitor of a CacheConfig: always a
    DNS-1035 label. A CacheConfig name that would not make one (too long, or with dots:
    CacheConfigs created before the CRD refused those) gets a hash suffix, so that
    ``a.b`` and ``a-b`` still own different objects."""
    name = f"podcache-{cacheconfig}"
    if len(name) <= _MAX_NAME and _DNS_LABEL.fullmatch(name):
        return name
    digest = hashlib.sha256(cacheconfig.encode()).hexdigest()[:8]
    safe = re.sub(r"[^a-z0-9-]", "-", name.lower())[: _MAX_NAME - 9].rstrip("-")
    return f"{safe}-{digest}"


def parse_quantity(value: object, *, field: str) -> int:
    """A Kubernetes quantity ("64Mi", "1G", 1000) as whole bytes; ValueError names ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a quantity like '64Mi', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: must not be negative, got {value}")
        return value
    match = _QUANTITY.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"{field}: expected a quantity like '64Mi' or '1G', got {value!r}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{field}: not a number: {value!r}") from None
    return int(number * _SUFFIXES[match.group(2)])


def labels(cacheconfig: str, *, component: str) -> dict[str, str]:
    """Recommended labels of every owned object (and the Service's own selector key)."""
    return {
        "app.kubernetes.io/name": "podcache",
        "app.kubernetes.io/instance": cacheconfig,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        CONFIG_LABEL: cacheconfig,
    }


def default_key_prefix(*, namespace: str, name: str) -> str:
    """Two CacheConfigs sharing a Redis never see each other's keys unless they ask to."""
    return f"{namespace}/{name}:"


def metrics_port_of(spec: Mapping[str, Any], default: int) -> int:
    """The sidecars' metrics port: ``spec.metrics.port``, else the operator's default."""
    port = (spec.get("metrics") or {}).get("port")
    return port if isinstance(port, int) and not isinstance(port, bool) else default


def sidecar_config(
    spec: Mapping[str, Any], *, namespace: str, name: str, metrics_port: int
) -> dict[str, Any]:
    """The sidecar's config file as a mapping; ``ConfigError`` if the sidecar would refuse it.
    ``metrics_port`` is the operator's default, which ``spec.metrics.port`` overrides."""
    metrics_port = metrics_port_of(spec, metrics_port)
    backend = spec.get("backend") or "memory"
    config: dict[str, Any] = {"defaultTTL": spec.get("defaultTTL") or DEFAULT_TTL}
    if backend == "memory":
        memory = spec.get("memory") or {}
        config["maxItems"] = memory.get("maxItems", DEFAULT_MAX_ITEMS)
        config["maxBytes"] = parse_quantity(
            memory.get("maxBytes", DEFAULT_MAX_BYTES), field="spec.memory.maxBytes"
        )
    else:
        config.update(_redis_config(spec.get("redis") or {}, namespace=namespace, name=name))
    locks = spec.get("locks") or {}
    metrics = spec.get("metrics") or {}
    rendered: dict[str, Any] = {
        "type": backend,
        "config": config,
        "socket": SOCKET_PATH,
        "metrics": {
            "namespace": metrics.get("namespace") or DEFAULT_METRICS_NAMESPACE,
            "port": metrics_port,
        },
        "locks": {
            "defaultTTL": locks.get("defaultTTL") or DEFAULT_LOCK_TTL,
            "maxTTL": locks.get("maxTTL") or DEFAULT_LOCK_MAX_TTL,
        },
        "elections": [
            _election(item) for item in (spec.get("leaderElection") or {}).get("elections") or []
        ],
        "logLevel": (spec.get("sidecar") or {}).get("logLevel") or DEFAULT_LOG_LEVEL,
    }
    limits: dict[str, Any] = {}
    watch_streams = (spec.get("sidecar") or {}).get("maxWatchStreams")
    if watch_streams is not None:
        # Only when set, like the fields below: absent keeps the sidecar's default and
        # the ConfigMaps (and their hashes) of existing CacheConfigs unchanged.
        limits["maxWatchStreams"] = watch_streams
    allow_persist = spec.get("allowPersist")
    if allow_persist is not None and allow_persist is not False:
        limits["allowPersist"] = allow_persist  # not a bool: the sidecar's parser refuses it
    if limits:
        rendered["limits"] = limits
    if not redis_socket_enabled(spec):
        # Only when off: left out means on, so existing ConfigMaps render as before.
        rendered["resp"] = {"enabled": False}
    configfile.parse(rendered)  # the sidecar's own parser is the judge of what we render
    return rendered


def redis_socket_enabled(spec: Mapping[str, Any]) -> bool:
    """``spec.sidecar.redisSocket``: the Redis-protocol socket, on unless set to false."""
    return (spec.get("sidecar") or {}).get("redisSocket") is not False


def _redis_config(redis: Mapping[str, Any], *, namespace: str, name: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if redis.get("url"):
        config["url"] = redis["url"]
    if redis.get("sentinel"):
        sentinel = redis["sentinel"]
        config["sentinel"] = {
            "masterName": sentinel.get("masterName"),
            "addresses": list(sentinel.get("addresses") or []),
        }
    if redis.get("cluster"):
        config["cluster"] = {"nodes": list(redis["cluster"].get("nodes") or [])}
    if redis.get("username"):
        config["username"] = redis["username"]  # the password stays in its Secret (injection)
    if redis.get("waitPoolSize") is not None:
        config["waitPoolSize"] = redis["waitPoolSize"]
    prefix = redis.get("keyPrefix")
    config["keyPrefix"] = (
        default_key_prefix(namespace=namespace, name=name) if prefix is None else prefix
    )
    timeouts = redis.get("timeouts") or {}
    config["timeouts"] = {
        "connect": timeouts.get("connect") or DEFAULT_CONNECT_TIMEOUT,
        "operation": timeouts.get("operation") or DEFAULT_OPERATION_TIMEOUT,
    }
    near = redis.get("nearCache") or {}
    if near.get("enabled"):  # left out when off: existing ConfigMaps render as before
        config["nearCache"] = {
            "enabled": True,
            "maxItems": near.get("maxItems", DEFAULT_NEAR_MAX_ITEMS),
            "maxBytes": parse_quantity(
                near.get("maxBytes", DEFAULT_NEAR_MAX_BYTES), field="spec.redis.nearCache.maxBytes"
            ),
            "maxTTL": near.get("maxTTL") or DEFAULT_NEAR_MAX_TTL,
        }
    tls = redis.get("tls") or {}
    if (
        tls.get("enabled")
        or tls.get("caSecretRef")
        or str(redis.get("url", "")).startswith("rediss://")
    ):
        rendered_tls: dict[str, Any] = {
            "enabled": True,
            "insecureSkipVerify": bool(tls.get("insecureSkipVerify", False)),
        }
        if tls.get("caSecretRef"):
            rendered_tls["caFile"] = REDIS_CA_PATH
        config["tls"] = rendered_tls
    return config


def _election(item: Mapping[str, Any]) -> dict[str, Any]:
    """CRD ``{leaseDuration, renewInterval}`` → the sidecar's client-go triple.

    ``renewInterval`` is how often the holder renews (client-go's retryPeriod); the
    renew deadline sits at client-go's 2/3 of the lease, or halfway between the
    interval and the lease when the interval is longer than that.
    """
    lease_text = item.get("leaseDuration") or DEFAULT_LEASE_DURATION
    interval_text = item.get("renewInterval") or DEFAULT_RENEW_INTERVAL
    lease = durations.parse_duration(lease_text, field="leaseDuration")
    interval = durations.parse_duration(interval_text, field="renewInterval")
    deadline = lease * 2 / 3
    if deadline <= interval:
        deadline = (lease + interval) / 2
    return {
        "name": item.get("name"),
        "leaseDuration": lease_text,
        "renewDeadline": durations.format_duration(deadline),
        "retryPeriod": interval_text,
    }


def dump_config(config: Mapping[str, Any]) -> str:
    """Stable YAML text: the same spec always gives the same bytes (and hash).

    Remembered by the config's JSON (which tells 1, 1.0 and true apart, as YAML does):
    every reconciliation renders once and the drift check of each object it writes
    renders again, and PyYAML's emitter takes 0.3-0.5 ms where ``json.dumps`` takes
    ~15 us. Not libyaml's ``CSafeDumper``: its text differs in corner cases (an empty
    key), and a changed text is a changed hash, so every sidecar would reload.
    """
    return _yaml_of_json(json.dumps(config))


@functools.lru_cache(maxsize=1024)
def _yaml_of_json(config_json: str) -> str:
    text: str = yaml.safe_dump(json.loads(config_json), sort_keys=False, default_flow_style=False)
    return text


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_map(*, namespace: str, name: str, text: str, digest: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": object_name(name),
            "namespace": namespace,
            "labels": labels(name, component="sidecar-config"),
            "annotations": {HASH_ANNOTATION: digest},
        },
        "data": {CONFIG_KEY: text},
    }


def service(*, namespace: str, name: str, metrics_port: int) -> dict[str, Any]:
    """Headless: Prometheus scrapes every sidecar, not a load-balanced one."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(name),
            "namespace": namespace,
            "labels": labels(name, component="sidecar-metrics"),
        },
        "spec": {
            "clusterIP": "None",
            "selector": {CONFIG_LABEL: name},
            "ports": [
                {
                    "name": METRICS_PORT_NAME,
                    "port": metrics_port,
                    "targetPort": metrics_port,
                    "protocol": "TCP",
                }
            ],
            # Metrics of a sidecar that is starting are still worth scraping.
            "publishNotReadyAddresses": True,
        },
    }


def service_monitor(spec: Mapping[str, Any], *, namespace: str, name: str) -> dict[str, Any] | None:
    monitor = (spec.get("metrics") or {}).get("serviceMonitor") or {}
    if not monitor.get("enabled", True):
        return None
    extra = {str(key): str(value) for key, value in (monitor.get("labels") or {}).items()}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": object_name(name),
            "namespace": namespace,
            "labels": {**extra, **labels(name, component="sidecar-metrics")},
        },
        "spec": {
            "selector": {
                "matchLabels": {
                    CONFIG_LABEL: name,
                    "app.kubernetes.io/component": "sidecar-metrics",
                    "app.kubernetes.io/managed-by": MANAGED_BY,
                }
            },
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": [
                {
                    "port": METRICS_PORT_NAME,
                    "path": "/metrics",
                    "interval": monitor.get("interval") or DEFAULT_SCRAPE_INTERVAL,
                }
            ],
        },
    }


def render(spec: Mapping[str, Any], *, namespace: str, name: str, metrics_port: int) -> Rendered:
    """All objects of one CacheConfig; ``ConfigError``/``ValueError`` if the sidecar refuses it."""
    metrics_port = metrics_port_of(spec, metrics_port)
    config = sidecar_config(spec, namespace=namespace, name=name, metrics_port=metrics_port)
    text = dump_config(config)
    digest = config_hash(text)
    return Rendered(
        config=config,
        config_hash=digest,
        config_map=config_map(namespace=namespace, name=name, text=text, digest=digest),
        service=service(namespace=namespace, name=name, metrics_port=metrics_port),
        service_monitor=service_monitor(spec, namespace=namespace, name=name),
    )
