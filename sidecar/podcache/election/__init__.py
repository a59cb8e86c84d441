"""Leader election: ``build_elector`` picks the lease store for a backend.

On the memory backend electors of one process contend through a shared in-process
lease (``MemoryLeaseStore``); on Redis, across pods (``RedisLeaseStore``). The
algorithm lives in ``podcache.election.elector``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from podcache.election.elector import Callback, Elector, LeaderState
from podcache.election.memory import MemoryLeaseStore
from podcache.election.store import LeaseRecord, LeaseStore

if TYPE_CHECKING:
    from podcache.election.redis import RedisLeaseStore


def __getattr__(name: str) -> Any:
    # redis-py is imported only when Redis is used: a memory sidecar starts without it
    # (~60 ms of a core per pod start).
    if name == "RedisLeaseStore":
        from podcache.election.redis import RedisLeaseStore

        return RedisLeaseStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_store(backend: Any, *, name: str) -> LeaseStore:
    """The lease store of election ``name`` on ``backend``."""
    from podcache.backends.memory import MemoryBackend  # deferred: keeps import order loose

    if isinstance(backend, MemoryBackend):
        return MemoryLeaseStore(name)
    from podcache.election.redis import RedisLeaseStore

    return RedisLeaseStore(
        backend.client,
        name=name,
        key_prefix=backend.key_prefix,
        operation_timeout=backend.settings.operation_timeout,
        notices=backend.notices,  # one pub/sub connection for every election of the backend
    )


def build_elector(
    backend: Any,
    *,
    name: str,
    identity: str,
    lease_duration: float = 15.0,
    renew_deadline: float = 10.0,
    retry_period: float = 2.0,
    on_elected: Callback | None = None,
    on_revoked: Callback | None = None,
    registry: CollectorRegistry,
    namespace: str,
) -> Elector:
    """An elector (not started yet) for election ``name`` on ``backend``, as ``identity``."""
    return Elector(
        build_store(backend, name=name),
        identity=identity,
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
        on_elected=on_elected,
        on_revoked=on_revoked,
        registry=registry,
        namespace=namespace,
    )


__all__ = [
    "Elector",
    "LeaderState",
    "LeaseRecord",
    "LeaseStore",
    "MemoryLeaseStore",
    "RedisLeaseStore",
    "build_elector",
    "build_store",
]
