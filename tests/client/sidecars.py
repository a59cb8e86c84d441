"""Real sidecar processes for the client tests: spawn, wait until ready, signal, restart.

Each ``SidecarProcess`` runs ``python -m podcache.sidecar.main`` with its own config
file, socket and pod name in a short temporary directory (Unix socket paths are
limited to 107 bytes, pytest's ``tmp_path`` can be longer). Readiness is polled
through the sync client with a bounded deadline; the process log is kept for
failure messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import podcache
from podcache.errors import ClientError

READY_TIMEOUT = 15.0  # generous: two cores shared with other test runs


class SidecarProcess:
    """One ``podcache-sidecar`` process and the files it uses."""

    def __init__(self, config: dict[str, Any], *, pod_name: str = "pod-a",
                 metrics_port: int = 0, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(env or {})
        """Extra environment (e.g. ``PODCACHE_REDIS_PASSWORD``, as the injector sets it)."""
        self.pod_name = pod_name
        self.metrics_port = metrics_port
        self.workdir = Path(tempfile.mkdtemp(prefix="pc-", dir="/tmp"))
        self.socket_path = str(self.workdir / "cache.sock")
        self.config_path = self.workdir / "config.yaml"
        self.log_path = self.workdir / "sidecar.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after: float | None = None
        """Seconds from spawn to the first 200 on /readyz (of the last start)."""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, timeout: float = READY_TIMEOUT) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = dict(os.environ, POD_NAME=self.pod_name, PODCACHE_LOG_LEVEL="info", **self.env)
        env.pop("PODCACHE_SOCKET", None)
        env.pop("PODCACHE_CONFIG", None)
        args = [sys.executable, "-m", "podcache.sidecar.main", "--config", str(self.config_path),
                "--socket", self.socket_path, "--metrics-port", str(self.metrics_port)]
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready(timeout=timeout)
        self.ready_after = time.monotonic() - started

    def wait_ready(self, *, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with podcache.Client(self.socket_path, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"sidecar exited with {self.process.returncode}:\n"
                                       f"{self.log_tail()}")
                with contextlib.suppress(ClientError):
                    if client.ready():
                        return
                time.sleep(0.02)
        raise RuntimeError(f"sidecar not ready within {timeout}s:\n{self.log_tail()}")

    def send(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def stop(self, *, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the process and wait for it; SIGKILL if it does not end in time."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
                process.send_signal(signum)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        return process.returncode

    def wait(self, *, timeout: float = 15.0) -> int:
        """Wait for the process to end by itself (after a signal already sent); its exit code."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, size: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-size:]

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def memory_config(**extra: Any) -> dict[str, Any]:
    return {"type": "memory", "config": {"defaultTTL": "5m"}, **extra}


def redis_config(url: str, *, key_prefix: str, **extra: Any) -> dict[str, Any]:
    return {"type": "redis", "config": {"url": url, "defaultTTL": "5m", "keyPrefix": key_prefix},
            **extra}


def election(name: str, *, lease: str = "2s", renew: str = "1500ms",
             retry: str = "100ms") -> dict[str, str]:
    """Short timings so tests see changes quickly; client-go's rule lease > renew > retry."""
    return {"name": name, "leaseDuration": lease, "renewDeadline": renew, "retryPeriod": retry}


def wait_for(predicate: Any, *, timeout: float = 5.0, interval: float = 0.01,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(interval)
