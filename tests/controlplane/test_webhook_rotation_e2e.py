"""The webhook's serving certificate rotated under load, through the real apiserver
(issue 9, defect 7): the files are replaced the way a renewed Secret reaches a pod (the
key and certificate one after the other, so for a moment they do not match), while the
apiserver keeps admitting labelled pods. Every admission in that window must inject:
none may fail or, under failurePolicy Ignore, let a pod through without the sidecar.
The new certificate is served within seconds, on the same listener."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path

from cryptography import x509

from tests.controlplane.harness import Installation, cache_config, eventually
from tests.controlplane.harness import cache_config_ready as ready
from tests.controlplane.harness import create_cache_config as create
from tests.controlplane.test_webhook_e2e import pod, sidecar_of


def served_serial(url: str) -> int:
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def replace(path: Path, data: bytes) -> None:
    """Atomically, as the kubelet swaps a projected Secret's files."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


def test_no_admission_fails_across_a_certificate_rotation(
    installation: Installation, namespace: str
) -> None:
    cluster = installation.cluster
    create(cluster, namespace, cache_config("web", {}))
    eventually(lambda: ready(cluster, namespace, "web"), what="CacheConfig Ready")
    operator = installation.operator
    before = served_serial(operator.webhook_url)

    outcomes: list[str] = []
    stop = threading.Event()

    def admit() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            try:
                stored = cluster.core.create_namespaced_pod(
                    namespace, pod(f"p{index}", "web"), dry_run="All"
                )
                outcomes.append("injected" if sidecar_of(stored) else "bare")
            except Exception as exc:  # a refused admission: recorded, checked below
                outcomes.append(f"error: {exc}")
            time.sleep(0.02)

    thread = threading.Thread(target=admit, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        renewed = cluster.plane.ca.issue(
            "webhook-renewed", common_name="podcache-webhook", ips=("127.0.0.1",), server=True
        )
        current = operator.webhook_cert
        # Key first, then certificate: for a moment the pair on disk does not match.
        replace(current.key, renewed.key.read_bytes())
        time.sleep(0.5)
        replace(current.cert, renewed.cert.read_bytes())
        new_serial = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number
        eventually(
            lambda: served_serial(operator.webhook_url) == new_serial,
            timeout=20,
            what="the renewed certificate served",
        )
        time.sleep(1)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert new_serial != before
    assert len(outcomes) > 20, outcomes
    assert set(outcomes) == {"injected"}, [o for o in outcomes if o != "injected"][:5]
