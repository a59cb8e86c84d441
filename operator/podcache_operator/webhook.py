"""The mutating admission webhook: kopf's ``@kopf.on.mutate`` behind a stricter HTTPS server.

Kopf serves the endpoint (``/inject``, the handler's id) and, when
``settings.webhook.managed`` names one, keeps a MutatingWebhookConfiguration up to
date with our CA and an ``objectSelector`` on ``podcache.io/config`` — so pods that
do not opt in never reach us. The Helm chart may own that configuration instead.

``AdmissionServer`` is kopf's ``WebhookServer`` checking each AdmissionReview
before kopf sees it: a body that is not an ``admission.k8s.io`` AdmissionReview
with a uid, a resource, an operation and an object gets a 400 with a JSON reason,
and any unexpected failure becomes a denied review — never a 500 with a traceback,
and never a stopped server. Every request is timed and counted by outcome there
(``metrics``).

Which CacheConfig a pod names is looked up in ``cacheconfig_mirror`` (no API call per
pod), a watch that kopf peering does not pause, so standby replicas answer from the
CacheConfig as it is too; one GET is the fallback for a CacheConfig created a moment
ago.

The JSONPatch ``injection`` builds goes to the apiserver as it is: behind
``AdmissionServer`` the handler hands its ops over through a per-request context
variable instead of kopf's ``patch``, which kopf would turn back into a JSONPatch by
deep-copying the pod and diffing it whole — most of an admission's CPU time.
Under any other kopf server the handler falls back to kopf's ``patch``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import kopf

from podcache_operator import (
    cacheconfig_mirror,
    conditions,
    injection,
    kubeapi,
    quantities,
    rendering,
    webhook_serving,
)
from podcache_operator import metrics as podcache_metrics
from podcache_operator import settings as podcache_settings

logger = logging.getLogger(__name__)

ADMISSION_API_TIMEOUT = 3.0
"""Seconds an admission may wait for the apiserver: well below the webhook's
``timeoutSeconds`` (10 by default), so that a slow API gets our answer (under
``failurePolicy``) instead of the apiserver timing us out."""
_READ_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, *kubeapi.TRANSIENT)
HANDLER_ID = "inject"
"""Also the URL path (``/inject``) the chart's MutatingWebhookConfiguration points at."""
REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")

_direct_ops: contextvars.ContextVar[injection.JSONPatch | None] = contextvars.ContextVar(
    "podcache_operator_direct_ops", default=None
)
"""Set by ``AdmissionServer`` for one request: the handler's ops, sent without kopf's diff."""


