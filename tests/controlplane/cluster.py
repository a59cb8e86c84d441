"""A real Kubernetes control plane for the tests: etcd, kube-apiserver and
kube-controller-manager as child processes on loopback.

The binaries come from ``scripts/build-controlplane`` (pinned Go modules, built once and
cached). Everything listens on 127.0.0.1 at free ports; the service CIDR is bookkeeping
only (no kube-proxy, no node), so no traffic leaves the machine. The e2e node
(``tests.node``) runs the same control plane inside its network namespace: a launcher
prefix for every command, the apiserver bound and advertised on the node IP, and extra
flags; it starts its own components through ``spawn`` so they stop with the plane.
The apiserver runs with
RBAC and the admission chain a production cluster has; the controller-manager runs the
controllers that make namespaces, service-account tokens, Deployments, ReplicaSets and
garbage collection real. Logs stay in ``workdir/logs`` for a failing test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane.pki import CertificateAuthority, KeyPair, service_account_keys
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "v1.34.2"
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,ResourceQuota,"
    "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy"
)
CONTROLLERS = "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route"
SERVICE_CIDR = "10.96.0.0/16"


class ControlPlaneUnavailable(RuntimeError):
    """The binaries could not be built or a component did not become ready."""


def built_binaries(
    variable: str,
    script: str,
    names: tuple[str, ...],
    unavailable: type[ControlPlaneUnavailable] = ControlPlaneUnavailable,
) -> Path:
    """The folder holding ``names``, built by ``scripts/<script>``.

    ``variable`` (set by scripts/test) wins; otherwise the build script is asked, which
    returns at once when its cache is warm and builds otherwise. ``unavailable`` is
    raised, naming what failed, when the build fails or a binary is missing.
    """
    explicit = os.environ.get(variable)
    if explicit:
        folder = Path(explicit)
    else:
        try:
            done = subprocess.run(
                ["bash", str(ROOT / "scripts" / script)],
                check=True,
                capture_output=True,
                text=True,
                timeout=3600,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            raise unavailable(f"scripts/{script} failed: {exc}\n{detail[-2000:]}") from exc
        folder = Path(done.stdout.strip().splitlines()[-1])
    missing = [name for name in names if not os.access(folder / name, os.X_OK)]
    if missing:
        raise unavailable(f"{folder} lacks {', '.join(missing)}")
    return folder


def find_binaries() -> Path:
    """The folder with etcd, kube-apiserver, kube-controller-manager and helm."""
    return built_binaries(
        "PODCACHE_CONTROLPLANE_BIN",
        "build-controlplane",
        ("etcd", "kube-apiserver", "kube-controller-manager", "helm"),
    )


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in ``workdir``; admin kubeconfig."""

    def __init__(
        self,
        binaries: Path,
        workdir: Path | None = None,
        *,
        launcher: Sequence[str] = (),
        bind_address: str = "127.0.0.1",
        advertise_address: str = "127.0.0.1",
        serving_ips: Sequence[str] = (),
        apiserver_args: Sequence[str] = (),
        controllers: str = CONTROLLERS,
    ) -> None:
        self.binaries = binaries
        self.launcher = list(launcher)
        """Prefix of every command (e.g. nsenter into the node's network namespace)."""
        self.bind_address = bind_address
        self.advertise_address = advertise_address
        # Clients reach the apiserver on loopback, by the advertised address (the
        # kubernetes Service's endpoint) and by the Service's own IP.
        self.serving_ips = tuple(dict.fromkeys(("127.0.0.1", advertise_address, *serving_ips)))
        self.apiserver_args = list(apiserver_args)
        self.controllers = controllers
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="podcache-kube-"))
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki = self.workdir / "pki"
        self.pki.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ca = CertificateAuthority(self.pki)
        self.admin: KeyPair | None = None
        self.kubeconfig = self.workdir / "admin.kubeconfig"

    # --- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start etcd, the apiserver and the controller-manager.

        Their ports are picked free beforehand, so another process can take one in the
        meantime (a CI run saw the apiserver fail with "address already in use"). Then
        everything is stopped and started again on new ports, with the failed
        attempt's logs kept beside (``<name>.log.<attempt>``). The apiserver keeps its
        port under a launcher: the node forwards that port into its own network
        namespace, where nothing else can take it.
        """
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(time.monotonic() + timeout)
                return
            except ControlPlaneUnavailable:
                if attempt == attempts or not self._lost_a_port():
                    raise
            self.stop()
            for log in self.logs.glob("*.log"):
                log.rename(log.with_name(f"{log.name}.{attempt}"))
            shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
            if not self.launcher:
                self.port = free_port()
                self.url = f"https://127.0.0.1:{self.port}"

    def _lost_a_port(self) -> bool:
        return any(
            "address already in use" in log.read_text(errors="replace")
            for log in self.logs.glob("*.log")
        )

    def _start_once(self, deadline: float) -> None:
        serving = self.ca.issue(
            "apiserver",
            common_name="kube-apiserver",
            ips=self.serving_ips,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server=True,
        )
        self.admin = self.ca.issue(
            "admin",
            common_name="podcache-e2e-admin",
            organizations=("system:masters",),
            client=True,
        )
        sa = service_account_keys(self.pki)
        self.write_kubeconfig(self.kubeconfig, client_cert=self.admin)
        etcd_port, etcd_peer = free_port(), free_port()
        self.spawn(
            "etcd",
            [
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                "--unsafe-no-fsync",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}",
                "--log-level=warn",
            ],
        )
        self.spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.advertise_address}",
                f"--secure-port={self.port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.ca.cert_path}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                f"--enable-admission-plugins={ADMISSION_PLUGINS}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.pki / 'apiserver-generated'}",
                *self.apiserver_args,
            ],
        )
        self._wait_ready(deadline)
        self.spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.pki / 'kcm-generated'}",
                f"--controllers={self.controllers}",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={self.ca.cert_path}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        self._wait_default_service_account(deadline)

    def stop(self) -> None:
        """Stop every process, the last started first."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:  # nothing here is worth a graceful drain: the data dies with the cluster
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def check_alive(self) -> None:
        """Raise with the log tail when a component has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ControlPlaneUnavailable(
                    f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- access ----------------------------------------------------------------------

    def write_kubeconfig(
        self,
        path: Path,
        *,
        client_cert: KeyPair | None = None,
        token: str | None = None,
        namespace: str = "default",
    ) -> Path:
        """A kubeconfig for this cluster with either a client certificate or a token."""
        user: dict[str, str] = {}
        if client_cert is not None:
            user["client-certificate"] = str(client_cert.cert)
            user["client-key"] = str(client_cert.key)
        if token is not None:
            user["token"] = token
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca.pem).decode(),
                    },
                }
            ],
            "users": [{"name": "e2e", "user": user}],
            "contexts": [
                {
                    "name": "e2e",
                    "context": {
                        "cluster": "e2e",
                        "user": "e2e",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "e2e",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.admin is not None
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return context

    def get(self, path: str, timeout: float = 5.0, accept: str = "*/*") -> bytes:
        """A raw GET as admin (readiness, metrics, tables) without a client library."""
        request = urllib.request.Request(self.url + path, headers={"Accept": accept})
        with urllib.request.urlopen(request, context=self._ssl_context(), timeout=timeout) as r:
            body: bytes = r.read()
            return body

    def watch_until(
        self,
        collection: str,
        done: Callable[[dict[str, dict[str, Any]]], bool],
        *,
        timeout: float,
        what: str,
    ) -> dict[str, dict[str, Any]]:
        """List ``collection`` (a path with its query) and follow it with a watch until
        ``done(objects by name)`` holds; returns those objects (raw JSON).

        A watch instead of polling: 30 pods listed every 0.1 s through the client's
        models cost a benchmark about a tenth of the machine it was measuring. A watch
        that ends (its timeout, a 410 Gone) is followed by a new list.
        """
        deadline = time.monotonic() + timeout
        joiner = "&" if "?" in collection else "?"
        while True:
            listing = json.loads(self.get(collection, timeout=30))
            objects = {item["metadata"]["name"]: item for item in listing["items"]}
            if done(objects):
                return objects
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            query = (
                f"{joiner}watch=1&resourceVersion={listing['metadata']['resourceVersion']}"
                f"&timeoutSeconds={max(1, int(remaining))}"
            )
            request = urllib.request.Request(self.url + collection + query)
            try:
                with urllib.request.urlopen(
                    request, context=self._ssl_context(), timeout=remaining + 5
                ) as stream:
                    for line in stream:
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break  # e.g. 410 Gone: list again
                        item = event["object"]
                        if event["type"] == "DELETED":
                            objects.pop(item["metadata"]["name"], None)
                        elif event["type"] != "BOOKMARK":
                            objects[item["metadata"]["name"]] = item
                        if done(objects):
                            return objects
            except OSError:  # the stream broke or timed out: list again
                pass

    def stop_process(self, name: str, timeout: float = 10.0) -> None:
        """Stop one component (SIGTERM, then SIGKILL after ``timeout``)."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    # --- internals -------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], *, program: Path | str | None = None) -> None:
        """Start a component under the launcher, its output in ``logs/<name>.log``; it
        stops with the plane (last started, first stopped) or alone by ``stop_process``."""
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [*self.launcher, str(program or self.binaries / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if self.get("/readyz", timeout=2.0) == b"ok":
                    return
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise ControlPlaneUnavailable(
            f"kube-apiserver not ready at {self.url}/readyz: {last}\n"
            f"{self.log_tail('kube-apiserver')}"
        )

    def _wait_default_service_account(self, deadline: float) -> None:
        """Pods need the namespace's default ServiceAccount (made by the controller-manager)."""
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.get("/api/v1/namespaces/default/serviceaccounts/default", timeout=2.0)
                return
            time.sleep(0.1)
        raise ControlPlaneUnavailable(
            "the controller-manager made no default ServiceAccount:\n"
            f"{self.log_tail('kube-controller-manager')}"
        )
