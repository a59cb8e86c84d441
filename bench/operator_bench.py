"""Operator benchmark against the KMock emulator: reconcile throughput and webhook latency.

Prints these figures (targets from issue 4):

* 200 CacheConfigs created at once → seconds until every one is Ready (target < 30 s);
* the sidecar-injecting webhook over HTTPS at a steady 50 requests/s → p50/p99
  latency per trial and the median over trials (target p99 < 10 ms);
* the most it serves with 8 requests in flight (median over bursts).

Three processes, as in a cluster: this one hosts the "cluster"
(``tests.operator.emulator.ClusterEmulator``, KMock) and orchestrates; the operator
runs alone in its own process the way ``podcache-operator`` runs it (uvloop when
installed, kopf's logging at the configured level, written to a file, GC on); the
webhook load comes from a third process, as the apiserver's would. So neither
KMock's object history nor the load generator shares the operator's GIL or GC.

The load is open-loop: request *i* is due at ``start + i / rate`` whether or not
earlier ones have been answered, and its latency is counted from that due time
(a late send counts against us). Request bodies are serialised before the clock
starts; a warm-up at the same rate comes first and is not counted. The API latency
is localhost HTTP plus Python; a real apiserver adds its own. Run:

    .venv/bin/python bench/operator_bench.py [--configs 200] [--rate 50] [--seconds 10] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kmock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.operator.*

from tests.operator import emulator, samples

BASE = f"/apis/podcache.io/v1alpha1/namespaces/{emulator.NAMESPACE}/cacheconfigs"
IN_FLIGHT = 8


def review(pod: dict[str, Any]) -> dict[str, Any]:
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": gvr,
            "namespace": emulator.NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": pod,
            "dryRun": False,
        },
    }


# --- the operator's process -------------------------------------------------------------


def run_operator(server: str, certs: Path, *, metrics_port: int, gc_report: Path) -> None:
    """The operator as ``podcache_operator.main.main`` runs it, against ``server``."""
    import kopf
    from kopf._cogs.structs import credentials

    from podcache_operator import main as operator_main
    from podcache_operator import settings as podcache_settings

    config = emulator.test_settings(
        {name: certs / name for name in ("tls.crt", "tls.key", "ca.crt")}
    )
    # Served by default in a cluster (9091), so served here too: the bench reads its histogram.
    config = dataclasses.replace(
        config, metrics=podcache_settings.MetricsSettings(port=metrics_port, addr="127.0.0.1")
    )
    level = config.log_level
    kopf.configure(verbose=level == "debug", quiet=level in ("warning", "error"))
    logging.getLogger().setLevel(level.upper())
    assert operator_main.configure  # importing main registers the startup handlers

    async def operate() -> None:
        vault = credentials.Vault()
        await vault.populate({"kmock": kopf.ConnectionInfo(server=server)})
        await kopf.operator(
            clusterwide=True, standalone=True, vault=vault, memo=kopf.Memo(config=config)
        )

    pauses = GCPauses()
    gc.callbacks.append(pauses)
    with contextlib.suppress(asyncio.CancelledError):
        operator_main._new_loop().run_until_complete(operate())
    gc_report.write_text(pauses.summary())


def stamp(at: float | None = None) -> str:
    """Wall-clock time to the millisecond: the processes share this clock."""
    at = time.time() if at is None else at
    return f"{time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d}"


class GCPauses:
    """The operator's collections (as ``gc.callbacks`` sees them): count and longest, by gen."""

    def __init__(self) -> None:
        self.began = 0.0
        self.counts = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.full: list[tuple[float, float, int]] = []

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.began = time.perf_counter()
            return
        generation = info["generation"]
        self.counts[generation] += 1
        took = time.perf_counter() - self.began
        self.longest[generation] = max(self.longest[generation], took)
        if generation == 2:
            self.full.append((time.time(), took, len(gc.get_objects())))

    def summary(self) -> str:
        counts = ", ".join(
            f"gen{gen} {self.counts[gen]}x max {self.longest[gen] * 1000:.1f} ms"
            for gen in range(3)
        )
        full = "; ".join(
            f"{stamp(at)} {took * 1000:.1f} ms, {objects} objects"
            for at, took, objects in self.full
        )
        return f"{counts} (full collections at: {full})"


# --- the load generator's process -------------------------------------------------------


HISTOGRAM = "podcache_operator_webhook_duration_seconds_bucket"