class AdmissionServer(webhook_serving.ReloadingWebhookServer):
    """kopf's HTTPS webhook server, with each request checked before kopf's handling.

    Overrides kopf's per-request ``_serve`` (its aiohttp handler): kopf answers a
    body that is not UTF-8 JSON, or lacks fields it expects, with a 500 and a
    traceback; here every such request gets a 400 with a JSON reason instead.
    """

    def __init__(
        self,
        *,
        metrics: podcache_metrics.OperatorMetrics,
        failure_policy: str = "Ignore",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.failure_policy = failure_policy

    async def _serve(  # type: ignore[override]  # kopf's is a staticmethod; ours needs metrics
        self, fn: kopf.WebhookFn, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        with self.metrics.admission() as admission:
            return await self._answer(
                fn, request, admission=admission, failure_policy=self.failure_policy
            )

    @staticmethod
    async def _answer(
        fn: kopf.WebhookFn,
        request: aiohttp.web.Request,
        *,
        admission: podcache_metrics.Admission,
        failure_policy: str = "Ignore",
    ) -> aiohttp.web.Response:
        raw = await request.read()
        try:
            review = json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # not UTF-8, not JSON, or a number too long to parse
            return bad_request(f"not a JSON document: {exc}")
        problem = review_problem(review)
        if problem is not None:
            return bad_request(problem)
        _fill_namespace(review)
        headers = dict(request.headers)
        sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
        response: Mapping[str, Any]
        ops: injection.JSONPatch = []
        token = _direct_ops.set(ops)
        try:
            response = await fn(
                review, webhook=request.match_info.get("id"), headers=headers, sslpeer=sslpeer
            )
        except Exception as exc:  # the apiserver gets an answer, the server keeps serving
            logger.exception("Admission request %s failed", review["request"]["uid"])
            message = f"podcache webhook failed: {exc!r}"
            if failure_policy == "Fail":
                response = denied(review, code=500, message=message)
            else:  # as the apiserver would treat our failure: admitted, untouched
                response = allowed_unmodified(
                    review, warning=f"{message}; pod admitted without the podcache sidecar"
                )
                ops[:] = injection.not_injected_ops(
                    review["request"].get("object") or {}, "podcache webhook failed"
                )
                admission.noted = "not_injected_allowed"
        finally:
            _direct_ops.reset(token)
        if ops:
            response = with_patch(response, ops)
        admission.answered(response)
        return aiohttp.web.json_response(response)


def with_patch(response: Mapping[str, Any], ops: injection.JSONPatch) -> Mapping[str, Any]:
    """``response`` carrying ``ops`` as its JSONPatch, if it allows the request."""
    payload = response.get("response")
    if not isinstance(payload, dict) or not payload.get("allowed") or "patch" in payload:
        return response  # denied, or kopf's own patch from some other handler: left as is
    payload["patch"] = base64.b64encode(json.dumps(ops).encode("utf-8")).decode("ascii")
    payload["patchType"] = "JSONPatch"
    return response


def bad_request(problem: str) -> aiohttp.web.Response:
    logger.warning("Refused a malformed admission request: %s", problem)
    return aiohttp.web.json_response(
        {"error": "bad_admission_review", "message": problem}, status=400
    )


def review_problem(review: Any) -> str | None:
    """What makes ``review`` not a usable AdmissionReview request, or None if it is fine."""
    if not isinstance(review, Mapping):
        return f"expected an AdmissionReview object, got {type(review).__name__}"
    if review.get("kind") != "AdmissionReview":
        return f"kind: expected AdmissionReview, got {review.get('kind')!r}"
    if review.get("apiVersion") not in REVIEW_VERSIONS:
        expected = ", ".join(REVIEW_VERSIONS)
        return f"apiVersion: expected one of {expected}, got {review.get('apiVersion')!r}"
    request = review.get("request")
    if not isinstance(request, Mapping):
        return "request: missing or not an object"
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        return "request.uid: missing"
    resource = request.get("resource")
    if not isinstance(resource, Mapping) or not all(
        isinstance(resource.get(key), str) for key in ("group", "version", "resource")
    ):
        return "request.resource: expected {group, version, resource}"
    if request.get("operation") not in ("CREATE", "UPDATE", "DELETE", "CONNECT"):
        return f"request.operation: unknown operation {request.get('operation')!r}"
    if not isinstance(request.get("userInfo"), Mapping):
        return "request.userInfo: missing"
    if request["operation"] == "CREATE" and not isinstance(request.get("object"), Mapping):
        return "request.object: missing for a CREATE"
    for key in ("object", "oldObject"):
        if request.get(key) is not None and not isinstance(request[key], Mapping):
            return f"request.{key}: expected an object"
    return None


def allowed_unmodified(review: Mapping[str, Any], *, warning: str) -> dict[str, Any]:
    """An AdmissionReview response admitting the request as it is, with a warning."""
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True, "warnings": [warning]},
    }


def denied(review: Mapping[str, Any], *, code: int, message: str) -> dict[str, Any]:
    """An AdmissionReview response refusing the request with ``message``."""
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": {
            "uid": review["request"]["uid"],
            "allowed": False,
            "status": {"code": code, "message": message},
        },
    }


def _fill_namespace(review: dict[str, Any]) -> None:
    # The object may lack its namespace on CREATE; the request always names it.
    request = review["request"]
    namespace = request.get("namespace")
    if namespace and isinstance(request.get("object"), dict):
        metadata = request["object"].setdefault("metadata", {})
        if isinstance(metadata, dict):
            metadata.setdefault("namespace", namespace)


