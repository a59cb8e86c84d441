"""The launcher (``podcache-sidecar``, ``python -m podcache.sidecar``): the metrics port
listens before the heavy imports, and aiohttp's import skips the CA bundle, nothing else.

A kubelet probe that connects while the sidecar is still importing must wait and then
get its answer, not a refused connection (each refusal is a failed probe, an event, and
a second's wait for the app container).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from podcache.sidecar import launcher
from podcache.sidecar.metrics_server import MetricsServer

from .conftest import free_port


@pytest.mark.parametrize(
    ("argv", "env", "port"),
    [
        (["--metrics-port", "9090"], {}, 9090),
        (["--config", "c.yaml", "--metrics-port=9191"], {}, 9191),
        ([], {"PODCACHE_METRICS_PORT": "9292"}, 9292),
        (["--metrics-port", "9393"], {"PODCACHE_METRICS_PORT": "9292"}, 9393),  # flag wins
        (["--metrics-port", "0"], {}, None),  # off
        (["--metrics-port", "70000"], {}, None),  # main reports it
        (["--metrics-port", "x"], {}, None),
        (["--metrics-port"], {}, None),
        (["--metrics-p", "9090"], {}, None),  # argparse's abbreviation: leave it to argparse
        ([], {}, None),
        ([], {"PODCACHE_METRICS_PORT": ""}, None),
    ],
)
def test_the_early_port_is_the_one_main_will_use_or_none(
    argv: list[str], env: dict[str, str], port: int | None
) -> None:
    assert launcher.metrics_port(argv, env) == port


def _healthz_on(connection: socket.socket) -> bytes:
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
    reply = b""
    while chunk := connection.recv(4096):
        reply += chunk
    return reply


def test_a_probe_connecting_during_the_imports_gets_its_answer(tmp_path: Path) -> None:
    port = free_port()
    socket_path = tmp_path / "cache.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODCACHE_")}
    env["PODCACHE_METRICS_PORT"] = str(port)
    # A slow start, whatever the machine: no cached bytecode, every module compiled anew
    # (about 1 s of imports instead of 0.2), so the probe surely comes while importing.
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "no-bytecode")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "podcache.sidecar", "--socket", str(socket_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, "the sidecar exited"
            assert time.monotonic() < deadline, "the metrics port never listened"
            try:
                probe = socket.create_connection(("127.0.0.1", port), timeout=15)
                break
            except ConnectionRefusedError:
                time.sleep(0.002)
        # Accepted by the kernel before the sidecar served anything: the cache socket
        # (made before the metrics listener in the old order) does not exist yet.
        assert not socket_path.exists()
        with probe:
            reply = _healthz_on(probe)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        assert socket_path.exists()
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0


async def test_an_early_listener_on_the_configured_port_is_adopted() -> None:
    port = free_port()
    early = launcher.listen_early(port)
    assert early is not None
    loop = asyncio.get_running_loop()
    waiting = await loop.run_in_executor(None, socket.create_connection, ("127.0.0.1", port), 5)
    server = MetricsServer(CollectorRegistry(), listener=early)
    await server.start(port)
    try:
        reply = await loop.run_in_executor(None, _healthz_on, waiting)
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert server.port == port
    finally:
        waiting.close()
        await server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


async def test_an_early_listener_on_another_port_is_closed_and_the_configured_one_served() -> None:
    early_port, port = free_port(), free_port()
    early = launcher.listen_early(early_port)
    assert early is not None
    server = MetricsServer(CollectorRegistry(), listener=early)
    await server.start(port)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", early_port), timeout=5)
        loop = asyncio.get_running_loop()
        with await loop.run_in_executor(
            None, socket.create_connection, ("127.0.0.1", port), 5
        ) as connection:
            reply = await loop.run_in_executor(None, _healthz_on, connection)
        assert reply.startswith(b"HTTP/1.1 200 ")
    finally:
        await server.stop()


def test_a_port_in_use_is_left_for_the_metrics_server_to_report() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        assert launcher.listen_early(taken.getsockname()[1]) is None


CA_CHECK = """
import gc, os, ssl
from podcache.sidecar import launcher
main = launcher.import_main()
import aiohttp.connector
print(aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])
print(ssl.create_default_context().cert_store_stats()["x509_ca"])
print(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
print(main.__name__, gc.isenabled(), gc.get_freeze_count() > 1000)
"""


def test_only_aiohttps_import_skips_the_ca_bundle() -> None:
    bundle = ssl_bundle()
    env = {**os.environ, "SSL_CERT_FILE": bundle}
    env.pop("SSL_CERT_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", CA_CHECK], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "0"  # aiohttp's client context: nothing loaded
    assert int(out[1]) > 0  # a context made afterwards loads the bundle (e.g. Redis TLS)
    assert out[2] == f"{bundle} None"  # the variables as they were
    assert out[3] == "podcache.sidecar.main True True"  # the collector back on, imports frozen


def ssl_bundle() -> str:
    import ssl

    path = ssl.get_default_verify_paths().cafile
    if path is None or not os.path.exists(path):
        pytest.fail("this machine has no CA bundle at OpenSSL's default path")
    return os.path.realpath(path)