async def server_buckets(client: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The operator's own webhook-duration histogram (cumulative counts by ``le``)."""
    async with client.get(url) as response:
        text = await response.text()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(HISTOGRAM + "{"):
            labels, value = line.rsplit(" ", 1)
            buckets[labels.split('le="')[1].split('"')[0]] = float(value)
    return buckets


def server_summary(before: dict[str, float], after: dict[str, float]) -> str:
    """Share of admissions the operator itself answered within each bucket bound."""
    total = after["+Inf"] - before["+Inf"]
    shown = [le for le in after if le != "+Inf" and float(le) <= 0.025]
    shares = [f"<={float(le) * 1000:g} ms {(after[le] - before[le]) / total:.1%}" for le in shown]
    return f"{int(total)} admissions: " + ", ".join(shares)


def quantiles_ms(latencies: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000, max(latencies) * 1000


async def webhook_client(
    url: str,
    cafile: str,
    *,
    metrics_url: str,
    rate: float,
    seconds: float,
    trials: int,
    warmup: float,
) -> None:
    context = ssl.create_default_context(cafile=cafile)
    pod = samples.pod(config="tenant-0000")
    # kube-apiserver keeps a pool of TLS connections alive; so does this client.
    connector = aiohttp.TCPConnector(ssl=context, limit=16)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one(body: bytes, due: float) -> float:
            async with client.post(url, data=body, headers=headers) as response:
                raw = await response.read()
            done = time.perf_counter()
            answer = json.loads(raw)
            if not answer["response"]["allowed"] or "patch" not in answer["response"]:
                raise RuntimeError(f"unexpected answer: {answer}")
            return done - due

        def bodies(count: int) -> list[bytes]:
            return [json.dumps(review(pod)).encode() for _ in range(count)]

        async def paced(count: int) -> tuple[list[float], float]:
            payloads = bodies(count)
            tasks: list[asyncio.Task[float]] = []
            start = time.perf_counter()
            for index, body in enumerate(payloads):
                due = start + index / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(body, due)))
            latencies = list(await asyncio.gather(*tasks))
            return latencies, count / (time.perf_counter() - start)

        await asyncio.gather(*(one(body, time.perf_counter()) for body in bodies(IN_FLIGHT)))
        await paced(int(rate * warmup))  # not counted: connections, caches, the allocator
        p50s, p99s = [], []
        before = await server_buckets(client, metrics_url)
        for trial in range(1, trials + 1):
            latencies, achieved = await paced(int(rate * seconds))
            p50, p99, worst = quantiles_ms(latencies)
            p50s.append(p50)
            p99s.append(p99)
            print(
                f"webhook trial {trial}: {len(latencies)} reviews at {achieved:.1f}/s:"
                f" p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms",
                flush=True,
            )
        print(
            f"webhook: median of {trials} trials at {rate:.0f}/s: p50"
            f" {statistics.median(p50s):.1f} ms, p99 {statistics.median(p99s):.1f} ms"
            f" [target p99 < 10 ms at 50/s]",
            flush=True,
        )
        after = await server_buckets(client, metrics_url)
        print(f"webhook, inside the operator: {server_summary(before, after)}", flush=True)

        rates = []
        for _ in range(3):
            burst = 400
            payloads = bodies(burst)
            semaphore = asyncio.Semaphore(IN_FLIGHT)

            async def limited(body: bytes, semaphore: asyncio.Semaphore = semaphore) -> float:
                async with semaphore:
                    return await one(body, time.perf_counter())

            start = time.perf_counter()
            await asyncio.gather(*(limited(body) for body in payloads))
            rates.append(burst / (time.perf_counter() - start))
        print(
            f"webhook burst: {IN_FLIGHT} in flight: median {statistics.median(rates):.0f}/s"
            f" ({', '.join(f'{r:.0f}' for r in rates)})",
            flush=True,
        )


# --- the cluster's process (orchestrator) -----------------------------------------------


def ready_count(cluster: emulator.ClusterEmulator, names: list[str]) -> int:
    wanted = set(names)
    count = 0
    for (resource, _, name), obj in cluster.objects.items():
        if resource == emulator.CACHECONFIGS and name in wanted and not obj.deleted:
            cond = emulator.condition(obj.raw, "Ready")
            count += bool(cond and cond["status"] == "True")
    return count


