"""The webhook's own live copy of every CacheConfig, kept current on every replica.

kopf peering pauses *all* of kopf's watches on a standby replica, the ones that feed
its indices included, while the webhook Service keeps sending admissions to every
replica. An index frozen at the moment a replica stood by made standbys inject an
old ``sidecar.image``, or inject for a CacheConfig deleted since (its ConfigMap gone,
the pod stuck in ContainerCreating).

So the webhook reads from this mirror instead: one list+watch of CacheConfigs that
peering never pauses (kopf's own ``infinite_watch`` with no pause toggle, so it shares
kopf's credentials, retries and relisting on 410). Every replica then answers from
the CacheConfigs as they are, within a watch event's delay. Chosen over a GET per
admission (an API round trip on every pod create) and over keeping standbys out of
the Service (a failover would leave no replica to answer). Until the first listing is
complete ``synced`` is False, and callers ask the apiserver instead.

The watch is cluster-wide, like the operator's default scope; an operator limited to
namespaces runs without a mirror and its webhook GETs the CacheConfig each time.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kopf._cogs.clients import watching
from kopf._cogs.structs import references

from podcache_operator import kubeapi

logger = logging.getLogger(__name__)

Key = tuple[str, str]

_RESOURCE = references.Resource(
    group=kubeapi.CACHECONFIGS.group,
    version=kubeapi.CACHECONFIGS.version,
    plural=kubeapi.CACHECONFIGS.plural,
    kind="CacheConfig",
    namespaced=True,
    verbs=frozenset({"list", "watch"}),
)


def _key(body: Mapping[str, Any]) -> Key:
    metadata = body.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def _snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    snapshot = copy.deepcopy(dict(body))
    snapshot.get("metadata", {}).pop("managedFields", None)  # most of the bytes; unused
    return snapshot


class CacheConfigMirror:
    """CacheConfigs by (namespace, name), fed by ``apply`` with kopf's raw watch events."""

    def __init__(self) -> None:
        self._items: dict[Key, dict[str, Any]] = {}
        self._listing: dict[Key, dict[str, Any]] | None = None
        self.synced = False
        """True once a complete listing has been applied; stays True across relists."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._items.get((namespace, name))

    def __len__(self) -> int:
        return len(self._items)

    def apply(self, event: watching.Bookmark | Mapping[str, Any]) -> None:
        if isinstance(event, watching.Bookmark):
            if event is watching.Bookmark.LISTED:
                # A (re)listing replaces everything: what vanished while disconnected goes.
                self._items = self._listing if self._listing is not None else {}
                self._listing = None
                self.synced = True
            return
        kind = event.get("type")
        body = event.get("object") or {}
        if kind is None:  # kopf's convention for the objects of a listing
            if self._listing is None:
                self._listing = {}
            self._listing[_key(body)] = _snapshot(body)
        elif kind in ("ADDED", "MODIFIED"):
            self._items[_key(body)] = _snapshot(body)
        elif kind == "DELETED":
            self._items.pop(_key(body), None)

    async def run(self, settings: kopf.OperatorSettings) -> None:
        """Follow every CacheConfig until cancelled; kopf reconnects and relists."""
        while True:
            try:
                async for event in watching.infinite_watch(
                    settings=settings, resource=_RESOURCE, namespace=None
                ):
                    self.apply(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # never leave the webhook without a live copy for good
                self.synced = False
                logger.exception("The webhook's CacheConfig watch failed; restarting it")
                await asyncio.sleep(settings.watching.reconnect_backoff)
