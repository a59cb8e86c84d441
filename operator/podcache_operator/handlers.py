"""The kopf handlers: thin glue from cluster events to ``reconciling`` and status patches.

* CacheConfig create/update/resume → ``reconciling.reconcile``; a bad spec sets
  Ready=False, posts a Warning and is not retried (``kopf.PermanentError``) until the
  spec changes; a missing Secret or a failing API is retried (``kopf.TemporaryError``).
* Deletion needs no handler: the ConfigMap, Service and ServiceMonitor carry owner
  references, so the garbage collector removes them; running pods keep their last
  config (a deleted ConfigMap volume stays mounted as it was).
* Two indices: every CacheConfig (for the webhook and for revisits), and the
  labelled pods with a running sidecar (for ``status.pods``).
* Pod events keep ``status.pods`` current; the ServiceMonitor CRD appearing (or
  going) revisits every CacheConfig that wants a ServiceMonitor.
* An owned ConfigMap or Service deleted or edited by hand is put back (``drift``).
* Every reconciliation, whatever woke it, is timed and counted by outcome
  (``RuntimeState.metrics``).

The watched resources come from ``kubeapi`` so its ``API_CALLS`` covers them.
Kopf passes indices as keyword arguments named after the index functions; its
typed callback protocols cannot list them, so handlers take them from ``kwargs``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import kopf

from podcache_operator import (
    bare_pod_restarts,
    bare_pods,
    bookkeeping,
    cacheconfig_mirror,
    drift,
    injection,
    kubeapi,
    reconciling,
    rendering,
)
from podcache_operator import metrics as podcache_metrics
from podcache_operator import settings as podcache_settings

CACHECONFIGS = (
    kubeapi.CACHECONFIGS.group,
    kubeapi.CACHECONFIGS.version,
    kubeapi.CACHECONFIGS.plural,
)
PODS = (kubeapi.PODS.group, kubeapi.PODS.version, kubeapi.PODS.plural)
CONFIGMAPS = (kubeapi.CONFIGMAPS.group, kubeapi.CONFIGMAPS.version, kubeapi.CONFIGMAPS.plural)
SERVICES = (kubeapi.SERVICES.group, kubeapi.SERVICES.version, kubeapi.SERVICES.plural)
OWNED = {"app.kubernetes.io/managed-by": rendering.MANAGED_BY}
CRDS = (kubeapi.CRDS.group, kubeapi.CRDS.version, kubeapi.CRDS.plural)
LABELLED = {rendering.CONFIG_LABEL: kopf.PRESENT}

Key = tuple[str, str]
"""(namespace, CacheConfig name)."""


@dataclasses.dataclass
class RuntimeState:
    """Operator-wide state shared by all handlers (``memo.state``).

    kopf gives every object a shallow copy of the operator's memo, so shared state
    must live in one mutable object like this, never in plain memo attributes.
    """

    pod_counts: dict[Key, int] = dataclasses.field(default_factory=dict)
    """The ``status.pods`` last written per CacheConfig (to skip no-op patches)."""
    pod_count_locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    bare_pods: dict[Key, list[str]] = dataclasses.field(default_factory=dict)
    """The ``status.podsWithoutSidecar`` last written per CacheConfig."""
    reported_bare_pods: dict[Key, set[str]] = dataclasses.field(default_factory=dict)
    """Per CacheConfig, the pods already named in a PodWithoutSidecar Event (and still bare)."""
    bare_pod_restarts: bare_pod_restarts.BarePodRestarts | None = None
    """Evicts labelled pods no webhook saw (``Settings.restart_pods_without_sidecar``)."""
    servicemonitor_crd: reconciling.CrdPresence = dataclasses.field(
        default_factory=reconciling.CrdPresence
    )
    """Whether the ServiceMonitor CRD is established (its watch, else a GET remembered)."""
    metrics: podcache_metrics.OperatorMetrics = dataclasses.field(
        default_factory=podcache_metrics.OperatorMetrics
    )
    """The operator's Prometheus metrics (served by ``main.serve_metrics``)."""
    cacheconfig_mirror: cacheconfig_mirror.CacheConfigMirror | None = None
    """The webhook's live CacheConfigs (``main.mirror_cacheconfigs``); None: ask the API."""


