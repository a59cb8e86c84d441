"""Fixtures for running the operator for real against the KMock Kubernetes emulator.

``kmock`` (the KMock plugin's fixture) is a ``ClusterEmulator`` here (see
``emulator``); ``cluster`` declares the resources the operator discovers;
``operator`` runs the operator in a thread with test settings: no peering, short
backoffs, the webhook on HTTPS with a throwaway CA on a free port, managed by kopf.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from podcache_operator import settings as podcache_settings
from tests.operator import emulator
from tests.operator.emulator import (  # re-exported for the test modules
    CACHECONFIGS,
    CRDS,
    NAMESPACE,
    SERVICEMONITORS,
    WEBHOOKS,
    ClusterEmulator,
    condition,
    get,
    install_servicemonitor_crd,
    servicemonitor_crd,
)

__all__ = [
    "CACHECONFIGS",
    "CRDS",
    "NAMESPACE",
    "SERVICEMONITORS",
    "WEBHOOKS",
    "ClusterEmulator",
    "condition",
    "eventually",
    "get",
    "install_servicemonitor_crd",
    "servicemonitor_crd",
    "webhook_ssl_context",
]

DEADLINE = 10.0  # seconds a condition may take to come true; usually well under one


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ClusterEmulator}


@pytest.fixture
def cluster(kmock: ClusterEmulator) -> ClusterEmulator:
    """The emulator with the resources of a cluster without the Prometheus Operator."""
    emulator.declare_resources(kmock)
    return kmock


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    try:
        return emulator.make_certificates(tmp_path_factory.mktemp("webhook-tls"))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the openssl CLI is needed to make the webhook's test certificates: {exc}")


@pytest.fixture
def operator_settings(
    certificates: dict[str, Path], request: pytest.FixtureRequest
) -> podcache_settings.Settings:
    """Test settings; parametrize indirectly with a dict of WebhookSettings fields to change
    (and of Settings fields, such as check_secrets)."""
    changes: dict[str, Any] = dict(getattr(request, "param", {}))
    # Fields of Settings itself (e.g. check_secrets); the rest are WebhookSettings fields.
    top = {key: changes.pop(key) for key in list(changes) if key in _SETTINGS_FIELDS}
    settings = emulator.test_settings(certificates)
    return dataclasses.replace(
        settings, webhook=dataclasses.replace(settings.webhook, **changes), **top
    )


_SETTINGS_FIELDS = {field.name for field in dataclasses.fields(podcache_settings.Settings)} - {
    "webhook"
}


@pytest.fixture
async def operator(
    cluster: ClusterEmulator, operator_settings: podcache_settings.Settings
) -> AsyncIterator[podcache_settings.Settings]:
    """The operator running (in a thread of its own) until the test ends."""
    runner = emulator.OperatorThread(server=str(cluster.url).rstrip("/"), config=operator_settings)
    await runner.start(within=DEADLINE)
    try:
        yield operator_settings
    finally:
        await runner.stop(within=DEADLINE)


async def eventually(check: Callable[[], Any], *, within: float = DEADLINE, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (and return it); fail after ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (KeyError, ValueError, AssertionError) as exc:
            last = exc
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what or check}: last result {last!r}")
        await asyncio.sleep(0.02)


def webhook_ssl_context(certificates: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates["ca.crt"]))
