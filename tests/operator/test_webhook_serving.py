"""The webhook's listener under certificate rotation, and readiness (issue 9, defects 7, 10).

Aspects: a renewed key pair, swapped in as the kubelet swaps a Secret volume (one
symlink), is served to new handshakes within the check interval while the listener
and the connections already open stay up (kopf closed its listener and every
connection on a change); readiness is True only while the listener accepts TLS;
the metrics server's ``/readyz`` answers 503 with the reason, then 200.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from podcache.sidecar import metrics_server
from podcache_operator import metrics as podcache_metrics
from podcache_operator import webhook, webhook_serving
from tests.operator import emulator
from tests.redis_server import free_port

CHECK_INTERVAL = 0.05


def secret_volume(folder: Path, pair: dict[str, Path]) -> Path:
    """A folder laid out as the kubelet writes a Secret: files behind a ``..data`` link."""
    stamp = folder / f"..{hashlib.sha256(pair['tls.crt'].read_bytes()).hexdigest()[:8]}"
    stamp.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (stamp / name).write_bytes(pair[name].read_bytes())
    link = folder / "..data_tmp"
    link.symlink_to(stamp.name)
    os.replace(link, folder / "..data")  # atomic, as the kubelet's AtomicWriter does
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    return folder


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Path]]:
    try:
        return [emulator.make_certificates(tmp_path_factory.mktemp(f"pair{i}")) for i in (1, 2)]
    except (OSError, emulator.subprocess.CalledProcessError) as exc:
        pytest.fail(f"the openssl CLI is needed for the test certificates: {exc}")


def der_digest(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


async def served_digest(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return hashlib.sha256(der).hexdigest()


@pytest.fixture
async def server(
    tmp_path: Path, pairs: list[dict[str, Path]]
) -> AsyncIterator[tuple[webhook.AdmissionServer, int, Path, list[bool]]]:
    folder = secret_volume(tmp_path, pairs[0])
    port = free_port()
    admission = webhook.AdmissionServer(
        metrics=podcache_metrics.OperatorMetrics(registry=CollectorRegistry()),
        addr="127.0.0.1",
        port=port,
        host="127.0.0.1",
        certfile=str(folder / "tls.crt"),
        pkeyfile=str(folder / "tls.key"),
        cafile=str(folder / "ca.crt"),
        file_check_interval=CHECK_INTERVAL,
    )
    seen: list[bool] = []
    admission.on_listening = seen.append

    async def fn(review: Any, **_: Any) -> dict[str, Any]:
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}

    configs = admission(fn).__aiter__()
    await configs.__anext__()
    task = asyncio.ensure_future(configs.__anext__())  # keeps the server's loop turning
    try:
        yield admission, port, folder, seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await configs.aclose()  # type: ignore[attr-defined]


async def test_a_rotated_pair_is_served_without_closing_anything(
    server: tuple[webhook.AdmissionServer, int, Path, list[bool]], pairs: list[dict[str, Path]]
) -> None:
    """Regression (defect 7): kopf re-read the files every 60 s and then closed its
    listener and every open connection: admissions failed across each renewal."""
    _, port, folder, _ = server
    assert await served_digest(port) == der_digest(pairs[0]["tls.crt"])
    connector = aiohttp.TCPConnector(ssl=False, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(f"https://127.0.0.1:{port}/inject", data=b"{}") as answer:
            assert answer.status == 400  # not a review; what matters is the open connection
        secret_volume(folder, pairs[1])
        for _ in range(100):  # two seconds at most; kopf took up to 60
            if await served_digest(port) == der_digest(pairs[1]["tls.crt"]):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the renewed certificate was not served within 2 s")
        async with session.post(f"https://127.0.0.1:{port}/inject", data=b"{}") as answer:
            assert answer.status == 400
    assert len(connector._conns) <= 1  # type: ignore[attr-defined]


async def test_a_half_written_pair_keeps_the_current_one(
    server: tuple[webhook.AdmissionServer, int, Path, list[bool]], pairs: list[dict[str, Path]]
) -> None:
    _, port, folder, _ = server
    stamp = (folder / "..data").resolve()
    (stamp / "tls.crt").write_bytes(pairs[1]["tls.crt"].read_bytes())  # the key still old
    await asyncio.sleep(CHECK_INTERVAL * 4)
    assert await served_digest(port) == der_digest(pairs[0]["tls.crt"])
    (stamp / "tls.key").write_bytes(pairs[1]["tls.key"].read_bytes())
    for _ in range(100):
        if await served_digest(port) == der_digest(pairs[1]["tls.crt"]):
            return
        await asyncio.sleep(0.02)
    pytest.fail("the completed pair was not served")


async def test_listening_is_reported_while_the_listener_is_up(
    server: tuple[webhook.AdmissionServer, int, Path, list[bool]],
) -> None:
    """Regression (defect 10): nothing told readiness whether the webhook listened."""
    _, port, _, seen = server
    assert seen == [True]
    await served_digest(port)  # it does accept TLS


def test_readiness_waits_for_the_webhook() -> None:
    readiness = webhook_serving.Readiness(webhook=True)
    assert readiness.problem() == "the admission webhook is not listening yet"
    readiness.set_listening(True)
    assert readiness.problem() is None
    readiness.set_listening(False)
    assert readiness.problem() is not None
    assert webhook_serving.Readiness(webhook=False).problem() is None


async def test_readyz_on_the_metrics_port() -> None:
    """Regression (defect 10): there was no readiness endpoint but kopf's /healthz."""
    readiness = webhook_serving.Readiness(webhook=True)
    endpoint = metrics_server.MetricsServer(CollectorRegistry(), host="127.0.0.1")
    endpoint.readiness = readiness.problem
    await endpoint.start(free_port())
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{endpoint.port}/readyz"
            async with session.get(url) as answer:
                assert answer.status == 503
                assert "not listening" in (await answer.json())["reason"]
            readiness.set_listening(True)
            async with session.get(url) as answer:
                assert answer.status == 200
    finally:
        await endpoint.stop()
