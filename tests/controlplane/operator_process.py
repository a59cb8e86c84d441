"""The operator as a local process, configured as the chart's Deployment configures it.

It runs with a token of the chart's ServiceAccount (TokenRequest API), so what it may do
is what the chart's RBAC grants, not what an admin may. Its environment is the chart
Deployment's container ``env`` as stored in the apiserver, with the listeners moved to
free loopback ports and the webhook serving a certificate for 127.0.0.1 (the fixture
points the chart's MutatingWebhookConfiguration at it by ``url:``).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.controlplane.cluster import ControlPlane
from tests.controlplane.pki import KeyPair
from tests.redis_server import free_port

OPERATOR = Path(sys.executable).with_name("podcache-operator")


def service_account_token(api: client.ApiClient, namespace: str, name: str) -> str:
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    answer = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    token: str = answer.status.token
    return token


def deployment_env(deployment: client.V1Deployment, pod_name: str) -> dict[str, str]:
    """The operator container's env, with the downward-API fields a kubelet would fill."""
    container = next(c for c in deployment.spec.template.spec.containers if c.name == "operator")
    fields = {"metadata.name": pod_name, "metadata.namespace": deployment.metadata.namespace}
    env: dict[str, str] = {}
    for item in container.env or []:
        if item.value_from is not None:
            env[item.name] = fields[item.value_from.field_ref.field_path]
        else:
            env[item.name] = item.value or ""
    return env


class OperatorProcess:
    """``podcache-operator`` started from the chart's Deployment; restartable."""

    def __init__(
        self,
        plane: ControlPlane,
        api: client.ApiClient,
        *,
        namespace: str,
        deployment: str,
        service_account: str,
        webhook_cert: KeyPair,
        workdir: Path,
        overrides: dict[str, str] | None = None,
    ) -> None:
        self.plane = plane
        self.webhook_cert = webhook_cert
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "operator.log"
        stored = client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace)
        token = service_account_token(api, namespace, service_account)
        self.kubeconfig = plane.write_kubeconfig(workdir / "operator.kubeconfig", token=token)
        self.webhook_port = free_port()
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.env = deployment_env(stored, pod_name=f"local-operator-{os.getpid()}")
        self.env.update(
            {
                "PODCACHE_WEBHOOK_ADDR": "127.0.0.1",
                "PODCACHE_WEBHOOK_PORT": str(self.webhook_port),
                "PODCACHE_WEBHOOK_CERT_FILE": str(webhook_cert.cert),
                "PODCACHE_WEBHOOK_KEY_FILE": str(webhook_cert.key),
                "PODCACHE_WEBHOOK_CA_FILE": str(plane.ca.cert_path),
                "PODCACHE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.health_port}/healthz",
                "PODCACHE_OPERATOR_METRICS_ADDR": "127.0.0.1",
                "PODCACHE_OPERATOR_METRICS_PORT": str(self.metrics_port),
                **(overrides or {}),
            }
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "KUBECONFIG": str(self.kubeconfig),
            **self.env,
        }
        if "PYTHONPATH" in os.environ:  # e.g. to run another checkout's operator
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(OPERATOR)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the operator exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the operator did not get ready:\n{self.log_tail()}")

    def ready(self) -> bool:
        """As the chart's readiness probe sees it: ``/readyz`` on the metrics port, 200
        once the webhook answers (``/healthz`` for an operator that has no ``/readyz``)."""
        for url in (
            f"http://127.0.0.1:{self.metrics_port}/readyz",
            f"http://127.0.0.1:{self.health_port}/healthz",
        ):
            try:
                with urllib.request.urlopen(url, timeout=1.0) as answer:
                    return bool(answer.status == 200)
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    return False
            except (OSError, urllib.error.URLError):
                return False
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def point_webhook_at(
    api: client.ApiClient, name: str, url: str, ca_pem: bytes, **changes: Any
) -> None:
    """Replace the chart webhook's Service clientConfig by a loopback URL (and more fields)."""
    admission = client.AdmissionregistrationV1Api(api)
    stored = admission.read_mutating_webhook_configuration(name)
    for hook in stored.webhooks:
        hook.client_config = client.AdmissionregistrationV1WebhookClientConfig(
            url=url, ca_bundle=base64.b64encode(ca_pem).decode()
        )
        for field, value in changes.items():
            setattr(hook, field, value)
    admission.replace_mutating_webhook_configuration(name, stored)
