"""The seed's cache metrics, with exactly the names DESIGN.md fixes.

``CacheMetrics`` registers on the registry it is given (one per cache instance),
never on prometheus_client's global default registry: two caches in one process
(tests, the sidecar reloading its config) must not collide on metric names.

The operation label has three values only (get, set, delete); the conditional
writes ``set_nx`` and ``set_if_match`` count as ``set`` so dashboards written for
the seed keep working. Label combinations are created up front so a scrape shows
zeros rather than missing series before the first call.

The hot path counts without prometheus_client (issue 11): its counters and histogram
take a lock per update and the histogram scans its buckets, ~4 us per cache call, a
tenth of a memory GET. ``observe`` adds to plain ints and floats touched only by the
event loop's thread, and ``_Merged`` adds them to the prometheus objects' own samples at
scrape time, so the exposition is exactly what it was. ``requests``/``duration``/``hits``/
``misses`` stay real prometheus metrics (not registered themselves: ``_Merged`` yields
them) for callers that count other operations through ``labels(...)``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

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
            registry=None,  # yielded by _Merged with the lock-free counts added
        )
        self.duration = Histogram(
            "cache_operation_duration_seconds",
            "Duration of cache operations in seconds",
            ["operation"],
            namespace=namespace,
            registry=None,
            buckets=DURATION_BUCKETS,
        )
        self.items = Gauge(
            "cache_items",
            "Current number of items in the cache",
            namespace=namespace,
            registry=registry,
        )
        self.hits = Counter(
            "cache_hits", "Total number of cache hits", namespace=namespace, registry=None
        )
        self.misses = Counter(
            "cache_misses", "Total number of cache misses", namespace=namespace, registry=None
        )
        # Children created up front: a scrape shows zeros before the first call.
        for operation, statuses in _STATUSES.items():
            self.duration.labels(operation)
            for status in statuses:
                self.requests.labels(operation, status)
        self._counts: dict[tuple[str, str], int] = {
            (operation, status): 0 for operation, statuses in _STATUSES.items()
            for status in statuses
        }
        self._buckets: dict[str, list[int]] = {
            operation: [0] * (len(DURATION_BUCKETS) + 1) for operation in OPERATIONS
        }
        """Per operation, observations per bucket (not cumulative); the last is +Inf."""
        self._sums: dict[str, float] = dict.fromkeys(OPERATIONS, 0.0)
        self._pending: list[Callable[[], None]] = []
        """Folds of counts kept elsewhere until a scrape (``add_pending``)."""
        registry.register(_Merged(self))

    def observe(self, operation: Operation, status: Status, seconds: float) -> None:
        """Count one finished call and its duration (a get's status also says hit or miss)."""
        self._counts[operation, status] += 1
        self._buckets[operation][bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._sums[operation] += seconds

    def observe_many(
        self, operation: Operation, status: Status, count: int, seconds: float
    ) -> None:
        """Count ``count`` finished calls that took ``seconds`` together (a batch run in
        one pass, e.g. a RESP pipeline on the memory backend): each is observed at the
        batch's mean duration, so counts, sums and buckets stay consistent."""
        self._counts[operation, status] += count
        each = seconds / count
        self._buckets[operation][bisect.bisect_left(DURATION_BUCKETS, each)] += count
        self._sums[operation] += seconds

    def add_quick(
        self, *, hits: int, misses: int, sets: int, get_seconds: float, set_seconds: float
    ) -> None:
        """Count GETs and SETs that each took less than the first bucket's bound
        (``DURATION_BUCKETS[0]``): as ``observe_many`` would, without finding the bucket."""
        counts = self._counts
        counts["get", "hit"] += hits
        counts["get", "miss"] += misses
        counts["set", "ok"] += sets
        buckets = self._buckets
        buckets["get"][0] += hits + misses
        buckets["set"][0] += sets
        self._sums["get"] += get_seconds
        self._sums["set"] += set_seconds

    def add_pending(self, fold: Callable[[], None]) -> None:
        """Call ``fold`` before every scrape: it adds counts its owner kept by itself since
        the last one (the RESP memory path tallies per batch in plain attributes, as
        counting each batch here cost a fifth of an unpipelined GET's Python time)."""
        self._pending.append(fold)

    def merged(self) -> list[Metric]:
        """The four metrics with the lock-free counts added (what a scrape shows)."""
        for fold in self._pending:
            fold()
        counts = self._counts
        added: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        requests = f"{self.namespace}_cache_requests_total"
        for (operation, status), count in counts.items():
            added[requests, (("operation", operation), ("status", status))] = count
        duration = f"{self.namespace}_cache_operation_duration_seconds"
        for operation, buckets in self._buckets.items():
            cumulative = 0
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), buckets, strict=True):
                cumulative += count
                labels = (("le", _bound_text(bound)), ("operation", operation))
                added[f"{duration}_bucket", labels] = cumulative
            added[f"{duration}_count", (("operation", operation),)] = cumulative
            added[f"{duration}_sum", (("operation", operation),)] = self._sums[operation]
        added[f"{self.namespace}_cache_hits_total", ()] = sum(
            count for (_, status), count in counts.items() if status == "hit")
        added[f"{self.namespace}_cache_misses_total", ()] = sum(
            count for (_, status), count in counts.items() if status == "miss")
        metrics: list[Metric] = []
        for source in (self.requests, self.duration, self.hits, self.misses):
            for metric in source.collect():
                metric.samples = [_plus(sample, added) for sample in metric.samples]
                metrics.append(metric)
        return metrics

    def set_items(self, count: int) -> None:
        """Record a freshly counted number of items (the Redis backend's refresh)."""
        self.items.set(count)

    def track_items(self, count: Callable[[], float]) -> None:
        """Read the item count at scrape time (the memory backend knows it exactly)."""
        self.items.set_function(count)


def _bound_text(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))


def _plus(sample: Sample, added: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> Sample:
    extra = added.get((sample.name, tuple(sorted(sample.labels.items()))))
    return sample if not extra else sample._replace(value=sample.value + extra)


class _Merged(Collector):
    """Yields ``CacheMetrics``' prometheus metrics with its lock-free counts added."""

    def __init__(self, metrics: CacheMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.merged()


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it can start a Prometheus metric name, else raise ConfigError."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(
            "metrics.namespace",
            f"{namespace!r} is not a valid Prometheus name prefix "
            "(letters, digits, '_' and ':', not starting with a digit)",
        )
    return namespace
