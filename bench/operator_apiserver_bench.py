"""Operator benchmark on a real control plane (etcd, kube-apiserver, kube-controller-manager).

The KMock variant (``operator_bench.py``) isolates the operator; this one measures what
a user's cluster sees: the chart installed with the built helm, the operator as a local
process under the chart's ServiceAccount, the apiserver calling its webhook over TLS.

Prints:

* N CacheConfigs created through the apiserver by 4 concurrent clients → seconds from
  the first create until every one is Ready at its generation (issue 18's target: 200
  in ≤ 5 s);
* labelled pods created at a steady rate (open loop) so the apiserver calls the webhook
  → the webhook's latency from the apiserver's own
  ``apiserver_admission_webhook_admission_duration_seconds`` histogram (p50, p99 by
  interpolation within buckets, per trial and the median of trials) beside the
  client-side latency of the pod create.

Each pod costs one webhook call: the injected sidecar mounts an empty directory at the
API token's path, so the ServiceAccount admission plugin, re-run after the webhook,
changes nothing and the apiserver does not re-invoke it (``reinvocationPolicy:
IfNeeded``). Before that, every pod cost two calls and the histogram counted both.

No scheduler or kubelet runs: pods stay Pending, which is all admission needs. Run:

    .venv/bin/python bench/operator_apiserver_bench.py [--configs 200] [--rate 50] \\
        [--seconds 10] [--trials 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.controlplane.*

from kubernetes import client
from tests.controlplane.harness import (
    GROUP,
    PLURAL,
    VERSION,
    Cluster,
    cache_config,
    cache_config_ready,
    create_cache_config,
    create_namespace,
    eventually,
    installed_chart,
    is_ready,
    start_cluster,
)

HISTOGRAM = "apiserver_admission_webhook_admission_duration_seconds_bucket"
WEBHOOK = "sidecar.podcache.io"
IN_FLIGHT = 16


def add_buckets(
    buckets: dict[float, float], exposition: str, series: str, label: str = ""
) -> dict[float, float]:
    """Adds to ``buckets`` the cumulative counts by upper bound of the ``series`` bucket
    lines (those holding ``label``) of a Prometheus exposition, summed over label sets."""
    for line in exposition.splitlines():
        if line.startswith(series + "{") and label in line:
            labels, value = line.rsplit(" ", 1)
            bound = labels.split('le="')[1].split('"')[0]
            upper = float("inf") if bound == "+Inf" else float(bound)
            buckets[upper] = buckets.get(upper, 0.0) + float(value)
    return buckets


def webhook_buckets(cluster: Cluster) -> dict[float, float]:
    """Cumulative counts by upper bound of the apiserver's histogram for our webhook."""
    text = cluster.plane.get("/metrics", timeout=10).decode()
    return add_buckets({}, text, HISTOGRAM, f'name="{WEBHOOK}"')


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over the delta of two scrapes, in seconds."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return bounds[-2]


def bench_reconcile(cluster: Cluster, namespace: str, configs: int, clients: int = 4) -> float:
    """``configs`` CacheConfigs created by ``clients`` concurrent clients (as a GitOps
    tool applies a folder; one sequential client spends most of the time waiting on its
    own round trips) → seconds from the first create until every one is Ready at its
    generation (followed by a watch, not polled)."""
    names = [f"bench-{i}" for i in range(configs)]
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for _ in pool.map(
            lambda name: create_cache_config(cluster, namespace, cache_config(name, {})), names
        ):
            pass
    created = time.monotonic() - start

    cluster.plane.watch_until(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        lambda items: len(items) == configs and all(is_ready(i) for i in items.values()),
        timeout=300,
        what=f"{configs} CacheConfigs Ready",
    )
    elapsed = time.monotonic() - start
    print(f"  creates by {clients} clients took {created:.2f} s ({configs / created:.0f}/s)")
    return elapsed


def labelled_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"podcache.io/config": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }


def admissions(
    cluster: Cluster, namespace: str, *, rate: float, seconds: float, tag: str
) -> list[float]:
    """Open loop: pod i is due at start + i/rate; its latency counts from that due time."""
    core = client.CoreV1Api(cluster.api)
    count = int(rate * seconds)
    bodies = [labelled_pod(f"{tag}-{i}") for i in range(count)]
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def send(i: int) -> None:
        due = start + i / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        stored = core.create_namespaced_pod(namespace, bodies[i])
        took = time.monotonic() - due
        assert any(c.name == "podcache" for c in stored.spec.init_containers or []), stored
        with lock:
            latencies.append(took)

    with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(send, range(count)))
    return latencies


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per trial")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()

    started = time.monotonic()
    with start_cluster() as cluster:
        print(f"control plane ready in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        with installed_chart(cluster) as installed:
            print(f"chart installed, operator serving in {time.monotonic() - started:.1f} s")
            core = client.CoreV1Api(cluster.api)
            for namespace in ("bench-configs", "bench-pods"):
                create_namespace(core, namespace)

            print(f"\n{args.configs} CacheConfigs created at once:")
            elapsed = bench_reconcile(cluster, "bench-configs", args.configs)
            print(f"  all Ready {elapsed:.2f} s after the first create")

            create_cache_config(cluster, "bench-pods", cache_config("web", {}))
            eventually(lambda: cache_config_ready(cluster, "bench-pods", "web"), what="Ready")
            admissions(cluster, "bench-pods", rate=args.rate, seconds=2.0, tag="warm")
            print(f"\nwebhook at {args.rate:g} pod creates/s, {args.seconds:g} s per trial:")
            p50s, p99s = [], []
            for trial in range(args.trials):
                before = webhook_buckets(cluster)
                client_side = admissions(
                    cluster, "bench-pods", rate=args.rate, seconds=args.seconds, tag=f"t{trial}"
                )
                after = webhook_buckets(cluster)
                p50 = histogram_quantile(0.5, before, after)
                p99 = histogram_quantile(0.99, before, after)
                calls = after[float("inf")] - before.get(float("inf"), 0.0)
                cuts = statistics.quantiles(client_side, n=100)
                p50s.append(p50)
                p99s.append(p99)
                print(
                    f"  trial {trial + 1}: apiserver's webhook histogram ({calls:.0f} calls)"
                    f" p50 {ms(p50)} p99 {ms(p99)}; pod create (client) p50 {ms(cuts[49])}"
                    f" p99 {ms(cuts[98])}"
                )
            print(
                f"  median of trials: webhook p50 {ms(statistics.median(p50s))}"
                f" p99 {ms(statistics.median(p99s))}"
            )
            installed.operator.stop()


if __name__ == "__main__":
    main()
