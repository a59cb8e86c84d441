"""Has an object we own drifted from what we rendered? (pure)

Someone may delete the ConfigMap or Service of a CacheConfig, or edit them by
hand; the operator puts them back without waiting for a spec change or a restart.
These functions decide whether an observed object is ours and differs from the
rendering: only the fields we set are compared, because the apiserver adds its
own (``clusterIPs``, ``sessionAffinity``, ``resourceVersion``...) and other
controllers may add labels and annotations — those are not drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from podcache_operator import rendering

SPEC_FIELDS = ("selector", "clusterIP", "ports", "publishNotReadyAddresses")
"""The Service spec fields we set (and so compare)."""


@dataclasses.dataclass(frozen=True)
class Owner:
    """The CacheConfig that controls an object, from its ``ownerReferences``."""

    name: str
    uid: str


def controller_of(obj: Mapping[str, Any]) -> Owner | None:
    """The controlling CacheConfig of ``obj``, or None if a CacheConfig does not control it."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        api_version = str(ref.get("apiVersion", ""))
        if (
            ref.get("controller")
            and ref.get("kind") == rendering.KIND
            and api_version.split("/")[0] == rendering.GROUP
        ):
            return Owner(name=str(ref.get("name")), uid=str(ref.get("uid")))
    return None


def drifted(actual: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``actual`` lacks or changed anything ``desired`` sets."""
    actual_meta = actual.get("metadata") or {}
    desired_meta = desired.get("metadata") or {}
    for key in ("labels", "annotations"):
        have = actual_meta.get(key) or {}
        if any(have.get(name) != value for name, value in (desired_meta.get(key) or {}).items()):
            return True
    if "data" in desired and (actual.get("data") or {}) != desired["data"]:
        return True
    if "spec" in desired:
        have_spec = actual.get("spec") or {}
        want_spec = desired["spec"]
        if any(
            have_spec.get(field) != want_spec.get(field)
            for field in SPEC_FIELDS
            if field in want_spec
        ):
            return True
    return False