async def create_cacheconfigs(cluster: emulator.ClusterEmulator, names: list[str]) -> None:
    async def create(name: str) -> None:
        body = {
            "apiVersion": "podcache.io/v1alpha1",
            "kind": "CacheConfig",
            "metadata": {"name": name, "namespace": emulator.NAMESPACE},
            "spec": samples.MEMORY_SPEC,
        }
        response = await cluster.post(BASE, json=body)
        if response.status >= 300:
            raise RuntimeError(await response.text())

    await asyncio.gather(*(create(name) for name in names))


async def wait_ready(
    cluster: emulator.ClusterEmulator, names: list[str], *, started: float, within: float
) -> float:
    while ready_count(cluster, names) < len(names):
        if time.perf_counter() - started > within:
            raise TimeoutError(f"only {ready_count(cluster, names)}/{len(names)} Ready")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def bench_reconcile(cluster: emulator.ClusterEmulator, configs: int) -> float:
    names = [f"tenant-{index:04d}" for index in range(configs)]
    started = time.perf_counter()
    await create_cacheconfigs(cluster, names)
    created = time.perf_counter() - started
    elapsed = await wait_ready(cluster, names, started=started, within=120)
    print(
        f"reconcile: {configs} CacheConfigs created in {created:.2f} s,"
        f" all Ready after {elapsed:.2f} s ({configs / elapsed:.0f}/s) [target < 30 s]",
        flush=True,
    )
    return elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_process(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, __file__, *args, **kwargs)


async def orchestrate(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        certs = Path(folder)
        certificates = emulator.make_certificates(certs)
        async with emulator.ClusterEmulator(forget_requests=True) as cluster, kmock.Server(cluster):
            emulator.declare_resources(cluster)
            emulator.install_servicemonitor_crd(cluster)
            cluster.objects[emulator.CRDS, None, "servicemonitors.monitoring.coreos.com"] = (
                emulator.servicemonitor_crd()
            )
            metrics_port = free_port()
            gc_report = certs / "gc.txt"
            log_path = Path(args.operator_log or certs / "operator.log")
            with log_path.open("wb") as log:  # noqa: ASYNC230  # before any load
                operator = await run_process(
                    "--operator", str(cluster.url).rstrip("/"), "--certs", folder,
                    "--metrics-port", str(metrics_port), "--gc-report", str(gc_report),
                    stderr=log,
                )  # fmt: skip
            print(f"operator: pid {operator.pid}, log {log_path}", flush=True)
            try:
                # Warm-up: one CacheConfig to Ready means the operator watches and serves.
                started = time.perf_counter()
                await create_cacheconfigs(cluster, ["warmup"])
                await wait_ready(cluster, ["warmup"], started=started, within=60)
                print(f"{stamp()} reconcile starts", flush=True)
                await bench_reconcile(cluster, args.configs)
                print(f"{stamp()} webhook load starts", flush=True)
                webhooks = emulator.get(cluster, emulator.WEBHOOKS, "podcache.io", None) or {}
                url = webhooks["webhooks"][0]["clientConfig"]["url"]
                client = await run_process(
                    "--client", url, "--cafile", str(certificates["ca.crt"]),
                    "--rate", str(args.rate), "--seconds", str(args.seconds),
                    "--trials", str(args.trials), "--warmup", str(args.warmup),
                    "--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics",
                )  # fmt: skip
                if await client.wait() != 0:
                    raise RuntimeError("the webhook load client failed")
                print(f"{stamp()} webhook load ends", flush=True)
            finally:
                operator.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(operator.wait(), 30)
                except TimeoutError:
                    operator.kill()
                    await operator.wait()
            lines = len(log_path.read_bytes().splitlines())  # noqa: ASYNC240  # after the load
            print(f"operator: {lines} log lines", flush=True)
            report = gc_report.read_text() if gc_report.exists() else "no report"
            print(f"operator GC over the whole run: {report}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per trial")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds at --rate, not counted")
    parser.add_argument("--operator-log", help="keep the operator's log here")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the load process
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    parser.add_argument("--operator", metavar="SERVER", help=argparse.SUPPRESS)  # operator process
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-url", help=argparse.SUPPRESS)
    parser.add_argument("--gc-report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.operator:
        run_operator(
            args.operator,
            Path(args.certs),
            metrics_port=args.metrics_port,
            gc_report=Path(args.gc_report),
        )
    elif args.client:
        asyncio.run(
            webhook_client(
                args.client,
                args.cafile,
                metrics_url=args.metrics_url,
                rate=args.rate,
                seconds=args.seconds,
                trials=args.trials,
                warmup=args.warmup,
            )
        )
    else:
        asyncio.run(orchestrate(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
