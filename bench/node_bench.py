"""Benchmark on a real one-node cluster (tests/node): what a user's pods pay for the
sidecar, measured by the kubelet and the apiserver themselves.

Prints, from one run:

* the node's start (network namespace to CoreDNS ready) and ``helm install --wait``;
* a Deployment of N plain pods → seconds until all are Ready; then N pods that opt in
  (the webhook injects the native sidecar) → the same, side by side, and per pod;
* the webhook's latency over that run from the apiserver's own
  ``apiserver_admission_webhook_admission_duration_seconds`` histogram (p50, p99);
* the CPU each process spent in each of the two pod runs (``process_cpu``);
* the events the run caused, by reason (a failed probe is an ``Unhealthy`` event);
* the same calls as the operator's handler measured them (its own histogram);
* the shares issue 18 names: the kubelet's probe count over that run (``prober_probe_total``)
  and the CPU the sidecar's imports take in a pod;
* M CacheConfigs created at once (4 clients) → seconds until all are Ready.

Issue 18's targets: opted-in ≤ 1.5x plain and ≤ 0.3 s per pod; webhook p99 ≤ 20 ms;
200 CacheConfigs Ready ≤ 5 s. Needs root and what ``scripts/test`` sets up. Run:

    .venv/bin/python bench/node_bench.py [--pods 30] [--configs 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.controlplane.harness import (
    RELEASE_NAMESPACE,
    cache_config,
    cache_config_ready,
    create_cache_config,
    create_namespace,
    eventually,
)
from tests.node.harness import NodeCluster, app_deployment, start_node, wait_pods_ready
from tests.node.node import NODE_NAME

from operator_apiserver_bench import (
    add_buckets,
    bench_reconcile,
    histogram_quantile,
    webhook_buckets,
)
from process_cpu import report as cpu_report
from process_cpu import snapshot as cpu_snapshot


def all_ready(nodes: NodeCluster, ns: str, name: str, pods: int, config: str | None) -> float:
    started = time.monotonic()
    nodes.apps.create_namespaced_deployment(ns, app_deployment(name, config, pods))
    wait_pods_ready(nodes, ns, f"app={name}", pods, timeout=600)
    return time.monotonic() - started


def probe_counts(nodes: NodeCluster) -> dict[str, float]:
    """The kubelet's own probe counter (``prober_probe_total``) by probe type."""
    text = nodes.cluster.plane.get(
        f"/api/v1/nodes/{NODE_NAME}/proxy/metrics/probes", timeout=10
    ).decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("prober_probe_total{"):
            kind = line.split('probe_type="')[1].split('"')[0]
            counts[kind] = counts.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def operator_webhook_buckets(nodes: NodeCluster) -> dict[float, float]:
    """The operator's own ``podcache_operator_webhook_duration_seconds`` (handler time, summed
    over its replicas), through the apiserver's pod proxy."""
    buckets: dict[float, float] = {}
    operators = nodes.core.list_namespaced_pod(
        RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=operator"
    ).items
    for pod in operators:
        path = f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{pod.metadata.name}:9091/proxy/metrics"
        text = nodes.cluster.plane.get(path, timeout=10).decode()
        add_buckets(buckets, text, "podcache_operator_webhook_duration_seconds_bucket")
    return buckets


def event_counts(nodes: NodeCluster, ns: str) -> dict[str, int]:
    """Events in ``ns`` by reason (each repeat counted); a failed probe is an ``Unhealthy``,
    counted by what failed (its message up to the first colon)."""
    counts: dict[str, int] = {}
    for event in nodes.core.list_namespaced_event(ns).items:
        reason = event.reason
        if reason == "Unhealthy":
            reason += f" ({(event.message or '').split(':')[0]})"
        counts[reason] = counts.get(reason, 0) + (event.count or 1)
    return counts


IMPORT_CPU = (
    "import time; began = time.process_time(); from podcache.sidecar import launcher; "
    "launcher.import_main(); print(time.process_time() - began)"
)


