"""The sidecar's own metrics and the one registry ``/metrics`` exposes per instance.

Two sources feed a scrape: the sidecar's metrics (HTTP requests, connections, config
reloads, backend swaps, elections joined) and the current cache's registry (the seed's
cache metrics plus the lock and election metrics the library registers there, e.g.
``<ns>_lock_held`` and ``<ns>_leader_is_leader{election}``). ``Exposition`` is a
``CollectorRegistry`` holding one collector per source, so a scrape is one
``generate_latest`` call.

Beware: the metrics namespace may change on a hot reload, but a prometheus_client
metric cannot be renamed and rebuilding the cache to rename its metrics would drop a
memory backend's data. So each source keeps the namespace it was created with and the
collector rewrites the ``<old>_`` prefix to the current namespace at scrape time.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Requests served from memory take tens of microseconds; network ones about a
# millisecond; a blocking lock acquire up to the request timeout.
HTTP_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class HttpStats(Collector):
    """``<ns>_http_requests_total`` and ``<ns>_http_request_duration_seconds``, lock-free.

    They are updated on every request, so they are plain ints and floats touched only
    by the event loop's thread (prometheus_client's metrics take a lock per update and
    per histogram bucket), turned into metric families at scrape time.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._requests: dict[tuple[str, str, int], int] = {}
        self._durations: dict[str, tuple[list[int], list[float]]] = {}
        """route -> (per-bucket counts, [sum]); the last bucket is +Inf."""

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one served request (route is the route template, never the raw path)."""
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        found = self._durations.get(route)
        if found is None:
            found = self._durations[route] = ([0] * (len(HTTP_BUCKETS) + 1), [0.0])
        found[0][bisect.bisect_left(HTTP_BUCKETS, seconds)] += 1
        found[1][0] += seconds

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            f"{self.namespace}_http_requests",
            "HTTP requests served on the socket",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in sorted(self._requests.items()):
            requests.add_metric([route, method, str(status)], count)
        durations = HistogramMetricFamily(
            f"{self.namespace}_http_request_duration_seconds",
            "Time to serve an HTTP request on the socket",
            labels=["route"],
        )
        for route, (counts, total) in sorted(self._durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*HTTP_BUCKETS, math.inf), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            durations.add_metric([route], buckets, total[0])
        return [requests, durations]


class ServerMetrics:
    """Metrics of the socket server itself, on a registry of their own."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self.http = HttpStats(namespace)
        self.registry.register(self.http)
        self.connections = Gauge(
            "http_connections",
            "Socket connections open now",
            namespace=namespace,
            registry=self.registry,
        )
        self.reloads = Counter(
            "sidecar_config_reload_total",
            "Config file reloads by result (ok, error)",
            ["result"],
            namespace=namespace,
            registry=self.registry,
        )
        self.elections_joined = Gauge(
            "sidecar_elections_joined",
            "Elections this sidecar campaigns in",
            namespace=namespace,
            registry=self.registry,
        )
        self.backend_swaps = Counter(
            "sidecar_backend_swaps_total",
            "Backends replaced by a config reload",
            namespace=namespace,
            registry=self.registry,
        )
        self.started = Gauge(
            "sidecar_start_time_seconds",
            "Unix time the sidecar started",
            namespace=namespace,
            registry=self.registry,
        )
        self.started.set(time.time())
        for result in ("ok", "error"):
            self.reloads.labels(result)
        self.observe_request = self.http.observe


class _Renamed(Collector):
    """Yields another registry's metrics with their namespace prefix rewritten."""

    def __init__(
        self, source: Callable[[], tuple[CollectorRegistry, str] | None], target: Callable[[], str]
    ) -> None:
        self._source = source
        self._target = target

    def collect(self) -> Iterable[Metric]:
        found = self._source()
        if found is None:
            return []
        registry, namespace = found
        return _rename(registry.collect(), f"{namespace}_", f"{self._target()}_")


def _rename(metrics: Iterable[Metric], old: str, new: str) -> Iterator[Metric]:
    for metric in metrics:
        if old == new or not metric.name.startswith(old):
            yield metric
            continue
        renamed = Metric(
            new + metric.name[len(old) :], metric.documentation, metric.type, metric.unit
        )
        renamed.samples = [
            sample._replace(name=new + sample.name[len(old) :])
            if sample.name.startswith(old)
            else sample
            for sample in metric.samples
        ]
        yield renamed


class Exposition:
    """The one registry ``/metrics`` serves: server metrics plus the current cache's."""

    def __init__(
        self,
        *,
        server: ServerMetrics,
        cache_source: Callable[[], tuple[CollectorRegistry, str] | None],
        namespace: Callable[[], str],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Renamed(lambda: (server.registry, server.namespace), namespace))
        self.registry.register(_Renamed(cache_source, namespace))
