"""Fixtures starting real Sentinel and Cluster topologies for one test each.

Each fixture starts its processes on free loopback ports and kills them after the
test, so a test may kill, pause and fail over nodes freely. When the Redis binaries
are missing, tests fail under ``CI=true`` and skip elsewhere, like ``redis_server``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.availability import unavailable
from tests.redis_server import RedisUnavailable
from tests.redis_topologies import ClusterTopology, SentinelTopology

T = TypeVar("T", SentinelTopology, ClusterTopology)


def _unavailable(reason: str) -> None:
    unavailable("A Redis topology", reason)


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    """One primary, one replica, three sentinels; data and sentinel passwords set."""
    yield from _running(
        lambda: SentinelTopology(password="data-secret", sentinel_password="sentinel-secret")
    )


@pytest.fixture
def cluster_topology() -> Iterator[ClusterTopology]:
    """Three primaries with one replica each."""
    yield from _running(lambda: ClusterTopology(primaries=3, replicas=1))


def _running(make: Callable[[], T]) -> Iterator[T]:
    topology: Any = None
    try:
        topology = make()
        topology.start()
    except RedisUnavailable as exc:
        if topology is not None:
            topology.close()
        _unavailable(str(exc))
    except BaseException:
        if topology is not None:
            topology.close()
        raise
    try:
        yield topology
    finally:
        topology.close()
