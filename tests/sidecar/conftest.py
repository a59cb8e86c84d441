"""Fixtures of the sidecar server tests: a real server on a real Unix socket.

- ``start_sidecar``: a factory running ``runtime.Sidecar`` in the test's event loop on a
  socket in a short temporary directory (Unix socket paths are limited to 107 bytes),
  stopped gracefully at the end of the test.
- ``backend_config`` / ``sidecar``: parametrised over the memory backend and a real Redis.
- ``Api``: raw HTTP over the socket with aiohttp's ``UnixConnector``; paths are sent
  exactly as written (``encoded=True``), so tests can send bad percent-encoding.
- ``spawn_sidecar``: the sidecar as a subprocess (``python -m podcache.sidecar``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from yarl import URL

from podcache import configfile
from podcache.sidecar.overrides import Overrides
from podcache.sidecar.runtime import Options, Sidecar

BASE = "http://sidecar"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Api:
    """A keep-alive HTTP client of one sidecar socket."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=socket_path),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """Send ``path`` verbatim; the response body is read before returning."""
        response = await self.session.request(method, URL(BASE + path, encoded=True), **kwargs)
        await response.read()
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = await self.request(method, path, **kwargs)
        body = await response.read()
        return response.status, json.loads(body) if body else None

    async def close(self) -> None:
        await self.session.close()


async def error_of(response: aiohttp.ClientResponse) -> str:
    """The JSON error code of a failed response (asserting the documented shape)."""
    payload = await response.json(content_type=None)
    assert set(payload) == {"error", "message"}, payload
    assert isinstance(payload["message"], str)
    assert payload["message"]
    return str(payload["error"])


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: socket paths must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="pcs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


StartSidecar = Callable[..., Awaitable[tuple[Sidecar, Api]]]


@pytest.fixture
async def start_sidecar(short_tmp: Path) -> AsyncIterator[StartSidecar]:
    """Start in-process sidecars; all are shut down (gracefully) after the test."""
    started: list[tuple[Sidecar, Api]] = []

    async def start(
        config: dict[str, Any] | None = None,
        *,
        config_file: bool = False,
        identity: str = "pod-test",
        name: str | None = None,
        metrics_port: int | None = 0,
        **options: Any,
    ) -> tuple[Sidecar, Api]:
        name = name or f"s{len(started)}"
        socket_path = str(short_tmp / f"{name}.sock")
        overrides = Overrides(socket=socket_path, metrics_port=metrics_port)
        raw = config or {}
        options.setdefault("reload_interval", 0.05)
        options.setdefault("watch_heartbeat", 0.5)
        if config_file:
            path = short_tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(raw))
            sidecar = Sidecar(
                Options(config_path=str(path), overrides=overrides, identity=identity, **options)
            )
        else:
            effective = overrides.apply(configfile.parse(raw))
            sidecar = Sidecar(
                Options(overrides=overrides, identity=identity, **options), config=effective
            )
        await sidecar.start()
        api = Api(socket_path)
        started.append((sidecar, api))
        return sidecar, api

    yield start
    for sidecar, api in reversed(started):
        await api.close()
        await sidecar.shutdown()


@pytest.fixture(params=["memory", "redis"])
def backend_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The sidecar config for each backend in turn (Redis: a real server, flushed DB)."""
    if request.param == "memory":
        return {"type": "memory", "config": {"defaultTTL": "5m"}}
    url = request.getfixturevalue("redis_url")
    prefix = f"sidecar-{uuid.uuid4().hex[:6]}:"
    return {"type": "redis", "config": {"url": url, "defaultTTL": "5m", "keyPrefix": prefix}}


@pytest.fixture
async def api(start_sidecar: StartSidecar, backend_config: dict[str, Any]) -> Api:
    """A client of a sidecar on each backend, with small limits so tests stay fast."""
    config = {
        **backend_config,
        "limits": {"maxValueBytes": 4096, "maxKeyBytes": 64, "requestTimeout": "3s"},
        "locks": {"defaultTTL": "10s", "maxTTL": "1m"},
    }
    _, client = await start_sidecar(config)
    return client


async def wait_until(
    predicate: Callable[[], Awaitable[Any]],
    *,
    within: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Await ``predicate`` until truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {within}s")
        await asyncio.sleep(interval)


class SidecarProcess:
    """``python -m podcache.sidecar`` in ``workdir``, its output in ``sidecar.log``.

    With ``flags`` it gets ``--config`` (when a config is given), ``--socket`` and a free
    ``--metrics-port``; without, only ``extra_args`` and the environment (``PODCACHE_*``
    of the test process never leak in) decide, and ``socket_path`` says where to look.
    """

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | None,
        *,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        flags: bool = True,
        socket_path: str | None = None,
    ) -> None:
        self.workdir = workdir
        # Without flags, the sidecar's own default applies: ./podcache.sock off-pod.
        self.socket_path = socket_path or str(
            workdir / ("cache.sock" if flags else "podcache.sock")
        )
        self.metrics_port = free_port()
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "sidecar.log"
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(config))
        args = [sys.executable, "-m", "podcache.sidecar"]  # the launcher, as in a pod
        if flags:
            if config is not None:
                args += ["--config", str(self.config_path)]
            args += ["--socket", self.socket_path, "--metrics-port", str(self.metrics_port)]
        args += extra_args
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("PODCACHE_")
        }
        environment.update(env or {})
        self.started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=workdir
            )

    def wait_socket(self, *, timeout: float = 15.0) -> float:
        """Seconds from spawn until the socket answers /healthz."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sidecar exited with {self.process.returncode}: {self.log()}")
            if _healthz(self.socket_path):
                return time.monotonic() - self.started
            time.sleep(0.005)
        raise AssertionError(f"socket not ready within {timeout}s: {self.log()}")

    def terminate(self, *, timeout: float = 15.0) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def metric(self, sample: str) -> float:
        """The value of one sample (name with its labels, as exposed) on ``/metrics``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(sample + " "):
                    return float(line.split()[1])
        raise AssertionError(f"{sample} not exposed")

    def wait_metric(self, sample: str, value: float, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.metric(sample) != value:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.02)


def _healthz(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.fixture
def spawn_sidecar(short_tmp: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start sidecar subprocesses; any still running are killed after the test."""
    processes: list[SidecarProcess] = []

    def spawn(config: dict[str, Any] | None = None, **kwargs: Any) -> SidecarProcess:
        workdir = short_tmp / f"p{len(processes)}"
        workdir.mkdir()
        process = SidecarProcess(workdir, config, **kwargs)
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.kill()
