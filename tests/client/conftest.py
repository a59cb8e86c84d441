"""Fixtures of the client tests: real sidecar processes on both backends, and clients of them.

One memory sidecar and one Redis sidecar are started per session (a process start
costs about a second on a shared machine); tests keep apart by using unique keys.
Tests that restart, pause or signal a sidecar start their own.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

import podcache
from tests.client.sidecars import SidecarProcess, election, memory_config, redis_config

CLIENT_TESTS_DB = 1
LIMITS = {"maxValueBytes": 65536}
LOCKS = {"defaultTTL": "10s", "maxTTL": "1m"}
ELECTION = "sched"


def _start(config: dict[str, object], *, pod_name: str) -> SidecarProcess:
    sidecar = SidecarProcess(config, pod_name=pod_name)
    try:
        sidecar.start()
    except BaseException:
        sidecar.close()
        raise
    return sidecar


@pytest.fixture(scope="session")
def memory_sidecar() -> Iterator[SidecarProcess]:
    sidecar = _start(memory_config(limits=LIMITS, locks=LOCKS, elections=[election(ELECTION)]),
                     pod_name="pod-memory")
    yield sidecar
    sidecar.close()


@pytest.fixture(scope="session")
def client_redis_url(redis_session_url: str) -> str:
    """A database of its own for the session-long sidecar: other tests flush database 0
    while it runs, and its election keeps writing while theirs run."""
    parts = urllib.parse.urlsplit(redis_session_url)
    url = urllib.parse.urlunsplit(parts._replace(path=f"/{CLIENT_TESTS_DB}"))
    with redis.Redis.from_url(url) as connection:
        connection.flushdb()
    return url


@pytest.fixture(scope="session")
def redis_sidecar(client_redis_url: str) -> Iterator[SidecarProcess]:
    config = redis_config(client_redis_url, key_prefix=f"client-tests-{uuid.uuid4().hex[:6]}:",
                          limits=LIMITS, locks=LOCKS, elections=[election(ELECTION)])
    sidecar = _start(config, pod_name="pod-redis")
    yield sidecar
    sidecar.close()


@pytest.fixture(params=["memory", "redis"])
def sidecar(request: pytest.FixtureRequest) -> SidecarProcess:
    """The session's sidecar of each backend in turn."""
    process: SidecarProcess = request.getfixturevalue(f"{request.param}_sidecar")
    assert process.process is not None
    assert process.process.poll() is None, process.log_tail()
    return process


@pytest.fixture
def client(sidecar: SidecarProcess) -> Iterator[podcache.Client]:
    with podcache.Client(sidecar.socket_path, timeout=5.0) as sync_client:
        yield sync_client


@pytest.fixture
async def aclient(sidecar: SidecarProcess) -> AsyncIterator[podcache.AsyncClient]:
    async with podcache.AsyncClient(sidecar.socket_path, timeout=5.0) as async_client:
        yield async_client


@pytest.fixture
def key() -> str:
    """A key no other test uses."""
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw_redis(client_redis_url: str) -> Iterator[redis.Redis]:
    """Direct access to the Redis the redis sidecar uses, to meddle with its keys."""
    with redis.Redis.from_url(client_redis_url) as connection:
        yield connection


def steal(connection: redis.Redis, token: str) -> int:
    """Delete every Redis key whose value is ``token``: the lock key, whatever its name."""
    stolen = 0
    for name in connection.scan_iter(count=1000):
        if connection.type(name) == b"string" and connection.get(name) == token.encode():
            stolen += connection.delete(name)
    return stolen
