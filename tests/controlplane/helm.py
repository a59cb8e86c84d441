"""The built ``helm`` binary, run exactly as a user runs it against the e2e cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane.cluster import KUBE_VERSION, ROOT

CHART = ROOT / "charts" / "podcache"


class HelmError(RuntimeError):
    """helm exited non-zero; the message holds its stderr."""


class Helm:
    def __init__(self, binary: Path, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.home = home
        home.mkdir(parents=True, exist_ok=True)

    def run(self, *args: str, timeout: float = 120.0) -> str:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        done = subprocess.run(
            [str(self.binary), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def install(self, release: str, namespace: str, *values: str, chart: Path = CHART) -> str:
        return self.run(
            "install",
            release,
            str(chart),
            "--namespace",
            namespace,
            "--create-namespace",
            *_set_args(values),
        )

    def upgrade(self, release: str, namespace: str, *values: str, chart: Path = CHART) -> str:
        return self.run(
            "upgrade", release, str(chart), "--namespace", namespace, *_set_args(values)
        )

    def uninstall(self, release: str, namespace: str) -> str:
        return self.run("uninstall", release, "--namespace", namespace, "--wait")

    def manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        text = self.run("get", "manifest", release, "--namespace", namespace)
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def status(self, release: str, namespace: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            self.run("status", release, "--namespace", namespace, "--output", "json")
        )
        return result

    def template(self, *values: str, chart: Path = CHART) -> list[dict[str, Any]]:
        """Render offline, with the cluster version the e2e apiserver reports."""
        text = self.run(
            "template", "podcache", str(chart), "--kube-version", KUBE_VERSION, *_set_args(values)
        )
        return [doc for doc in yaml.safe_load_all(text) if doc]


def _set_args(values: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for value in values:
        args += ["--set", value]
    return args