def build_server(
    config: podcache_settings.WebhookSettings, *, metrics: podcache_metrics.OperatorMetrics
) -> AdmissionServer:
    return AdmissionServer(
        metrics=metrics,
        failure_policy=config.failure_policy,
        addr=config.addr,
        port=config.port,
        host=config.host,
        certfile=config.cert_file,
        pkeyfile=config.key_file,
        cafile=config.ca_file,
    )


async def find_cacheconfig(
    *,
    namespace: str,
    name: str,
    mirror: cacheconfig_mirror.CacheConfigMirror | None,
    kopf_settings: kopf.OperatorSettings,
    logger: kubeapi.Logger,
) -> Mapping[str, Any] | None:
    """The CacheConfig a pod names, as it is now: from the live mirror, else one GET (the
    mirror is still listing, is off, or has not seen a CacheConfig created a moment ago)."""
    if mirror is not None and mirror.synced:
        found = mirror.get(namespace, name)
        if found is not None:
            return found
    return await kubeapi.get(
        kubeapi.CACHECONFIGS, namespace=namespace, name=name, settings=kopf_settings, logger=logger
    )


def merge_patch(original: Mapping[str, Any], patched: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch (for kopf's ``patch``) that turns ``original`` into ``patched``.

    Only the pod sections injection touches: annotations key by key, and the
    containers/initContainers/volumes lists whole (kopf turns it into a JSONPatch).
    """
    result: dict[str, Any] = {}
    old_annotations = (original.get("metadata") or {}).get("annotations") or {}
    new_annotations = (patched.get("metadata") or {}).get("annotations") or {}
    changed = {k: v for k, v in new_annotations.items() if old_annotations.get(k) != v}
    if changed:
        result["metadata"] = {"annotations": changed}
    spec_changes = {
        key: patched["spec"][key]
        for key in ("containers", "initContainers", "volumes")
        if (patched.get("spec") or {}).get(key) != (original.get("spec") or {}).get(key)
    }
    if spec_changes:
        result["spec"] = spec_changes
    return result


@kopf.on.mutate(
    kubeapi.PODS.group or "",
    kubeapi.PODS.version,
    kubeapi.PODS.plural,
    id=HANDLER_ID,
    operations=["CREATE"],
    labels={rendering.CONFIG_LABEL: kopf.PRESENT},
)
async def inject(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    memo: Any,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Add the podcache sidecar to a pod that names a CacheConfig."""
    config: podcache_settings.Settings = memo.config
    pod = dict(body)
    namespace = body.metadata.namespace or ""
    name = body.metadata.labels.get(rendering.CONFIG_LABEL, "")
    pod_name = body.metadata.name or body.metadata.get("generateName", "<generated>")
    policy = config.webhook.failure_policy
    try:
        cacheconfig = await asyncio.wait_for(
            find_cacheconfig(
                namespace=namespace,
                name=name,
                mirror=memo.state.cacheconfig_mirror,
                kopf_settings=memo.kopf_settings,
                logger=logger,
            ),
            ADMISSION_API_TIMEOUT,
        )
    except _READ_FAILURES as exc:
        not_injected(
            f"cannot read CacheConfig {namespace}/{name}: {exc!r}",
            policy=policy,
            pod_name=pod_name,
            warnings=warnings,
            cacheconfig=None,
            kopf_settings=memo.kopf_settings,
            logger=logger,
        )
        _mark_not_injected(pod, patch, "the CacheConfig could not be read")
        return
    if cacheconfig is None:
        message = (
            f"CacheConfig {namespace}/{name} named by label {rendering.CONFIG_LABEL} does not exist"
        )
        if config.webhook.reject_missing_config:
            raise kopf.AdmissionError(f"{message}; create it or remove the label", code=400)
        warnings.append(f"{message}; pod admitted without the podcache sidecar")
        podcache_metrics.note_admission("missing_config_allowed")
        logger.warning("%s; admitting pod %s without the sidecar", message, pod_name)
        _mark_not_injected(pod, patch, f"no CacheConfig {name}")
        return
    ready = conditions.find((cacheconfig.get("status") or {}).get("conditions"), conditions.READY)
    if ready is not None and ready.get("status") != "True":
        warnings.append(
            f"CacheConfig {namespace}/{name} is not Ready ({ready.get('reason')}:"
            f" {ready.get('message')}); the sidecar waits for its config"
        )
    spec = cacheconfig.get("spec") or {}
    # What the apiserver would refuse in the mutated pod is caught here, not by a 422 that
    # no failurePolicy can turn into an admission.
    refusals = quantities.requests_over_limits(
        injection.sidecar_resources((spec.get("sidecar") or {}).get("resources"), config.sidecar)
    )
    try:
        if refusals:
            raise injection.InjectionError(f"sidecar resources: {'; '.join(refusals)}")
        ops = injection.build_patch(
            pod,
            cacheconfig=name,
            spec=spec,
            sidecar=config.sidecar,
            port_clash="refuse" if policy == "Fail" else "move",
            notes=warnings,
        )
    except injection.InjectionError as exc:
        not_injected(
            f"cannot inject the podcache sidecar of CacheConfig {namespace}/{name}: {exc}",
            policy=policy,
            pod_name=pod_name,
            warnings=warnings,
            cacheconfig=cacheconfig,
            kopf_settings=memo.kopf_settings,
            logger=logger,
        )
        _mark_not_injected(pod, patch, str(exc))
        return
    if ops:
        _send(pod, patch, ops)
        logger.info("Injected the podcache sidecar (CacheConfig %s) into pod %s", name, pod_name)


def _send(pod: dict[str, Any], patch: kopf.Patch, ops: injection.JSONPatch) -> None:
    direct = _direct_ops.get()
    if direct is not None:  # behind AdmissionServer: sent as they are
        direct.extend(ops)
    else:
        patch.update(merge_patch(pod, injection.apply_patch(pod, ops)))


def _mark_not_injected(pod: dict[str, Any], patch: kopf.Patch, reason: str) -> None:
    """Admitted without the sidecar, but seen: ``bare_pod_restarts`` leaves it alone
    (restarting it would only bring it back as it is)."""
    _send(pod, patch, injection.not_injected_ops(pod, reason))


def not_injected(
    message: str,
    *,
    policy: str,
    pod_name: str,
    warnings: list[str],
    cacheconfig: Mapping[str, Any] | None,
    kopf_settings: kopf.OperatorSettings,
    logger: kubeapi.Logger,
) -> None:
    """The sidecar cannot go into this pod: deny under ``Fail``, else admit it unmodified
    with a warning to whoever created it and an Event on the CacheConfig."""
    if policy == "Fail":
        raise kopf.AdmissionError(f"{message} (failurePolicy: Fail)", code=422)
    warnings.append(f"{message}; pod admitted without the podcache sidecar")
    podcache_metrics.note_admission("not_injected_allowed")
    logger.warning("%s; admitting pod %s without the sidecar", message, pod_name)
    if cacheconfig is not None and (cacheconfig.get("metadata") or {}).get("uid"):
        # Posted in the background: the admission answer does not wait for it.
        task = asyncio.create_task(
            _post_warning(cacheconfig, f"pod {pod_name}: {message}", kopf_settings, logger)
        )
        _event_tasks.add(task)
        task.add_done_callback(_event_tasks.discard)


_event_tasks: set[asyncio.Task[None]] = set()  # kept referenced until done


async def _post_warning(
    cacheconfig: Mapping[str, Any],
    message: str,
    kopf_settings: kopf.OperatorSettings,
    logger: kubeapi.Logger,
) -> None:
    try:
        async with asyncio.timeout(ADMISSION_API_TIMEOUT):
            await kubeapi.warn(
                cacheconfig,
                reason="SidecarNotInjected",
                message=message,
                settings=kopf_settings,
                logger=logger,
            )
    except _READ_FAILURES as exc:
        logger.warning("Could not post the SidecarNotInjected Event: %r", exc)
