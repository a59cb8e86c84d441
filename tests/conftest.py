"""Shared fixtures: a real Redis (never a mock) and its failure policy.

``redis_url`` gives every test a flushed database on one session-wide server.
``redis_server`` gives a test its own ``redis-server`` process that it may stop,
pause and restart. When Redis cannot be had, tests fail under ``CI=true`` and
skip with the reason elsewhere (a laptop without redis-server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from tests.availability import unavailable
from tests.redis_server import RedisServer, RedisUnavailable, find_redis


def _unavailable(reason: str) -> None:
    unavailable("Redis", reason)


@pytest.fixture(scope="session")
def redis_session_url() -> Iterator[str]:
    try:
        with find_redis() as url:
            yield url
    except RedisUnavailable as exc:
        _unavailable(str(exc))


@pytest.fixture
def redis_url(redis_session_url: str) -> str:
    """A Redis URL whose database is empty at the start of the test."""
    with redis.Redis.from_url(redis_session_url) as client:
        client.flushdb()
    return redis_session_url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A dedicated redis-server process this test may stop, pause and restart."""
    try:
        server = RedisServer()
        server.start()
    except RedisUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A raw redis-py client on the test database, for checking what the library wrote."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
