"""Every Kubernetes API call the operator makes, and the RBAC they need (``API_CALLS``).

The Helm chart derives the operator's Role/ClusterRole from ``API_CALLS`` (its test
imports the constant and compares), so a call added here without a matching entry
fails that test instead of failing with 403 in a cluster. The resources kopf
watches for our handlers are declared here too (``CACHECONFIGS``, ``PODS``...), and
``handlers`` takes them from here, so one constant covers both.

The calls go through kopf's own API client (``kopf._cogs.clients.api``): it shares
kopf's credentials, re-authenticates on 401 and retries 429/5xx with
``settings.networking.error_backoffs``. That module is private to kopf — this is the
one place that imports it, so a kopf upgrade that moves it breaks only this file.
All calls are async: never the synchronous ``kubernetes`` client inside handlers.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple, cast

import aiohttp
import kopf
from kopf._cogs.clients import api, auth, errors
from kopf._core.engines import activities

APIError = errors.APIError
TRANSIENT: tuple[type[BaseException], ...] = (errors.APIError, aiohttp.ClientError, TimeoutError)
"""What a call may raise once kopf's own retries are exhausted: worth a later retry."""
NotFound = errors.APINotFoundError
Conflict = errors.APIConflictError
Forbidden = errors.APIForbiddenError

Logger = logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
APPLY_PATCH = {"Content-Type": "application/apply-patch+yaml"}  # a JSON body is YAML too
FIELD_MANAGER = "podcache-operator"
"""Who owns the fields of the objects we apply (``metadata.managedFields``)."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """One API resource: where it lives and how to build its URLs."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def url(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [root]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
            if subresource is not None:
                parts.append(subresource)
        return "/".join(parts)


CACHECONFIGS = Resource("podcache.io", "v1alpha1", "cacheconfigs")
PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
SECRETS = Resource("", "v1", "secrets")
SERVICEMONITORS = Resource("monitoring.coreos.com", "v1", "servicemonitors")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
CLUSTER_PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)
PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings")
SERVICEMONITOR_CRD = "servicemonitors.monitoring.coreos.com"


class ApiCall(NamedTuple):
    """A (group, version, resource, verbs) RBAC rule the operator needs."""

    group: str
    version: str
    resource: str
    verbs: tuple[str, ...]


API_CALLS: tuple[ApiCall, ...] = (
    # kopf: watch CacheConfigs, keep its progress annotations on them, write status.
    ApiCall("podcache.io", "v1alpha1", "cacheconfigs", ("get", "list", "watch", "patch")),
    ApiCall("podcache.io", "v1alpha1", "cacheconfigs/status", ("patch",)),
    # Owned objects carry blockOwnerDeletion; clusters enforcing OwnerReferencesPermission
    # (OpenShift) require update on the owner's finalizers for that.
    ApiCall("podcache.io", "v1alpha1", "cacheconfigs/finalizers", ("update",)),
    # kopf: index labelled pods for status.pods (a watch: no single-pod GET).
    ApiCall("", "v1", "pods", ("list", "watch")),
    # The objects each CacheConfig owns (server-side applied: patch, and create when the
    # apply makes one; never read one by one), watched
    # (label-selected server-side) to put them back when deleted or edited.
    ApiCall("", "v1", "configmaps", ("list", "watch", "create", "patch")),
    ApiCall("", "v1", "services", ("list", "watch", "create", "patch")),
    ApiCall("monitoring.coreos.com", "v1", "servicemonitors", ("create", "patch", "delete")),
    # Opt-in (Settings.check_secrets, the chart's operator.checkSecrets): referenced
    # Secrets exist and hold their key (never copied anywhere). The chart grants it only
    # then: get on Secrets everywhere reads every Helm release's values.
    ApiCall("", "v1", "secrets", ("get",)),
    # Opt-in (Settings.restart_pods_without_sidecar, operator.restartPodsWithoutSidecar):
    # evict labelled pods that no webhook saw, so their controller re-creates them.
    ApiCall("", "v1", "pods/eviction", ("create",)),
    # kopf posts Events for handler outcomes and our Warnings.
    ApiCall("", "v1", "events", ("create",)),
    # Notice the ServiceMonitor CRD appearing later; kopf also scans CRDs for resources.
    ApiCall("apiextensions.k8s.io", "v1", "customresourcedefinitions", ("get", "list", "watch")),
    # kopf manages the webhook configuration (settings.webhook.managed).
    ApiCall(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        ("get", "list", "watch", "create", "patch"),
    ),
    # kopf peering: several replicas, one active; ``prerequisites`` creates the peering
    # object when it is missing (crds.enabled=false, a GitOps tool pruned the chart's hook).
    ApiCall("kopf.dev", "v1", "kopfpeerings", ("get", "list", "watch", "patch", "create")),
    ApiCall("kopf.dev", "v1", "clusterkopfpeerings", ("get", "list", "watch", "patch", "create")),
    # kopf follows namespaces when started with --namespace patterns (globs).
    ApiCall("", "v1", "namespaces", ("get", "list", "watch")),
)

