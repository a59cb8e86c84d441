"""The Redis backend on its own, against a real redis-server.

Aspects:
- get/set/delete round trips with binary values; keys land under the prefix;
- TTLs as Redis PX: short expiry, default TTL for ttl=0, sub-millisecond rounding,
  negative ttl refused before anything is written;
- set_nx (SET NX PX) and set_if_match (Lua, EVALSHA, survives SCRIPT FLUSH);
- key prefix isolation: two tenants on one Redis never see or count each other's keys,
  lock and election keys are not counted as items,
  glob metacharacters in a prefix are escaped in SCAN MATCH, counts beyond one SCAN step;
- bad input refused before any write;
- connection options: unix:// URL, password, password file, ACL username, wrong
  password, rediss:// with a CA, insecure skip-verify and refused verification,
  pool size, a full pool waits for a release within the operation timeout, missing TLS
  files rejected as configuration errors;
- stop() is idempotent and later calls fail with BackendUnavailable.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from podcache.backends.redis import SCAN_COUNT, RedisBackend, escape_glob, ttl_ms
from podcache.config import Config, RedisSettings
from podcache.errors import (
    BackendUnavailable,
    CacheMiss,
    ConfigError,
    InvalidKey,
    InvalidTTL,
    InvalidValue,
)
from tests.redis_server import RedisServer, free_port

MakeBackend = Callable[..., RedisBackend]


def settings(**config: Any) -> RedisSettings:
    """RedisSettings through the real Config validation, as users write them."""
    parsed = Config(type="redis", config=config).settings
    assert isinstance(parsed, RedisSettings)
    return parsed


@pytest.fixture
async def make_backend(redis_url: str) -> AsyncIterator[MakeBackend]:
    created: list[RedisBackend] = []

    def make(**config: Any) -> RedisBackend:
        config.setdefault("url", redis_url)
        backend = RedisBackend(settings(**config))
        created.append(backend)
        return backend

    yield make
    for backend in created:
        await backend.stop()


@pytest.fixture
def backend(make_backend: MakeBackend) -> RedisBackend:
    return make_backend(keyPrefix="t:", defaultTTL="60s")


# -- basic operations --


async def test_set_get_binary_value_under_prefix(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    value = bytes(range(256))
    await backend.set("k", value)
    assert await backend.get("k") == value
    assert await redis_client.get("t:k") == value
    assert await redis_client.exists("k") == 0


async def test_get_missing_raises_cache_miss(backend: RedisBackend) -> None:
    with pytest.raises(CacheMiss):
        await backend.get("absent")


async def test_delete_reports_existence(backend: RedisBackend) -> None:
    await backend.set("k", b"v")
    assert await backend.delete("k") is True
    assert await backend.delete("k") is False
    with pytest.raises(CacheMiss):
        await backend.get("k")


async def test_empty_value_is_a_hit(backend: RedisBackend) -> None:
    await backend.set("k", b"")
    assert await backend.get("k") == b""


async def test_ping(backend: RedisBackend) -> None:
    await backend.ping()


# -- TTLs --


async def test_entry_expires_after_ttl(backend: RedisBackend) -> None:
    await backend.set("k", b"v", ttl=0.2)
    assert await backend.get("k") == b"v"
    await asyncio.sleep(0.3)
    with pytest.raises(CacheMiss):
        await backend.get("k")


async def test_ttl_zero_uses_default(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    await backend.set("k", b"v", ttl=0)
    assert 59_000 < await redis_client.pttl("t:k") <= 60_000
    await backend.set("k2", b"v", ttl=5)
    assert 4_000 < await redis_client.pttl("t:k2") <= 5_000


async def test_ttl_rounds_up_to_a_millisecond() -> None:
    assert ttl_ms(0.0001) == 1
    assert ttl_ms(0.2) == 200
    assert ttl_ms(1.0005) == 1001


async def test_negative_ttl_refused_without_write(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    with pytest.raises(InvalidTTL, match="negative"):
        await backend.set("k", b"v", ttl=-0.5)
    with pytest.raises(InvalidTTL):
        await backend.set_nx("k", b"v", ttl=-1)
    assert await redis_client.dbsize() == 0


# -- conditional writes --


async def test_set_nx(backend: RedisBackend, redis_client: redis.asyncio.Redis) -> None:
    assert await backend.set_nx("k", b"first", ttl=5) is True
    assert await backend.set_nx("k", b"second", ttl=5) is False
    assert await backend.get("k") == b"first"
    assert 0 < await redis_client.pttl("t:k") <= 5_000


async def test_set_nx_after_expiry(backend: RedisBackend) -> None:
    await backend.set("k", b"old", ttl=0.05)
    await asyncio.sleep(0.1)
    assert await backend.set_nx("k", b"new") is True
    assert await backend.get("k") == b"new"


async def test_set_if_match(backend: RedisBackend, redis_client: redis.asyncio.Redis) -> None:
    await backend.set("k", b"v1", ttl=30)
    assert await backend.set_if_match("k", b"v2", b"wrong", ttl=5) is False
    assert await backend.get("k") == b"v1"
    assert await backend.set_if_match("k", b"v2", b"v1", ttl=5) is True
    assert await backend.get("k") == b"v2"
    assert 0 < await redis_client.pttl("t:k") <= 5_000  # the new TTL applies


async def test_set_if_match_on_missing_key(backend: RedisBackend) -> None:
    assert await backend.set_if_match("absent", b"v", b"") is False
    with pytest.raises(CacheMiss):
        await backend.get("absent")


async def test_set_if_match_survives_script_flush(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    await backend.set("k", b"v1")
    await redis_client.script_flush()  # e.g. a Redis restart or failover
    assert await backend.set_if_match("k", b"v2", b"v1") is True
    assert await backend.get("k") == b"v2"


# -- key prefix isolation --


async def test_two_prefixes_never_see_each_other(make_backend: MakeBackend) -> None:
    shop = make_backend(keyPrefix="shop:")
    blog = make_backend(keyPrefix="blog:")
    await shop.set("k", b"shop")
    with pytest.raises(CacheMiss):
        await blog.get("k")
    await blog.set("k", b"blog")
    assert await shop.get("k") == b"shop"
    assert await blog.delete("k") is True
    assert await shop.get("k") == b"shop"
    assert await blog.set_nx("k", b"again") is True  # shop's key does not block blog
    assert await blog.set_if_match("k", b"x", b"shop") is False


async def test_count_items_counts_only_own_prefix(
    make_backend: MakeBackend, redis_client: redis.asyncio.Redis
) -> None:
    shop = make_backend(keyPrefix="shop:")
    blog = make_backend(keyPrefix="blog:")
    for i in range(3):
        await shop.set(f"k{i}", b"v")
    await blog.set("k", b"v")
    await redis_client.set("unrelated", b"v")
    assert await shop.count_items() == 3
    assert await blog.count_items() == 1


async def test_count_items_leaves_out_lock_and_election_keys(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    await backend.set("k", b"v")
    await redis_client.set("t:podcache:lock:{job}", b"token")
    await redis_client.set("t:podcache:lock:{job}:fence", b"7")
    await redis_client.set("t:podcache:leader:{scheduler}", b"pod-a")
    assert await backend.count_items() == 1


async def test_glob_metacharacters_in_prefix_are_escaped(
    make_backend: MakeBackend, redis_client: redis.asyncio.Redis
) -> None:
    tricky = make_backend(keyPrefix="t[1]*?\\:")
    await tricky.set("k", b"v")
    # Each of these would match the prefix if it were used as a raw pattern.
    for key in ("t1xy\\:k", "t1:k", "tX:k", "t[1]*?\\"):
        await redis_client.set(key, b"other")
    assert await tricky.count_items() == 1
    assert escape_glob("a*b?c[d]e\\") == "a\\*b\\?c\\[d\\]e\\\\"


async def test_count_items_beyond_one_scan_step(
    make_backend: MakeBackend, redis_client: redis.asyncio.Redis
) -> None:
    many = make_backend(keyPrefix="many:")
    total = SCAN_COUNT * 2 + 123
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(total):
            pipe.set(f"many:{i}", b"v")
            pipe.set(f"other:{i}", b"v")
        await pipe.execute()
    assert await many.count_items() == total


# -- bad input --


@pytest.mark.parametrize("value", ["text", 42, None])
async def test_non_bytes_value_refused(
    backend: RedisBackend, redis_client: redis.asyncio.Redis, value: object
) -> None:
    with pytest.raises(InvalidValue, match="bytes"):
        await backend.set("k", value)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        await backend.set_if_match("k", b"v", value)  # type: ignore[arg-type]
    assert await redis_client.dbsize() == 0


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "empty"), ("x" * 1025, "1025 bytes"), ("podcache:lock:{job}", "reserved")],
)
async def test_bad_keys_refused(
    backend: RedisBackend, redis_client: redis.asyncio.Redis, key: str, reason: str
) -> None:
    with pytest.raises(InvalidKey, match=reason):
        await backend.set(key, b"v")
    with pytest.raises(InvalidKey):
        await backend.get(key)
    assert await redis_client.dbsize() == 0


async def test_longest_key_is_measured_without_the_prefix(backend: RedisBackend) -> None:
    await backend.set("k" * 1024, b"v")
    assert await backend.get("k" * 1024) == b"v"


# -- connection options --


async def test_pool_size_from_config(make_backend: MakeBackend) -> None:
    backend = make_backend(poolSize=7)
    assert backend.client.connection_pool.max_connections == 7


async def test_more_concurrent_calls_than_pool_connections(make_backend: MakeBackend) -> None:
    backend = make_backend(poolSize=2)
    await asyncio.gather(*(backend.set(f"k{i}", b"v") for i in range(50)))
    assert await backend.count_items() == 50


async def test_full_pool_waits_for_a_release_then_times_out(make_backend: MakeBackend) -> None:
    # The pool serves locks, elections and the item count (the cache's GET/SET go through
    # the pipelined connection): a GET through the pool stands for them here.
    backend = make_backend(poolSize=1, timeouts={"operation": "300ms"})
    await backend.set("k", b"v")
    pool = backend.client.connection_pool

    def pooled_get() -> Any:
        return backend.call("GET", backend.client.get(backend.key("k")))

    held = await pool.get_connection()  # the pool's only connection
    waiting = asyncio.ensure_future(pooled_get())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # waits for a connection instead of failing at once
    await pool.release(held)
    assert await asyncio.wait_for(waiting, 1) == b"v"
    held = await pool.get_connection()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackendUnavailable):
        await pooled_get()
    assert 0.25 < loop.time() - started < 1.0  # bounded by the operation timeout
    await pool.release(held)
    assert await pooled_get() == b"v"


async def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(extra_args=("--unixsocket", str(sock), "--unixsocketperm", "700"))
    server.start()
    backend = RedisBackend(settings(url=f"unix://{sock}?db=0"))
    try:
        await backend.set("k", b"v")
        assert await backend.get("k") == b"v"
    finally:
        await backend.stop()
        server.close()


async def test_password_and_password_file(redis_server: RedisServer, tmp_path: Path) -> None:
    admin = redis.asyncio.Redis.from_url(redis_server.url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")  # a mounted Secret often ends with a newline
    good = [
        RedisBackend(settings(url=redis_server.url, password="s3cret")),
        RedisBackend(settings(url=redis_server.url, passwordFile=str(secret))),
    ]
    wrong = RedisBackend(settings(url=redis_server.url, password="nope"))
    try:
        for backend in good:
            await backend.set("k", b"v")
            assert await backend.get("k") == b"v"
        with pytest.raises(BackendUnavailable, match=r"(?i)password|auth"):
            await wrong.get("k")
    finally:
        for backend in [*good, wrong]:
            await backend.stop()


async def test_acl_username(redis_server: RedisServer) -> None:
    admin = redis.asyncio.Redis.from_url(redis_server.url)
    await admin.acl_setuser(
        "app", enabled=True, passwords=["+apppw"], keys=["app:*"], commands=["+@all"]
    )
    await admin.aclose()
    backend = RedisBackend(
        settings(url=redis_server.url, username="app", password="apppw", keyPrefix="app:")
    )
    outside = RedisBackend(
        settings(url=redis_server.url, username="app", password="apppw", keyPrefix="x:")
    )
    try:
        await backend.set("k", b"v")
        assert await backend.get("k") == b"v"
        with pytest.raises(BackendUnavailable, match=r"permission|NOPERM"):
            await outside.set("k", b"v")  # the ACL confines the user to its prefix
    finally:
        await backend.stop()
        await outside.stop()


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="passwordFile"):
        RedisBackend(settings(url="redis://127.0.0.1:1/0", passwordFile=str(tmp_path / "none")))


def test_missing_tls_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="caFile"):
        RedisBackend(
            settings(url="rediss://127.0.0.1:1/0", tls={"caFile": str(tmp_path / "ca.crt")})
        )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "srv.key", directory / "srv.csr", directory / "srv.crt"
    ext = directory / "ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    try:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
                "-out", str(ca_crt), "-days", "1", "-subj", "/CN=podcache-test-ca")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                "-subj", "/CN=localhost")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext))
    except FileNotFoundError:
        pytest.skip("the openssl CLI is needed to make test certificates")
    return {"ca": ca_crt, "cert": crt, "key": key}


@pytest.fixture
def tls_server(tls_files: dict[str, Path]) -> Any:
    tls_port = free_port()
    server = RedisServer(extra_args=(
        "--tls-port", str(tls_port), "--tls-cert-file", str(tls_files["cert"]),
        "--tls-key-file", str(tls_files["key"]), "--tls-ca-cert-file", str(tls_files["ca"]),
        "--tls-auth-clients", "no",
    ))
    server.start()
    yield f"rediss://127.0.0.1:{tls_port}/0"
    server.close()


async def test_rediss_with_ca_file(tls_server: str, tls_files: dict[str, Path]) -> None:
    backend = RedisBackend(settings(url=tls_server, tls={"caFile": str(tls_files["ca"])}))
    try:
        await backend.set("k", b"v")
        assert await backend.get("k") == b"v"
    finally:
        await backend.stop()


async def test_rediss_insecure_skip_verify(tls_server: str) -> None:
    backend = RedisBackend(settings(url=tls_server, tls={"insecureSkipVerify": True}))
    try:
        await backend.set("k", b"v")
        assert await backend.get("k") == b"v"
    finally:
        await backend.stop()


async def test_rediss_refuses_an_unknown_ca(tls_server: str) -> None:
    backend = RedisBackend(settings(url=tls_server))  # system CAs do not know our test CA
    try:
        with pytest.raises(BackendUnavailable, match=r"(?i)certificate"):
            await backend.get("k")
    finally:
        await backend.stop()


async def test_tls_enabled_upgrades_a_plain_url(
    tls_server: str, tls_files: dict[str, Path]
) -> None:
    plain = "redis://" + tls_server.removeprefix("rediss://")
    backend = RedisBackend(settings(url=plain, tls={"caFile": str(tls_files["ca"])}))
    try:
        await backend.ping()
    finally:
        await backend.stop()


# -- lifecycle --


async def test_stop_is_idempotent_and_later_calls_fail(backend: RedisBackend) -> None:
    await backend.set("k", b"v")
    await backend.stop()
    await backend.stop()
    with pytest.raises(BackendUnavailable, match="stopped"):
        await backend.get("k")


def test_public_attributes_for_locks_and_elections(backend: RedisBackend) -> None:
    assert backend.key_prefix == "t:"
    assert backend.key("job") == "t:job"
    assert backend.settings.key_prefix == "t:"
    assert isinstance(backend.client, redis.asyncio.Redis)
