"""Labelled pods that run without the sidecar, and what the operator says about them.

Under ``failurePolicy: Ignore`` a pod created while no operator replica answers the
webhook (all restarting, or none ready yet) is admitted as it is, and so is one the
webhook could not inject into. Its app then finds no socket, and nothing would say why:
the admission warning went to whoever created the pod, often a ReplicaSet controller.
So the operator lists such pods in the CacheConfig's ``status.podsWithoutSidecar`` and
posts one Warning Event per pod on the CacheConfig naming it and the way out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from podcache_operator import injection

MAX_LISTED = 20
"""``status.podsWithoutSidecar`` names at most this many (the CRD's ``maxItems``)."""


def lacks_sidecar(pod: Mapping[str, Any]) -> bool:
    """A live labelled pod that was admitted without the podcache sidecar."""
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return not injection.is_injected(pod)


def unseen_and_replaceable(pod: Mapping[str, Any]) -> bool:
    """Lacks the sidecar, no webhook saw it (it would carry ``NOT_INJECTED_ANNOTATION``),
    and a controller owns it (so an eviction replaces it instead of losing it)."""
    if not lacks_sidecar(pod):
        return False
    metadata = pod.get("metadata") or {}
    if injection.NOT_INJECTED_ANNOTATION in (metadata.get("annotations") or {}):
        return False
    return any(ref.get("controller") for ref in metadata.get("ownerReferences") or [])


def listed(names: Iterable[str]) -> list[str]:
    return sorted(set(names))[:MAX_LISTED]


def warning(pod_name: str) -> str:
    return (
        f"pod {pod_name} runs without the podcache sidecar: it was admitted while the webhook"
        " did not answer (failurePolicy Ignore) or could not inject it; delete the pod (or"
        " restart its workload) to have it re-created with the sidecar"
    )