WATCHED: tuple[Resource, ...] = (CACHECONFIGS, PODS, CONFIGMAPS, SERVICES, CRDS)
"""Resources our kopf handlers and indices watch (each needs list and watch above: kopf
lists and watches, and never GETs one object of a watched resource for them)."""


async def get(
    resource: Resource,
    *,
    namespace: str | None,
    name: str,
    settings: kopf.OperatorSettings,
    logger: Logger,
) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        result: dict[str, Any] = await api.get(
            resource.url(namespace=namespace, name=name), settings=settings, logger=logger
        )
    except errors.APINotFoundError:
        return None
    return result


EVENTS = Resource("", "v1", "events")


async def warn(
    about: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    settings: kopf.OperatorSettings,
    logger: Logger,
) -> None:
    """A Warning Event on ``about``, from places kopf's own posting does not reach (the
    webhook answers outside kopf's handler contexts, where ``kopf.warn`` cannot queue)."""
    metadata = about.get("metadata") or {}
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "podcache-", "namespace": metadata.get("namespace")},
        "involvedObject": {
            "apiVersion": about.get("apiVersion"),
            "kind": about.get("kind"),
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
        },
        "type": "Warning",
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "podcache-operator"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    await api.post(
        EVENTS.url(namespace=metadata.get("namespace")),
        payload=event,
        settings=settings,
        logger=logger,
    )


async def apply(
    resource: Resource, obj: Mapping[str, Any], *, settings: kopf.OperatorSettings, logger: Logger
) -> dict[str, Any]:
    """Make the object look like ``obj``: server-side apply as ``FIELD_MANAGER``.

    The apiserver creates the object when absent, and removes what we applied before
    and left out this time (a label dropped from ``serviceMonitor.labels``) while keeping
    what others set; a merge patch never removed anything. ``force`` takes over fields
    someone else changed since: these objects are ours. A POST follows a 404 only for
    API emulators that cannot create on apply.

    Beware: fields written before the operator used server-side apply belong to the
    manager of that write, so a key dropped since is not removed by this apply.
    """
    metadata = obj["metadata"]
    url = resource.url(namespace=metadata.get("namespace"), name=metadata["name"])
    apply_url = f"{url}?fieldManager={FIELD_MANAGER}&force=true"
    try:
        result: dict[str, Any] = await api.patch(
            apply_url, payload=dict(obj), headers=APPLY_PATCH, settings=settings, logger=logger
        )
        return result
    except errors.APINotFoundError:
        pass
    try:
        result = await api.post(
            f"{resource.url(namespace=metadata.get('namespace'))}?fieldManager={FIELD_MANAGER}",
            payload=dict(obj),
            settings=settings,
            logger=logger,
        )
    except errors.APIConflictError:  # created by someone in between: apply after all
        result = await api.patch(
            apply_url, payload=dict(obj), headers=APPLY_PATCH, settings=settings, logger=logger
        )
    return result


