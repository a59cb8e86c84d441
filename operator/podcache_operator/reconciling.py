"""Bring one CacheConfig's owned objects in line with its spec and compute its status.

Used by the create/update/resume handlers and again when the ServiceMonitor CRD
appears, so the same steps run whatever woke us: validate, render, apply the
ConfigMap and the headless Service (owned through ``ownerReferences`` so the
garbage collector removes them with the CacheConfig), then the ServiceMonitor if
its CRD is served. The result is the full ``status`` to write.

Failures are classified here for kopf: ``InvalidSpec`` (the user must edit the
spec — do not retry) and ``Blocked`` (a referenced Secret is missing — checked only
with ``Settings.check_secrets`` —, the key prefix overlaps another CacheConfig's on the
same Redis (``tenancy``; retried, so it clears when the other one changes or goes), or
the API is failing: retry later). Both carry the status to write before giving up.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import kopf

from podcache_operator import conditions, kubeapi, rendering, settings, tenancy, validation


class ReconcileFailure(Exception):
    """The CacheConfig cannot be reconciled now; ``status`` says why."""

    def __init__(self, message: str, *, reason: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class InvalidSpec(ReconcileFailure):
    """The spec itself is wrong; retrying without an edit cannot help."""


class Blocked(ReconcileFailure):
    """Something outside the spec is missing or failing; retrying can help."""

    def __init__(self, message: str, *, reason: str, status: dict[str, Any], delay: float) -> None:
        super().__init__(message, reason=reason, status=status)
        self.delay = delay


@dataclasses.dataclass
class CrdPresence:
    """Whether the ServiceMonitor CRD is established, as far as this operator knows.

    The CRD watch (``handlers.servicemonitor_crd_changed``) is the authority once it has
    spoken. Until then reconciliations ask the API once (concurrent ones share the
    answer) and remember it: a GET per reconciliation was one read in six of 200
    CacheConfigs created at once. Silence of the watch does not mean "absent": a watch
    selecting one CRD by name sends nothing while that CRD does not exist.
    """

    present: bool | None = None
    """None: not known yet (ask the API)."""
    watched: bool = False
    """The watch has spoken: a GET's answer, possibly older, no longer overrides it."""
    _asking: asyncio.Future[bool] | None = None

    def heard(self, present: bool) -> bool:
        """From the watch; True when this changes what the operator believed."""
        changed = self.present != present
        self.present, self.watched = present, True
        return changed

    async def established(self, ask: Callable[[], Awaitable[bool]]) -> bool:
        """What is known, else ``ask()``'s answer (one question at a time)."""
        if self.present is not None:
            return self.present
        if self._asking is None:
            self._asking = asyncio.ensure_future(ask())
            self._asking.add_done_callback(self._answered)
        return await asyncio.shield(self._asking)

    def _answered(self, asking: asyncio.Future[bool]) -> None:
        self._asking = None
        if not asking.cancelled() and asking.exception() is None and not self.watched:
            self.present = asking.result()  # a failed GET is asked again next time


@dataclasses.dataclass(frozen=True)
class Context:
    """What a reconciliation needs besides the CacheConfig itself."""

    config: settings.Settings
    kopf_settings: kopf.OperatorSettings
    logger: kubeapi.Logger
    servicemonitor_crd: CrdPresence = dataclasses.field(default_factory=CrdPresence)
    """Shared by every reconciliation of the operator (``handlers.RuntimeState``)."""