def import_seconds(nodes: NodeCluster, ns: str, pod: str) -> str:
    """The CPU a fresh interpreter in the pod spends importing what ``podcache-sidecar``
    imports before it serves (the launcher's way)."""
    code, out = nodes.exec(ns, pod, "podcache", "python", "-c", IMPORT_CPU)
    return f"{float(out.split()[-1]):.2f} s of CPU" if code == 0 else f"unknown ({out[-200:]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VALUE",
        help="a helm value for the chart, e.g. operator.resources.requests.cpu=500m",
    )
    parser.add_argument("--skip-configs", action="store_true", help="pods and webhook only")
    args = parser.parse_args()

    started = time.monotonic()
    with start_node() as nodes:
        print(f"node ready in {time.monotonic() - started:.1f} s (image build included)")
        print(f"helm install --wait: {nodes.install(*args.set):.1f} s", *args.set)

        plain_ns = create_namespace(nodes.core, "bench-plain")
        cpu_before = cpu_snapshot()
        plain = all_ready(nodes, plain_ns, "plain", args.pods, None)
        plain_cpu = cpu_report(cpu_before, cpu_snapshot())
        nodes.core.delete_namespace(plain_ns)
        eventually(
            lambda: not nodes.core.list_namespaced_pod(plain_ns).items,
            timeout=300,
            what="the plain pods gone",
        )

        injected_ns = create_namespace(nodes.core, "bench-injected")
        create_cache_config(nodes.cluster, injected_ns, cache_config("web", {}))
        eventually(lambda: cache_config_ready(nodes.cluster, injected_ns, "web"), what="Ready")
        before = webhook_buckets(nodes.cluster)
        handler_before = operator_webhook_buckets(nodes)
        probes_before = probe_counts(nodes)
        cpu_before = cpu_snapshot()
        injected = all_ready(nodes, injected_ns, "injected", args.pods, "web")
        injected_cpu = cpu_report(cpu_before, cpu_snapshot())
        after = webhook_buckets(nodes.cluster)
        handler_after = operator_webhook_buckets(nodes)
        probes = {k: v - probes_before.get(k, 0.0) for k, v in probe_counts(nodes).items()}
        some_pod = nodes.core.list_namespaced_pod(injected_ns).items[0].metadata.name
        calls = after[float("inf")] - before.get(float("inf"), 0.0)
        print(f"\n{args.pods} pods to all Ready:")
        print(f"  plain      {plain:6.1f} s  ({plain / args.pods:.2f} s per pod)")
        print(
            f"  with the sidecar {injected:6.1f} s  ({injected / args.pods:.2f} s per pod,"
            f" {injected / plain:.1f}x plain)"
        )
        print(f"  CPU, plain:            {plain_cpu}")
        print(f"  CPU, with the sidecar: {injected_cpu}")
        print(
            f"  webhook (apiserver's histogram, {calls:.0f} calls):"
            f" p50 {histogram_quantile(0.5, before, after) * 1000:.0f} ms,"
            f" p99 {histogram_quantile(0.99, before, after) * 1000:.0f} ms"
        )
        print(
            "  the same calls inside the operator (its handler's histogram):"
            f" p50 {histogram_quantile(0.5, handler_before, handler_after) * 1000:.1f} ms,"
            f" p99 {histogram_quantile(0.99, handler_before, handler_after) * 1000:.1f} ms"
        )
        print(
            "  kubelet probes during that run: "
            + ", ".join(f"{kind} {count:.0f}" for kind, count in sorted(probes.items()))
        )
        events = event_counts(nodes, injected_ns)
        print(
            "  events in its namespace: "
            + ", ".join(f"{reason} {count}" for reason, count in sorted(events.items()))
        )
        imported = import_seconds(nodes, injected_ns, some_pod)
        print(f"  the sidecar's imports in a pod: {imported}")
        nodes.core.delete_namespace(injected_ns)
        if args.skip_configs:
            return

        print(f"\n{args.configs} CacheConfigs created at once:")
        configs_ns = create_namespace(nodes.core, "bench-configs")
        elapsed = bench_reconcile(nodes.cluster, configs_ns, args.configs)
        print(f"  all Ready {elapsed:.2f} s after the first create")


if __name__ == "__main__":
    main()