async def create(
    resource: Resource, obj: Mapping[str, Any], *, settings: kopf.OperatorSettings, logger: Logger
) -> dict[str, Any] | None:
    """Create the object; None when it exists already."""
    namespace = (obj.get("metadata") or {}).get("namespace")
    try:
        result: dict[str, Any] = await api.post(
            resource.url(namespace=namespace), payload=dict(obj), settings=settings, logger=logger
        )
    except errors.APIConflictError:
        return None
    return result


async def authenticate_early(*, settings: kopf.OperatorSettings, memo: Any) -> None:
    """Log in now, with kopf's own login handlers, for calls made by startup handlers.

    Kopf starts its authenticator only after every startup handler has finished, so an
    API call from one would wait for credentials forever. Once the vault holds these,
    kopf's authenticator logs in again only when they stop working (a 401).
    """
    vault = auth.vault_var.get()
    if vault.is_empty():
        await activities.authenticate(
            registry=kopf.get_default_registry(),
            settings=settings,
            indices=cast(Any, {}),  # login handlers take no indices
            vault=vault,
            memo=memo,
            _activity_title="Authentication for the start-up checks",
        )


async def served(resource: Resource, *, settings: kopf.OperatorSettings, logger: Logger) -> bool:
    """Whether the apiserver serves the resource (API discovery: allowed to everyone)."""
    root = f"/apis/{resource.group}/{resource.version}" if resource.group else "/api/v1"
    try:
        found = await api.get(root, settings=settings, logger=logger)
    except errors.APINotFoundError:
        return False
    return any(item.get("name") == resource.plural for item in found.get("resources") or [])


async def delete(
    resource: Resource,
    *,
    namespace: str | None,
    name: str,
    settings: kopf.OperatorSettings,
    logger: Logger,
) -> bool:
    """Delete the object; False when it was already gone."""
    try:
        await api.delete(
            resource.url(namespace=namespace, name=name), settings=settings, logger=logger
        )
    except errors.APINotFoundError:
        return False
    return True


async def evict(
    namespace: str, name: str, *, settings: kopf.OperatorSettings, logger: Logger
) -> bool:
    """Evict the pod (the Eviction API: PodDisruptionBudgets hold; 429 while one forbids
    it, raised like any API error). False when the pod is already gone."""
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    }
    try:
        await api.post(
            PODS.url(namespace=namespace, name=name, subresource="eviction"),
            payload=eviction,
            settings=settings,
            logger=logger,
        )
    except errors.APINotFoundError:
        return False
    return True


async def patch_status(
    resource: Resource,
    *,
    namespace: str | None,
    name: str,
    status: Mapping[str, Any],
    settings: kopf.OperatorSettings,
    logger: Logger,
) -> dict[str, Any] | None:
    """Merge-patch ``status`` through the status subresource; None if the object is gone."""
    url = resource.url(namespace=namespace, name=name, subresource="status")
    try:
        result: dict[str, Any] = await api.patch(
            url,
            payload={"status": dict(status)},
            headers=MERGE_PATCH,
            settings=settings,
            logger=logger,
        )
    except errors.APINotFoundError:
        return None
    return result


async def crd_established(name: str, *, settings: kopf.OperatorSettings, logger: Logger) -> bool:
    """Whether the CRD exists, is not being deleted, and is not reported as un-established."""
    crd = await get(CRDS, namespace=None, name=name, settings=settings, logger=logger)
    return is_established(crd)


def is_established(crd: Mapping[str, Any] | None) -> bool:
    if crd is None or (crd.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for condition in (crd.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Established":
            return bool(condition.get("status") == "True")
    return True  # no status yet: the apiserver fills it within moments
