"""PERSIST on the RESP socket when the config allows it (``limits.allowPersist``, issue 12).

Aspects:
- with the setting on, PERSIST, GETEX ... PERSIST, TTL/PTTL -1 and what follows on a
  key without a TTL (EXPIRE NX/XX/GT/LT, SET KEEPTTL, INCR keeping it without one)
  answer exactly as a real redis-server, on the memory and on the Redis backend;
- a SET without a TTL still gets the default TTL (the documented difference);
- on the Redis backend it is Redis's own PERSIST, on the key under the tenant prefix;
- with the setting off (the default) both forms are refused naming the setting;
- a hot reload turns it on and off for the next command on the same connection; a key
  persisted meanwhile keeps no TTL, and INCR on it gives it the default TTL again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import yaml

from tests.sidecar import resp_support as support
from tests.sidecar.conftest import StartSidecar, wait_until
from tests.sidecar.resp_support import RawClient, norm, spawned

reference_socket = support.reference_socket
reference = support.reference
ns = support.ns


class Allowing:
    """A sidecar with ``limits.allowPersist: true`` and the Redis key prefix it uses."""

    def __init__(self, path: str, prefix: str | None, redis_url: str | None) -> None:
        self.path = path
        self.prefix = prefix
        self.redis_url = redis_url


@pytest.fixture(scope="module", params=["memory", "redis"])
def allowing(request: pytest.FixtureRequest) -> Iterator[Allowing]:
    url = request.getfixturevalue("redis_session_url") if request.param == "redis" else None
    config = support.backend_config(request.param, url)
    config["limits"] = {**support.LIMITS, "allowPersist": True}
    prefix = config["config"].get("keyPrefix")
    with spawned(config) as (_, path):
        yield Allowing(path, prefix, url)


@pytest.fixture
def resp(allowing: Allowing) -> Iterator[RawClient]:
    client = RawClient(allowing.path)
    yield client
    client.close()


def same(resp: RawClient, reference: RawClient, script: list[list[Any]]) -> None:
    for command in script:
        ours, theirs = norm(resp.call(*command)), norm(reference.call(*command))
        assert ours == theirs, f"{command}: sidecar {ours!r}, redis-server {theirs!r}"


def test_persist_answers_like_redis(resp: RawClient, reference: RawClient, ns: str) -> None:
    p, n, g = ns + "p", ns + "n", ns + "g"
    same(
        resp,
        reference,
        [
            ["SET", p, "v", "EX", "100"],
            ["PERSIST", p],
            ["PERSIST", p],
            ["TTL", p],
            ["PTTL", p],
            ["GET", p],
            ["PERSIST", ns + "missing"],
            ["EXPIRE", p, "100", "XX"],
            ["EXPIRE", p, "100", "GT"],
            ["EXPIRE", p, "100", "LT", "XX"],
            ["EXPIRE", p, "100", "GT", "XX"],
            ["TTL", p],
            ["SET", p, "w", "KEEPTTL"],
            ["TTL", p],
            ["SET", p, "x", "KEEPTTL", "GET"],
            ["TTL", p],
            ["EXPIRE", p, "100", "NX"],
            ["TTL", p],
            ["EXPIRE", p, "100", "NX"],
            ["PERSIST", p],
            ["EXPIRE", p, "50", "LT"],
            ["TTL", p],
            ["PERSIST", p],
            ["PEXPIRE", p, "0"],
            ["GET", p],
            ["SET", n, "5", "EX", "100"],
            ["PERSIST", n],
            ["INCR", n],
            ["DECRBY", n, "2"],
            ["TTL", n],
            ["GET", n],
            ["SET", g, "v", "EX", "100"],
            ["GETEX", g, "PERSIST"],
            ["TTL", g],
            ["GETEX", g, "PERSIST"],
            ["GETEX", g, "EX", "100"],
            ["TTL", g],
            ["GETEX", ns + "missing", "PERSIST"],
            ["GETEX", g, "PERSIST", "x"],
            ["GETEX", g, "FOO"],
            ["PERSIST"],
            ["PERSIST", p, "x"],
        ],
    )


def test_set_without_ttl_still_gets_the_default(resp: RawClient, ns: str) -> None:
    resp.call("SET", ns + "k", "v")
    assert 299 <= resp.call("TTL", ns + "k") <= 300
    assert resp.call("PERSIST", ns + "k") == 1
    resp.call("SET", ns + "k", "w")  # a plain SET gives it the default TTL again, as HTTP PUT
    assert 299 <= resp.call("TTL", ns + "k") <= 300
    assert resp.call("INCR", ns + "fresh") == 1  # a new counter too
    assert 299 <= resp.call("TTL", ns + "fresh") <= 300


def test_redis_backend_persists_the_prefixed_key(allowing: Allowing, ns: str) -> None:
    if allowing.redis_url is None:
        pytest.skip("the Redis backend's own key")
    client = redis.Redis(unix_socket_path=allowing.path)
    direct = redis.Redis.from_url(allowing.redis_url)
    try:
        client.set(ns + "k", "v")
        assert client.persist(ns + "k") is True
        assert direct.pttl(f"{allowing.prefix}{ns}k") == -1
        assert direct.exists(ns + "k") == 0  # nothing written outside the prefix
        assert client.ttl(ns + "k") == -1
    finally:
        client.close()
        direct.close()


def test_refused_unless_allowed() -> None:
    config = support.backend_config("memory", None)
    with spawned(config) as (_, path):
        resp = RawClient(path)
        try:
            resp.call("SET", "k", "v")
            for command in (["PERSIST", "k"], ["GETEX", "k", "PERSIST"]):
                error = str(resp.call(*command))
                assert error.startswith("ERR PERSIST is not allowed"), error
                assert "limits.allowPersist" in error
                assert "spec.allowPersist" in error
            assert 299 <= resp.call("TTL", "k") <= 300
            assert resp.call("PING") == b"PONG"
        finally:
            resp.close()


def _write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


async def test_reload_turns_it_on_and_off(start_sidecar: StartSidecar) -> None:
    config: dict[str, Any] = {"type": "memory", "config": {"defaultTTL": "5m"}}
    sidecar, _ = await start_sidecar(config, config_file=True)
    path = Path(sidecar.options.config_path or "")
    client = redis.asyncio.Redis(unix_socket_path=sidecar.resp.path)
    try:
        await client.set("k", "5")
        with pytest.raises(redis.ResponseError, match=r"limits\.allowPersist"):
            await client.persist("k")
        _write(path, {**config, "limits": {"allowPersist": True}})

        async def allowed() -> bool:
            try:
                return bool(await client.persist("k"))
            except redis.ResponseError:
                return False

        await wait_until(allowed)
        assert await client.ttl("k") == -1
        _write(path, config)

        async def refused() -> bool:
            try:
                await client.persist("k")
            except redis.ResponseError:
                return True
            return False

        await wait_until(refused)
        assert await client.ttl("k") == -1  # what was persisted stays so
        assert await client.incr("k") == 6  # ... until a write: every key has a TTL again
        assert 299 <= await client.ttl("k") <= 300
    finally:
        await client.aclose()
