"""Clients of the podcache sidecar's Unix socket: ``Client`` (sync) and ``AsyncClient``.

Exports are lazy (PEP 562) so that the sync client and the CLI never import
aiohttp: ``podcache health`` runs as a startup probe and must start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Client": "podcache.client.sync_client",
    "AsyncClient": "podcache.client.async_client",
    "HeldLock": "podcache.client.locking",
    "AsyncHeldLock": "podcache.client.async_locking",
    "Lease": "podcache.client.models",
    "LeaderStatus": "podcache.client.models",
    "DEFAULT_SOCKET": "podcache.client.protocol",
    "resolve_socket": "podcache.client.protocol",
}

__all__ = [
    "DEFAULT_SOCKET",
    "AsyncClient",
    "AsyncHeldLock",
    "Client",
    "HeldLock",
    "LeaderStatus",
    "Lease",
    "resolve_socket",
]

if TYPE_CHECKING:
    from podcache.client.async_client import AsyncClient
    from podcache.client.async_locking import AsyncHeldLock
    from podcache.client.locking import HeldLock
    from podcache.client.models import LeaderStatus, Lease
    from podcache.client.protocol import DEFAULT_SOCKET, resolve_socket
    from podcache.client.sync_client import Client


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'podcache.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
