"""What the operator needs from the cluster, checked at start and said at WARNING when missing.

Kopf reports a missing peering object at debug level only and then waits for it
forever, so an operator installed with ``crds.enabled=false`` (or whose peering object
a GitOps tool pruned: the chart makes it as a post-install hook) did nothing and said
nothing. Here, before kopf watches anything:

* the CacheConfig CRD must be served: the operator waits for it, saying so every
  minute and how to install it (kopf would not notice it later: its CRD watch is
  narrowed to the ServiceMonitor CRD by a field selector);
* peering: when kopf's peering CRD is not installed, one replica runs standalone and
  several wait for it (they would all act at once), with a WARNING either way; when
  the peering object is missing, it is created (a cluster-wide ClusterKopfPeering, or a
  KopfPeering in each namespace named by ``--namespace`` without globs), and
  ``watch_peering`` creates it again whenever it disappears while running;
* the webhook's certificate: without one, kopf generates a self-signed certificate
  only when ``certbuilder`` is installed, and otherwise crashes the operator;
  ``webhook_off_reason`` says why the webhook must be turned off instead.

Beware: creating a peering object needs ``create`` on it (``kubeapi.API_CALLS``); on a
403 the operator says what it lacks and behaves as if the CRD were missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable, Sequence

import kopf

from podcache_operator import kubeapi
from podcache_operator import settings as podcache_settings

CACHECONFIG_CRD = f"{kubeapi.CACHECONFIGS.plural}.{kubeapi.CACHECONFIGS.group}"
INSTALL_CRDS = "install the chart with crds.enabled=true, or: kubectl apply -f manifests/crds.yaml"
POLL_INTERVAL = 5.0  # seconds between looks while waiting: someone is installing a CRD now
NAG_INTERVAL = 60.0  # seconds between repeated WARNINGs while waiting

Sleep = Callable[[float], Awaitable[None]]


async def wait_until_served(
    resource: kubeapi.Resource,
    *,
    what: str,
    fix: str,
    settings: kopf.OperatorSettings,
    logger: kubeapi.Logger,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Return once ``resource`` is served; until then a WARNING now and every minute."""
    waited = 0.0
    while not await kubeapi.served(resource, settings=settings, logger=logger):
        if waited % NAG_INTERVAL == 0:
            logger.warning("Waiting for %s: it is not installed; %s", what, fix)
        await sleep(POLL_INTERVAL)
        waited += POLL_INTERVAL
    if waited:
        logger.warning("%s is installed now; starting", what)


def peering_objects(
    name: str, *, clusterwide: bool, namespaces: Sequence[str]
) -> list[tuple[kubeapi.Resource, dict[str, object]]]:
    """The peering objects kopf will keep-alive in: (resource, object to create)."""
    if clusterwide:
        return [
            (
                kubeapi.CLUSTER_PEERINGS,
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": name},
                },
            )
        ]
    return [
        (
            kubeapi.PEERINGS,
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "KopfPeering",
                "metadata": {"name": name, "namespace": namespace},
            },
        )
        for namespace in namespaces
        if not any(char in namespace for char in "*?[!")  # globs: kopf matches them later
    ]


async def prepare_peering(
    config: podcache_settings.PeeringSettings,
    *,
    name: str,
    clusterwide: bool,
    namespaces: Sequence[str],
    settings: kopf.OperatorSettings,
    logger: kubeapi.Logger,
    sleep: Sleep = asyncio.sleep,
) -> bool:
    """Make peering possible; True to peer, False to run standalone (one replica only)."""
    resource = kubeapi.CLUSTER_PEERINGS if clusterwide else kubeapi.PEERINGS
    crd = f"{resource.plural}.{resource.group}"
    if not await kubeapi.served(resource, settings=settings, logger=logger):
        if config.replicas <= 1:
            logger.warning(
                "kopf's peering CRD %s is not installed: running standalone, which is right"
                " for one replica. Before running more, %s",
                crd,
                INSTALL_CRDS,
            )
            return False
        await wait_until_served(
            resource,
            what=f"kopf's peering CRD {crd} ({config.replicas} replicas must not all act at once)",
            fix=INSTALL_CRDS,
            settings=settings,
            logger=logger,
            sleep=sleep,
        )
    try:
        await ensure_peering_objects(
            name, clusterwide=clusterwide, namespaces=namespaces, settings=settings, logger=logger
        )
    except kubeapi.Forbidden as exc:
        logger.warning(
            "The peering object %s is missing and this operator may not create it (%s):"
            " grant create on %s, or create it: kubectl apply -f manifests/crds.yaml",
            name,
            exc,
            crd,
        )
        if config.replicas <= 1:
            logger.warning("Running standalone meanwhile, which is right for one replica")
            return False
        logger.warning("Kopf waits for the peering object %s; nothing is handled until then", name)
    return True


async def ensure_peering_objects(
    name: str,
    *,
    clusterwide: bool,
    namespaces: Sequence[str],
    settings: kopf.OperatorSettings,
    logger: kubeapi.Logger,
) -> int:
    """Create the peering objects that are missing; how many were."""
    created = 0
    for resource, obj in peering_objects(name, clusterwide=clusterwide, namespaces=namespaces):
        metadata = obj["metadata"]
        assert isinstance(metadata, dict)
        namespace = metadata.get("namespace")
        found = await kubeapi.get(
            resource, namespace=namespace, name=name, settings=settings, logger=logger
        )
        if found is not None:
            continue
        if await kubeapi.create(resource, obj, settings=settings, logger=logger) is not None:
            created += 1
            logger.warning(
                "The peering object %s %s%s was missing (crds.enabled=false, or a GitOps tool"
                " pruned the chart's post-install hook); created it",
                obj["kind"],
                f"{namespace}/" if namespace else "",
                name,
            )
    return created


async def watch_peering(
    name: str,
    *,
    clusterwide: bool,
    namespaces: Sequence[str],
    interval: float,
    settings: kopf.OperatorSettings,
    logger: kubeapi.Logger,
) -> None:
    """Create the peering objects again whenever they disappear; runs until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await ensure_peering_objects(
                name,
                clusterwide=clusterwide,
                namespaces=namespaces,
                settings=settings,
                logger=logger,
            )
        except kubeapi.TRANSIENT as exc:  # the next round tries again
            logger.warning("Could not check the peering object %s: %s", name, exc)


def webhook_off_reason(config: podcache_settings.WebhookSettings) -> str | None:
    """Why the webhook cannot serve as configured (then it is turned off), or None."""
    if not config.enabled or config.cert_file is not None:
        return None
    if importlib.util.find_spec("certbuilder") is not None:
        return None  # kopf generates a self-signed certificate
    return (
        "no certificate is configured (PODCACHE_WEBHOOK_CERT_FILE and"
        " PODCACHE_WEBHOOK_KEY_FILE, which the chart sets) and certbuilder, which a"
        " self-signed one needs, is not installed: the admission webhook is OFF and this"
        " process injects no sidecar. Set the certificate files, pip install certbuilder,"
        " or set PODCACHE_WEBHOOK_ENABLED=false to silence this"
    )