async def reconcile(
    body: Mapping[str, Any],
    *,
    pods: int,
    context: Context,
    others: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Apply the owned objects of ``body`` and return its new ``status``.

    ``others`` are the CacheConfigs known to the operator (its index), against whose key
    prefixes ``body``'s is checked.
    """
    metadata = body.get("metadata") or {}
    namespace, name = metadata["namespace"], metadata["name"]
    spec = body.get("spec") or {}
    generation = metadata.get("generation")
    existing = (body.get("status") or {}).get("conditions")
    moment = conditions.now()

    def status(*updates: conditions.Condition, config_hash: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": conditions.merge(existing, updates, generation=generation, moment=moment),
            "pods": pods,
        }
        if config_hash is not None:
            result["configHash"] = config_hash
        return result

    problems = validation.check_spec(
        spec, namespace=namespace, name=name, sidecar=context.config.sidecar
    )
    if problems:
        message = "; ".join(str(problem) for problem in problems)
        raise InvalidSpec(
            message,
            reason="InvalidSpec",
            status=status(
                conditions.Condition.false(
                    conditions.CONFIG_RENDERED, reason="InvalidSpec", message=message
                ),
                conditions.Condition.false(conditions.READY, reason="InvalidSpec", message=message),
            ),
        )

    overlaps = tenancy.conflicts(body, others)
    if overlaps:
        message = "; ".join(f"spec.redis.keyPrefix: {overlap}" for overlap in overlaps)
        raise Blocked(
            message,
            reason="KeyPrefixConflict",
            delay=context.config.prefix_conflict_retry_delay,
            status=status(
                conditions.Condition.false(
                    conditions.CONFIG_RENDERED, reason="KeyPrefixConflict", message=message
                ),
                conditions.Condition.false(
                    conditions.READY, reason="KeyPrefixConflict", message=message
                ),
            ),
        )

    async def fetch_secret(secret: str) -> Mapping[str, Any] | None:
        return await kubeapi.get(
            kubeapi.SECRETS,
            namespace=namespace,
            name=secret,
            settings=context.kopf_settings,
            logger=context.logger,
        )

    missing: list[validation.Problem] = []
    if context.config.check_secrets:  # opt-in: needs get on Secrets (see Settings)
        try:
            missing = await validation.check_secrets(spec, fetch=fetch_secret)
        except kubeapi.TRANSIENT as exc:
            raise _api_failure(exc, status=status) from exc
    if missing:
        message = "; ".join(str(problem) for problem in missing)
        raise Blocked(
            message,
            reason="SecretNotFound",
            delay=context.config.secret_retry_delay,
            status=status(
                conditions.Condition.false(
                    conditions.READY, reason="SecretNotFound", message=message
                ),
            ),
        )

    rendered = rendering.render(
        spec, namespace=namespace, name=name, metrics_port=context.config.sidecar.metrics_port
    )
    owned = [rendered.config_map, rendered.service]
    if rendered.service_monitor is not None:
        owned.append(rendered.service_monitor)
    kopf.adopt(owned, owner=kopf.Body(cast(Any, dict(body))))
    try:
        await kubeapi.apply(
            kubeapi.CONFIGMAPS,
            rendered.config_map,
            settings=context.kopf_settings,
            logger=context.logger,
        )
        await kubeapi.apply(
            kubeapi.SERVICES,
            rendered.service,
            settings=context.kopf_settings,
            logger=context.logger,
        )
        monitor = await _service_monitor(rendered, namespace=namespace, name=name, context=context)
    except kubeapi.TRANSIENT as exc:
        raise _api_failure(exc, status=status) from exc
    return status(
        conditions.Condition.true(
            conditions.CONFIG_RENDERED,
            reason="Rendered",
            message=f"ConfigMap {rendered.config_map['metadata']['name']}"
            f" holds config {rendered.config_hash}",
        ),
        monitor,
        conditions.Condition.true(
            conditions.READY, reason="Reconciled", message="config rendered, Service applied"
        ),
        config_hash=rendered.config_hash,
    )


async def _service_monitor(
    rendered: rendering.Rendered, *, namespace: str, name: str, context: Context
) -> conditions.Condition:
    established = await context.servicemonitor_crd.established(
        lambda: kubeapi.crd_established(
            kubeapi.SERVICEMONITOR_CRD, settings=context.kopf_settings, logger=context.logger
        )
    )
    if rendered.service_monitor is None:
        if established:  # switched off after it was on: remove ours
            await kubeapi.delete(
                kubeapi.SERVICEMONITORS,
                namespace=namespace,
                name=rendering.object_name(name),
                settings=context.kopf_settings,
                logger=context.logger,
            )
        return conditions.Condition.false(
            conditions.SERVICE_MONITOR_READY,
            reason="Disabled",
            message="spec.metrics.serviceMonitor.enabled is false",
        )
    not_installed = conditions.Condition.false(
        conditions.SERVICE_MONITOR_READY,
        reason="CRDNotInstalled",
        message=f"{kubeapi.SERVICEMONITOR_CRD} is not installed; the ServiceMonitor is created"
        " as soon as it is",
    )
    if not established:
        return not_installed
    try:
        await kubeapi.apply(
            kubeapi.SERVICEMONITORS,
            rendered.service_monitor,
            settings=context.kopf_settings,
            logger=context.logger,
        )
    except kubeapi.NotFound:  # the CRD exists but is not served yet
        return not_installed
    return conditions.Condition.true(
        conditions.SERVICE_MONITOR_READY,
        reason="Applied",
        message=f"ServiceMonitor {rendered.service_monitor['metadata']['name']} applied",
    )


def _api_failure(exc: BaseException, *, status: Any) -> Blocked:
    message = f"Kubernetes API call failed: {exc}"
    return Blocked(
        message,
        reason="APIError",
        delay=_retry_delay(exc),
        status=status(
            conditions.Condition.false(conditions.READY, reason="APIError", message=message),
        ),
    )


def _retry_delay(exc: BaseException) -> float:
    # Forbidden is a deployment problem (RBAC); do not hammer the apiserver about it.
    return 60.0 if isinstance(exc, kubeapi.Forbidden) else 10.0


def needs_service_monitor(bodies: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """CacheConfigs whose spec asks for a ServiceMonitor (revisited when its CRD comes or goes)."""
    return [
        body
        for body in bodies
        if (((body.get("spec") or {}).get("metrics") or {}).get("serviceMonitor") or {}).get(
            "enabled", True
        )
    ]
