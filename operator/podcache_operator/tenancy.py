"""Key prefixes of CacheConfigs that share one Redis must not overlap.

Every key, lock, fence counter and election lease of a CacheConfig starts with its
effective ``keyPrefix`` (the one given, or ``<namespace>/<name>:``). When one prefix
starts another (``shop:`` and ``shop:cart:``), both tenants read, overwrite and delete
each other's keys, and one can reset the other's fences. So the operator refuses a
CacheConfig whose prefix is a prefix of, or extends, the prefix of another CacheConfig
on the same Redis.

"The same Redis" is decided from the spec alone, without DNS: two specs share a Redis
when they name a common endpoint — a URL's host, port and database, a Cluster node, or
a Sentinel address with the same master name. Host names are compared the way a pod
resolves them: lower-cased, ``.cluster.local`` and a trailing dot dropped, and a bare
``redis`` or ``redis.shop`` completed to ``redis.<namespace>.svc`` / ``redis.shop.svc``.
An IP address and a Service name of the same server are not recognised as one: that is
what the per-tenant Redis ACL user is for (see README).

Which of two overlapping CacheConfigs is refused: the one *not* already serving its
current spec (Ready with ``observedGeneration`` equal to its generation) — so a newcomer,
or an edit that introduces the overlap, is refused and the tenant in place keeps
running; when both or neither serve, the one created later (then by namespace/name).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from podcache_operator import rendering

Endpoint = tuple[str, ...]
"""("node", host, port, db) or ("sentinel", master name, host, port)."""


@dataclasses.dataclass(frozen=True)
class Tenant:
    """What the overlap check needs of one CacheConfig."""

    namespace: str
    name: str
    prefix: str
    endpoints: frozenset[Endpoint]
    serving: bool
    """Ready with its current generation: its prefix is in use by running sidecars."""
    created: str
    """``creationTimestamp`` (RFC 3339 sorts as text); "" when unknown."""

    @property
    def rank(self) -> tuple[bool, str, str, str]:
        """Lower keeps the prefix: serving first, then the older, then by namespace/name."""
        return (not self.serving, self.created, self.namespace, self.name)


@dataclasses.dataclass(frozen=True)
class Conflict:
    """``other``'s prefix overlaps ours on a Redis both name; we are the one to yield."""

    prefix: str
    other: Tenant
    endpoint: Endpoint

    def __str__(self) -> str:
        theirs = self.other.prefix
        how = "is a prefix of" if theirs.startswith(self.prefix) else "extends"
        if theirs == self.prefix:
            how = "equals"
        return (
            f"key prefix {self.prefix!r} {how} the key prefix {theirs!r} of CacheConfig"
            f" {self.other.namespace}/{self.other.name} on the same Redis"
            f" ({describe(self.endpoint)}): the two would read, overwrite and delete each"
            " other's keys and locks; choose a prefix that neither starts nor is the start"
            " of the other (or omit keyPrefix for the default <namespace>/<name>:)"
        )


def tenant(body: Mapping[str, Any]) -> Tenant | None:
    """The Redis tenant a CacheConfig body describes; None for memory or being deleted."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    if spec.get("backend") != "redis" or metadata.get("deletionTimestamp"):
        return None
    redis = spec.get("redis") or {}
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    prefix = redis.get("keyPrefix")
    if prefix is None:
        prefix = rendering.default_key_prefix(namespace=namespace, name=name)
    status = body.get("status") or {}
    ready = any(
        item.get("type") == "Ready" and item.get("status") == "True"
        for item in status.get("conditions") or []
        if isinstance(item, Mapping)
    )
    return Tenant(
        namespace=namespace,
        name=name,
        prefix=str(prefix),
        endpoints=endpoints(redis, namespace=namespace),
        serving=ready and status.get("observedGeneration") == metadata.get("generation"),
        created=str(metadata.get("creationTimestamp") or ""),
    )


def conflicts(body: Mapping[str, Any], others: Iterable[Mapping[str, Any]]) -> list[Conflict]:
    """The CacheConfigs among ``others`` that keep an overlapping prefix from ``body``."""
    me = tenant(body)
    if me is None:
        return []
    found: list[Conflict] = []
    for other_body in others:
        other = tenant(other_body)
        if other is None or (other.namespace, other.name) == (me.namespace, me.name):
            continue
        if not (me.prefix.startswith(other.prefix) or other.prefix.startswith(me.prefix)):
            continue
        shared = me.endpoints & other.endpoints
        if shared and other.rank < me.rank:
            found.append(Conflict(prefix=me.prefix, other=other, endpoint=min(shared)))
    return sorted(found, key=lambda conflict: (conflict.other.namespace, conflict.other.name))


def endpoints(redis: Mapping[str, Any], *, namespace: str) -> frozenset[Endpoint]:
    """Every endpoint a ``spec.redis`` names (see the module docstring)."""
    found: set[Endpoint] = set()
    url = redis.get("url")
    if url:
        parts = urllib.parse.urlsplit(str(url))
        if parts.scheme == "unix":
            found.add(("unix", parts.path, "", _db(parts.query, "")))
        else:
            try:
                port = str(parts.port or 6379)
            except ValueError:
                port = "6379"  # validation reports the URL; keep the check going
            host = _host(parts.hostname or "", namespace=namespace)
            found.add(("node", host, port, _db(parts.query, parts.path)))
    for node in (redis.get("cluster") or {}).get("nodes") or []:
        host, port = _address(str(node), namespace=namespace)
        found.add(("node", host, port, "0"))
    sentinel = redis.get("sentinel") or {}
    for address in sentinel.get("addresses") or []:
        host, port = _address(str(address), namespace=namespace, default_port="26379")
        found.add(("sentinel", str(sentinel.get("masterName") or ""), host, port))
    return frozenset(found)


def describe(endpoint: Endpoint) -> str:
    kind, *rest = endpoint
    if kind == "sentinel":
        return f"Sentinel master {rest[0]!r} via {rest[1]}:{rest[2]}"
    if kind == "unix":
        return f"unix socket {rest[0]}, database {rest[2]}"
    return f"{rest[0]}:{rest[1]}, database {rest[2]}"


def _host(host: str, *, namespace: str) -> str:
    host = host.lower().rstrip(".")
    host = host.removesuffix(".cluster.local")
    if host and not host.replace(".", "").isdigit() and ":" not in host:
        dots = host.count(".")
        if dots == 0:
            host = f"{host}.{namespace}.svc"
        elif dots == 1:
            host = f"{host}.svc"
    return host


def _address(address: str, *, namespace: str, default_port: str = "6379") -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        host, port = address, default_port
    return _host(host.strip("[]"), namespace=namespace), port


def _db(query: str, path: str) -> str:
    db = urllib.parse.parse_qs(query).get("db", [""])[0] or path.strip("/") or "0"
    return db if db.isdigit() else "0"
