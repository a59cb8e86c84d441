"""Distributed locks with fencing tokens: ``build_locks`` picks the implementation.

``MemoryLocks`` serves the memory backend (one process), ``RedisLocks`` every Redis
flavour. Both share ``LockService``'s API; see ``podcache.locks.base`` for semantics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from podcache.locks.base import Lease, LockService
from podcache.locks.memory import MemoryLocks, table_for

if TYPE_CHECKING:
    from podcache.locks.redis import RedisLocks


def __getattr__(name: str) -> Any:
    # redis-py is imported only when Redis is used (see podcache.election).
    if name == "RedisLocks":
        from podcache.locks.redis import RedisLocks

        return RedisLocks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_locks(backend: Any, *, registry: CollectorRegistry, namespace: str) -> LockService:
    """The lock service for ``backend``: in-process for a MemoryBackend, else on its Redis."""
    from podcache.backends.memory import MemoryBackend  # deferred: keeps import order loose

    if isinstance(backend, MemoryBackend):
        return MemoryLocks(table_for(backend), registry=registry, namespace=namespace)
    from podcache.locks.redis import RedisLocks

    settings = backend.settings
    return RedisLocks(
        backend.client,
        key_prefix=backend.key_prefix,
        registry=registry,
        namespace=namespace,
        operation_timeout=settings.operation_timeout,
        replica_ack_timeout=settings.replica_ack_timeout,
        waits=backend.waits,  # blocked waiters never take the cache's connections
        pipeline=getattr(backend, "pipeline", None),  # None on Cluster
    )


__all__ = ["Lease", "LockService", "MemoryLocks", "RedisLocks", "build_locks"]