@kopf.index(*CACHECONFIGS)
def cacheconfigs(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Every CacheConfig by (namespace, name): a snapshot, not kopf's live body."""
    snapshot = copy.deepcopy(dict(body))
    snapshot.get("metadata", {}).pop("managedFields", None)  # often most of the bytes; unused
    return {(namespace or "", name): snapshot}


@kopf.index(*PODS, labels=LABELLED)
def sidecar_pods(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Key, str] | None:
    """Labelled pods whose injected sidecar runs, by the CacheConfig they name."""
    if not runs_sidecar(body):
        return None
    return {(namespace or "", body.metadata.labels[rendering.CONFIG_LABEL]): name}


@kopf.index(*PODS, labels=LABELLED)
def pods_without_sidecar(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Key, str] | None:
    """Labelled pods admitted without the sidecar, by the CacheConfig they name."""
    if not bare_pods.lacks_sidecar(body):
        return None
    return {(namespace or "", body.metadata.labels[rendering.CONFIG_LABEL]): name}


def runs_sidecar(pod: Mapping[str, Any]) -> bool:
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp") or not injection.is_injected(pod):
        return False
    return (pod.get("status") or {}).get("phase") == "Running"


def pod_count(index: Mapping[Key, Any], key: Key) -> int:
    return len(index.get(key, ()))


@kopf.on.resume(*CACHECONFIGS)
@kopf.on.create(*CACHECONFIGS)
@kopf.on.update(*CACHECONFIGS, field="spec")
async def reconcile_cacheconfig(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Render and apply what the CacheConfig owns; write its status."""
    sidecar_pods: kopf.Index[Key, str] = kwargs["sidecar_pods"]
    key: Key = (body.metadata.namespace or "", body.metadata.name or "")
    context = _context(memo, logger)
    pods = pod_count(sidecar_pods, key)
    others = _all(kwargs["cacheconfigs"])
    try:
        with memo.state.metrics.reconciliation():
            status = await reconciling.reconcile(body, pods=pods, context=context, others=others)
    except reconciling.InvalidSpec as exc:
        patch.status.update(exc.status)
        kopf.warn(body, reason=exc.reason, message=str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
    except reconciling.Blocked as exc:
        patch.status.update(exc.status)
        kopf.warn(body, reason=exc.reason, message=str(exc))
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    patch.status.update(status)
    for stale in bookkeeping.stale_annotations(body.metadata.annotations):
        patch.metadata.annotations[stale] = None
    memo.state.pod_counts[key] = pods
    logger.info("Reconciled: config %s, %d pod(s) with the sidecar", status.get("configHash"), pods)


@kopf.on.event(*PODS, labels=LABELLED)
async def count_pods(
    *,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: Any,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Keep ``status.pods`` of the named CacheConfig equal to its running sidecars, and
    ``status.podsWithoutSidecar`` to its labelled pods that have none (``bare_pods``)."""
    sidecar_pods: kopf.Index[Key, str] = kwargs["sidecar_pods"]
    bare: kopf.Index[Key, str] = kwargs["pods_without_sidecar"]
    key: Key = (namespace or "", labels[rendering.CONFIG_LABEL])
    state: RuntimeState = memo.state
    _offer_for_restart(state, key, kwargs, kwargs["cacheconfigs"])
    lock = state.pod_count_locks.setdefault(key, asyncio.Lock())
    async with lock:  # two pods' events must not write counts out of order
        count = pod_count(sidecar_pods, key)
        without = bare_pods.listed(bare.get(key, ()))
        if state.pod_counts.get(key) == count and state.bare_pods.get(key) == without:
            return
        try:
            result = await kubeapi.patch_status(
                kubeapi.CACHECONFIGS,
                namespace=key[0],
                name=key[1],
                status={"pods": count, "podsWithoutSidecar": without},
                settings=memo.kopf_settings,
                logger=logger,
            )
        except kubeapi.TRANSIENT as exc:  # the next pod event tries again
            logger.warning("Could not update status.pods of CacheConfig %s/%s: %s", *key, exc)
            result = None
        # After the status: whoever reads the Event and then the status finds the pod named.
        await _warn_about_new_bare_pods(key, without, kwargs["cacheconfigs"], memo, logger)
        if result is not None:
            state.pod_counts[key] = count
            state.bare_pods[key] = without


def _offer_for_restart(
    state: RuntimeState,
    key: Key,
    event: Mapping[str, Any],
    cacheconfigs: kopf.Index[Key, dict[str, Any]],
) -> None:
    restarts = state.bare_pod_restarts
    if restarts is None:
        return
    pod, name = event["body"], event["name"]
    # Only while its CacheConfig exists: without one the replacement would be bare too.
    if event["type"] != "DELETED" and key in cacheconfigs and bare_pods.unseen_and_replaceable(pod):
        restarts.offer(key, name)
    else:
        restarts.withdraw(key, name)


async def _warn_about_new_bare_pods(
    key: Key,
    without: list[str],
    cacheconfigs: kopf.Index[Key, dict[str, Any]],
    memo: Any,
    logger: kopf.Logger,
) -> None:
    """One Warning Event on the CacheConfig per pod found without the sidecar."""
    state: RuntimeState = memo.state
    reported = state.reported_bare_pods.setdefault(key, set())
    reported &= set(without)  # forget pods that are gone or fixed
    cacheconfig = next(iter(cacheconfigs.get(key, ())), None)
    for pod_name in without:
        if pod_name in reported or cacheconfig is None:
            continue
        message = bare_pods.warning(pod_name)
        logger.warning("CacheConfig %s/%s: %s", *key, message)
        try:
            await kubeapi.warn(
                cacheconfig,
                reason="PodWithoutSidecar",
                message=message,
                settings=memo.kopf_settings,
                logger=logger,
            )
        except kubeapi.TRANSIENT as exc:
            logger.warning("Could not post the PodWithoutSidecar Event: %r", exc)
            continue
        reported.add(pod_name)


def _is_servicemonitor_crd(*, name: str, **_: Any) -> bool:
    return name == kubeapi.SERVICEMONITOR_CRD


@kopf.on.event(*CRDS, when=_is_servicemonitor_crd)
async def servicemonitor_crd_changed(
    *,
    type: str,
    body: kopf.Body,
    memo: Any,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """The ServiceMonitor CRD came (or went): revisit CacheConfigs that want a ServiceMonitor."""
    cacheconfigs: kopf.Index[Key, dict[str, Any]] = kwargs["cacheconfigs"]
    sidecar_pods: kopf.Index[Key, str] = kwargs["sidecar_pods"]
    present = type != "DELETED" and kubeapi.is_established(body)
    state: RuntimeState = memo.state
    if not state.servicemonitor_crd.heard(present):
        return
    logger.info(
        "%s is %s; revisiting CacheConfigs",
        kubeapi.SERVICEMONITOR_CRD,
        "established" if present else "gone",
    )
    context = _context(memo, logger)
    everyone = _all(cacheconfigs)
    wanted = reconciling.needs_service_monitor(everyone)
    for snapshot in wanted:
        metadata = snapshot["metadata"]
        key: Key = (metadata["namespace"], metadata["name"])
        try:
            with state.metrics.reconciliation():
                status = await reconciling.reconcile(
                    snapshot, pods=pod_count(sidecar_pods, key), context=context, others=everyone
                )
        except reconciling.ReconcileFailure:
            continue  # its own handler reports and retries it
        await kubeapi.patch_status(
            kubeapi.CACHECONFIGS,
            namespace=key[0],
            name=key[1],
            status=status,
            settings=context.kopf_settings,
            logger=logger,
        )


@kopf.on.event(*CONFIGMAPS, labels=OWNED)
@kopf.on.event(*SERVICES, labels=OWNED)
async def owned_object_changed(
    *,
    type: str,
    body: kopf.Body,
    namespace: str | None,
    resource: kopf.Resource,
    memo: Any,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Put back a ConfigMap or Service of ours that was deleted or edited by hand."""
    owner = drift.controller_of(body)
    if owner is None or namespace is None:
        return
    cacheconfigs: kopf.Index[Key, dict[str, Any]] = kwargs["cacheconfigs"]
    known = next(iter(cacheconfigs.get((namespace, owner.name), ())), None)
    if known is None or known["metadata"].get("uid") != owner.uid:
        return  # the owner is gone: the garbage collector takes its objects
    context = _context(memo, logger)
    if type != "DELETED":
        try:
            rendered = rendering.render(
                known.get("spec") or {},
                namespace=namespace,
                name=owner.name,
                metrics_port=context.config.sidecar.metrics_port,
            )
        except ValueError:
            return  # an invalid spec: its own handler reports it
        desired = rendered.config_map if resource.plural == "configmaps" else rendered.service
        if not drift.drifted(body, desired):
            return  # our own write, or changes that are not ours to undo
    # The index may lag behind a deletion in progress: ask the API before recreating.
    fresh = await kubeapi.get(
        kubeapi.CACHECONFIGS,
        namespace=namespace,
        name=owner.name,
        settings=context.kopf_settings,
        logger=logger,
    )
    if fresh is None or fresh["metadata"].get("uid") != owner.uid:
        return
    if fresh["metadata"].get("deletionTimestamp"):
        return
    logger.info(
        "%s of CacheConfig %s was %s; restoring it",
        resource.kind,
        owner.name,
        "deleted" if type == "DELETED" else "changed",
    )
    sidecar_pods: kopf.Index[Key, str] = kwargs["sidecar_pods"]
    try:
        with memo.state.metrics.reconciliation():
            status = await reconciling.reconcile(
                fresh,
                pods=pod_count(sidecar_pods, (namespace, owner.name)),
                context=context,
                others=_all(cacheconfigs),
            )
    except reconciling.ReconcileFailure:
        return  # the CacheConfig's own handler reports and retries
    await kubeapi.patch_status(
        kubeapi.CACHECONFIGS,
        namespace=namespace,
        name=owner.name,
        status=status,
        settings=context.kopf_settings,
        logger=logger,
    )


def _all(cacheconfigs: kopf.Index[Key, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every CacheConfig in the index (for the key-prefix overlap check)."""
    return [item for store in cacheconfigs.values() for item in store]


def _context(memo: Any, logger: kopf.Logger) -> reconciling.Context:
    config: podcache_settings.Settings = memo.config
    return reconciling.Context(
        config=config,
        kopf_settings=memo.kopf_settings,
        logger=logger,
        servicemonitor_crd=memo.state.servicemonitor_crd,
    )
