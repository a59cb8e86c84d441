"""Operator benchmark against the KMock emulator: reconcile throughput and webhook latency.

Prints two figures (targets from issue 4):

* 200 CacheConfigs created at once → seconds until every one is Ready (target < 30 s);
* the sidecar-injecting webhook over HTTPS at a steady 50 requests/s → p50/p99
  latency (target p99 < 10 ms), then the most it serves with 8 requests in flight;
  the load comes from a separate process, as the apiserver's would.

The "cluster" is ``tests.operator.emulator.ClusterEmulator`` (KMock), so the API
latency is localhost HTTP plus Python; a real apiserver adds its own. Run:

    .venv/bin/python bench/operator_bench.py [--configs 200] [--rate 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
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


def ready_count(cluster: emulator.ClusterEmulator, names: list[str]) -> int:
    wanted = set(names)
    count = 0
    for (resource, _, name), obj in cluster.objects.items():
        if resource == emulator.CACHECONFIGS and name in wanted and not obj.deleted:
            cond = emulator.condition(obj.raw, "Ready")
            count += bool(cond and cond["status"] == "True")
    return count


async def bench_reconcile(cluster: emulator.ClusterEmulator, configs: int) -> float:
    names = [f"tenant-{index:04d}" for index in range(configs)]
    started = time.perf_counter()

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
    created = time.perf_counter() - started
    while ready_count(cluster, names) < configs:
        if time.perf_counter() - started > 120:
            raise TimeoutError(f"only {ready_count(cluster, names)}/{configs} Ready after 120 s")
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    print(
        f"reconcile: {configs} CacheConfigs created in {created:.2f} s,"
        f" all Ready after {elapsed:.2f} s ({configs / elapsed:.0f}/s) [target < 30 s]"
    )
    return elapsed


async def bench_webhook(url: str, cafile: str, *, rate: float, seconds: float) -> None:
    """Load the webhook from a separate process: the client must not share the server's GIL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        url,
        "--cafile",
        cafile,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
    )
    if await process.wait() != 0:
        raise RuntimeError("the webhook load client failed")


async def webhook_client(url: str, cafile: str, *, rate: float, seconds: float) -> None:
    context = ssl.create_default_context(cafile=cafile)
    pod = samples.pod(config="tenant-0000")
    connector = aiohttp.TCPConnector(ssl=context, limit=16)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> float:
            began = time.perf_counter()
            async with client.post(url, json=review(pod)) as response:
                answer = await response.json()
            if not answer["response"]["allowed"] or "patch" not in answer["response"]:
                raise RuntimeError(f"unexpected answer: {answer}")
            return time.perf_counter() - began

        for _ in range(5):  # warm up kopf's caches and a pool of kept-alive TLS connections,
            await asyncio.gather(*(one() for _ in range(8)))  # as kube-apiserver keeps them
        tasks: list[asyncio.Task[float]] = []
        total = int(rate * seconds)
        start = time.perf_counter()
        for index in range(total):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        latencies = list(await asyncio.gather(*tasks))
        achieved = total / (time.perf_counter() - start)
        quantiles = statistics.quantiles(latencies, n=100)
        print(
            f"webhook: {total} reviews at {achieved:.0f}/s: p50 {quantiles[49] * 1000:.1f} ms,"
            f" p99 {quantiles[98] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
            " [target p99 < 10 ms at 50/s]",
            flush=True,
        )

        burst = 400
        start = time.perf_counter()
        semaphore = asyncio.Semaphore(8)

        async def limited() -> float:
            async with semaphore:
                return await one()

        await asyncio.gather(*(limited() for _ in range(burst)))
        print(
            f"webhook: {burst} reviews, 8 in flight: {burst / (time.perf_counter() - start):.0f}/s",
            flush=True,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the load process
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        await webhook_client(args.client, args.cafile, rate=args.rate, seconds=args.seconds)
        return
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        certificates = emulator.make_certificates(Path(folder))
        config = emulator.test_settings(certificates)
        async with emulator.ClusterEmulator(forget_requests=True) as cluster, kmock.Server(cluster):
            emulator.declare_resources(cluster)
            emulator.install_servicemonitor_crd(cluster)
            cluster.objects[emulator.CRDS, None, "servicemonitors.monitoring.coreos.com"] = (
                emulator.servicemonitor_crd()
            )
            runner = emulator.OperatorThread(server=str(cluster.url).rstrip("/"), config=config)
            await runner.start(within=30)
            try:
                await bench_reconcile(cluster, args.configs)
                # KMock keeps every version of every object; keep the GC from walking them all
                # during the latency test (an operator alone holds a fraction of that).
                gc.freeze()
                webhooks = emulator.get(cluster, emulator.WEBHOOKS, "podcache.io", None) or {}
                url = webhooks["webhooks"][0]["clientConfig"]["url"]
                await bench_webhook(
                    url, str(certificates["ca.crt"]), rate=args.rate, seconds=args.seconds
                )
            finally:
                await runner.stop(within=30)


if __name__ == "__main__":
    asyncio.run(main())
