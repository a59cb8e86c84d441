"""Where kopf keeps its own state about a CacheConfig: ``status.kopf``.

Kopf remembers the spec it last handled (its diff base, to tell a spec change from a
status write) and, while a handler is being retried, that handler's progress. Both
live under ``status.kopf`` (the CRD declares it, with unknown fields kept) rather than
in annotations, because a reconciliation then writes the CacheConfig once: its status
carries Ready and the diff base together. With annotations it took two requests, a
merge patch of the object for the annotation and one of the status subresource, each
also waking every watcher. Measured on the real control plane (200 CacheConfigs by 4
clients, 3 interleaved runs each): the apiserver's CPU 3.28 → 2.24 s, the operator's
2.30 → 1.75 s (medians).

A CacheConfig last handled by an operator of before this change carries the diff base
in the annotation ``podcache.io/last-handled-configuration`` and none in its status, so
this operator handles it once as new (the same reconciliation) and removes the stale
annotation in that write (``stale_annotations``).
"""

from __future__ import annotations

from collections.abc import Mapping

import kopf

PREFIX = "podcache.io"
"""Of the finalizer's name and of the annotations older operators kept kopf's state in."""

LEGACY_DIFFBASE = f"{PREFIX}/last-handled-configuration"


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.StatusProgressStorage(name="kopf")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(name="kopf")
    settings.persistence.finalizer = f"{PREFIX}/finalizer"


def stale_annotations(annotations: Mapping[str, str]) -> list[str]:
    """Annotations an older operator kept kopf's state in, to be removed."""
    return [LEGACY_DIFFBASE] if LEGACY_DIFFBASE in annotations else []
