"""podcache: a pod-local cache with TTLs, distributed locks and leader election.

The public surface is listed in ``__all__``. Names are imported lazily (PEP 562)
so that ``import podcache`` stays cheap for the CLI and the sidecar's start-up,
and so that the client side never pulls in redis or prometheus it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # library
    "Config": "podcache.config",
    "new_cache": "podcache.cache",
    "Cache": "podcache.cache",
    "Lease": "podcache.locks.base",
    "Elector": "podcache.election.elector",
    # socket clients
    "Client": "podcache.client.sync_client",
    "AsyncClient": "podcache.client.async_client",
    # errors
    "PodcacheError": "podcache.errors",
    "ConfigError": "podcache.errors",
    "CacheMiss": "podcache.errors",
    "BackendUnavailable": "podcache.errors",
    "InvalidKey": "podcache.errors",
    "InvalidValue": "podcache.errors",
    "InvalidTTL": "podcache.errors",
    "ValueTooLarge": "podcache.errors",
    "LockError": "podcache.errors",
    "LockNotAcquired": "podcache.errors",
    "NotOwner": "podcache.errors",
    "LockLost": "podcache.errors",
    "ClientError": "podcache.errors",
    "ServerError": "podcache.errors",
    # leader status as the socket clients report it
    "LeaderStatus": "podcache.client.models",
    "LeaderState": "podcache.election.elector",
}

__all__ = [
    "AsyncClient",
    "BackendUnavailable",
    "Cache",
    "CacheMiss",
    "Client",
    "ClientError",
    "Config",
    "ConfigError",
    "Elector",
    "InvalidKey",
    "InvalidTTL",
    "InvalidValue",
    "LeaderState",
    "LeaderStatus",
    "Lease",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "NotOwner",
    "PodcacheError",
    "ServerError",
    "ValueTooLarge",
    "new_cache",
]

if TYPE_CHECKING:
    from podcache.cache import Cache, new_cache
    from podcache.client.async_client import AsyncClient
    from podcache.client.models import LeaderStatus
    from podcache.client.sync_client import Client
    from podcache.config import Config
    from podcache.election.elector import Elector, LeaderState
    from podcache.errors import (
        BackendUnavailable,
        CacheMiss,
        ClientError,
        ConfigError,
        InvalidKey,
        InvalidTTL,
        InvalidValue,
        LockError,
        LockLost,
        LockNotAcquired,
        NotOwner,
        PodcacheError,
        ServerError,
        ValueTooLarge,
    )
    from podcache.locks.base import Lease


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'podcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
