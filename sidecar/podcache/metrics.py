"""The seed's cache metrics, with exactly the names DESIGN.md fixes.

``CacheMetrics`` registers on the registry it is given (one per cache instance),
never on prometheus_client's global default registry: two caches in one process
(tests, the sidecar reloading its config) must not collide on metric names.

The operation label has three values only (get, set, delete); the conditional
writes ``set_nx`` and ``set_if_match`` count as ``set`` so dashboards written for
the seed keep working. Label combinations are created up front so a scrape shows
zeros rather than missing series before the first call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from podcache.errors import ConfigError

Operation = Literal["get", "set", "delete"]
Status = Literal["hit", "miss", "error", "ok"]

OPERATIONS: tuple[Operation, ...] = ("get", "set", "delete")
_STATUSES: dict[Operation, tuple[Status, ...]] = {
    "get": ("hit", "miss", "error"),
    "set": ("ok", "error"),
    "delete": ("ok", "error"),
}

_NAMESPACE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

# A cache call takes microseconds in memory and ~0.1-2 ms over the network; the
# default Prometheus buckets start at 5 ms and would put nearly everything in one.
DURATION_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class CacheMetrics:
    """Counters, histogram and gauge of one cache instance, on its own registry."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "lab") -> None:
        check_namespace(namespace)
        self.registry = registry
        self.namespace = namespace
        self.requests = Counter(
            "cache_requests_total",
            "Total number of cache requests",
            ["operation", "status"],
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            "cache_operation_duration_seconds",
            "Duration of cache operations in seconds",
            ["operation"],
            namespace=namespace,
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.items = Gauge(
            "cache_items",
            "Current number of items in the cache",
            namespace=namespace,
            registry=registry,
        )
        self.hits = Counter(
            "cache_hits", "Total number of cache hits", namespace=namespace, registry=registry
        )
        self.misses = Counter(
            "cache_misses", "Total number of cache misses", namespace=namespace, registry=registry
        )
        # Bound children up front: labels() costs a lock and a dict build per call,
        # a measurable share of a ~60 us Redis round trip.
        self._requests: dict[tuple[str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        for operation, statuses in _STATUSES.items():
            self._durations[operation] = self.duration.labels(operation)
            for status in statuses:
                self._requests[operation, status] = self.requests.labels(operation, status)

    def observe(self, operation: Operation, status: Status, seconds: float) -> None:
        """Count one finished call and its duration; a get also feeds hits/misses."""
        self._requests[operation, status].inc()
        self._durations[operation].observe(seconds)
        if status == "hit":
            self.hits.inc()
        elif status == "miss":
            self.misses.inc()

    def set_items(self, count: int) -> None:
        """Record a freshly counted number of items (the Redis backend's refresh)."""
        self.items.set(count)

    def track_items(self, count: Callable[[], float]) -> None:
        """Read the item count at scrape time (the memory backend knows it exactly)."""
        self.items.set_function(count)


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it can start a Prometheus metric name, else raise ConfigError."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(
            "metrics.namespace",
            f"{namespace!r} is not a valid Prometheus name prefix "
            "(letters, digits, '_' and ':', not starting with a digit)",
        )
    return namespace
