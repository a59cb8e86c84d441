"""Prometheus metrics of the lock services: ``<namespace>_lock_*``.

One ``LockMetrics`` per (registry, namespace): building a second lock service on the
same registry (a config reload, the memory and the Redis service side by side in a
test) reuses the collectors instead of failing on a duplicate registration. The held
gauge sums over every live service, read at scrape time.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Lock waits and holds span milliseconds (a hot counter) to minutes (a batch job).
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_HOLD_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class _Counts(Protocol):
    def held_count(self) -> int: ...


class LockMetrics:
    """The collectors; services call ``.acquisitions.labels(outcome=...).inc()`` etc."""

    _cache: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, LockMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry, *, namespace: str) -> None:
        common: dict[str, Any] = {"namespace": namespace, "subsystem": "lock", "registry": registry}
        self.acquisitions = Counter(
            "acquisitions", "Lock acquisition attempts by outcome "
            "(acquired, contended: held and no wait, timeout: waited in vain, "
            "too_many_waiters: refused a wait connection, error).",
            ["outcome"], **common,
        )
        self.contention_wait = Histogram(
            "contention_wait_seconds",
            "Time acquisitions spent waiting for a lock someone else held.",
            buckets=_WAIT_BUCKETS, **common,
        )
        self.hold = Histogram(
            "hold_seconds", "Time from acquire to release of locks released by their owner.",
            buckets=_HOLD_BUCKETS, **common,
        )
        self.releases = Counter(
            "releases", "Lock releases by outcome (released, not_owner, error).",
            ["outcome"], **common,
        )
        self.refreshes = Counter(
            "refreshes", "Lock refreshes by outcome (refreshed, not_owner, error).",
            ["outcome"], **common,
        )
        self.held = Gauge(
            "held", "Locks currently held through this process (lapsed leases excluded).",
            **common,
        )
        self._services: weakref.WeakSet[_Counts] = weakref.WeakSet()
        self.held.set_function(self._held_now)
        # The children of every call's common outcome, bound once: ``labels()`` takes a
        # lock and builds a key on each call.
        self.acquired = self.acquisitions.labels(outcome="acquired")
        self.released = self.releases.labels(outcome="released")
        self.refreshed = self.refreshes.labels(outcome="refreshed")
        for outcome in ("acquired", "contended", "timeout", "error"):
            self.acquisitions.labels(outcome=outcome)  # export zeros, so rate() works at once
        for outcome in ("released", "not_owner", "error"):
            self.releases.labels(outcome=outcome)
        for outcome in ("refreshed", "not_owner", "error"):
            self.refreshes.labels(outcome=outcome)

    @classmethod
    def of(cls, registry: CollectorRegistry, *, namespace: str) -> LockMetrics:
        """The metrics for this registry and namespace, created on first use."""
        per_namespace = cls._cache.setdefault(registry, {})
        metrics = per_namespace.get(namespace)
        if metrics is None:
            metrics = per_namespace[namespace] = cls(registry, namespace=namespace)
        return metrics

    def track(self, service: _Counts) -> None:
        self._services.add(service)

    def _held_now(self) -> float:
        return float(sum(service.held_count() for service in list(self._services)))
