"""The RESP socket lives like the HTTP socket: metrics, reload, limits, outage, shutdown.

Aspects: the seed's ``lab_cache_*`` metrics count RESP traffic (GET hit/miss, SET,
other commands under their own label) and ``lab_resp_connections`` counts
connections; a hot reload's default TTL and limits apply to the next command; the
socket has the HTTP socket's mode; ``resp.enabled: false`` serves none; the
connection limit makes room by closing an idle connection; a Redis outage answers
``TRYAGAIN`` within the operation timeout; AUTH with ``PODCACHE_RESP_PASSWORD``;
a graceful shutdown finishes and removes the socket file.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import yaml
from prometheus_client import generate_latest

from tests.redis_server import RedisServer
from tests.sidecar.conftest import StartSidecar, wait_until


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _client(sidecar: Any) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(unix_socket_path=sidecar.resp.path)


def _scrape(sidecar: Any) -> str:
    return generate_latest(sidecar.exposition.registry).decode()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_metrics_count_resp_traffic(
    start_sidecar: StartSidecar, backend: str, request: pytest.FixtureRequest
) -> None:
    from tests.sidecar.resp_support import backend_config

    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    sidecar, _ = await start_sidecar(backend_config(backend, url))
    client = _client(sidecar)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        assert await client.get("missing") is None
        await client.execute_command("INCR", "n")  # redis-py's incr() sends INCRBY
        await client.ttl("k")
        text = _scrape(sidecar)
        assert 'lab_cache_requests_total{operation="get",status="hit"} 1.0' in text
        assert 'lab_cache_requests_total{operation="get",status="miss"} 1.0' in text
        assert 'lab_cache_requests_total{operation="set",status="ok"} 1.0' in text
        assert 'lab_cache_requests_total{operation="incr",status="ok"} 1.0' in text
        assert 'lab_cache_requests_total{operation="ttl",status="ok"} 1.0' in text
        assert "lab_cache_hits_total 1.0" in text
        assert "lab_cache_misses_total 1.0" in text
        assert "lab_resp_connections 1.0" in text
    finally:
        await client.aclose()


async def test_pipelined_batch_counts_and_answers_in_order(start_sidecar: StartSidecar) -> None:
    """One write of plain GET/SETs (the memory backend's one-pass path, counted per batch)
    mixed with commands that take the general path (options, MULTI, a bad key, an error):
    every reply in order, and the cache metrics count each call exactly once."""
    sidecar, _ = await start_sidecar({"type": "memory", "config": {"defaultTTL": "5m"}})
    client = _client(sidecar)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(16):
            pipe.set(f"k{i}", f"v{i}")
        for i in range(16):
            pipe.get(f"k{i}")
        pipe.get("absent")
        pipe.set("opt", "x", ex=100)  # an option: the general path
        pipe.execute_command("MULTI")
        pipe.get("k0")  # queued, not run here
        pipe.execute_command("EXEC")
        pipe.get("podcache:reserved")  # refused like before
        pipe.get("k1")
        replies = await pipe.execute(raise_on_error=False)
        assert replies[:16] == [True] * 16
        assert replies[16:32] == [f"v{i}".encode() for i in range(16)]
        assert replies[32] is None
        assert replies[33] is True
        assert replies[34:37] == [b"OK", b"QUEUED", [b"v0"]]
        assert "invalid key" in str(replies[37])
        assert replies[38] == b"v1"
        assert await client.ttl("k3") > 200  # the default TTL applied on the fast path
        text = _scrape(sidecar)
        assert 'lab_cache_requests_total{operation="get",status="hit"} 18.0' in text
        assert 'lab_cache_requests_total{operation="get",status="miss"} 1.0' in text
        assert 'lab_cache_requests_total{operation="get",status="error"} 0.0' in text  # key_of
        assert 'lab_cache_requests_total{operation="set",status="ok"} 17.0' in text
        assert 'lab_cache_operation_duration_seconds_count{operation="get"} 19.0' in text
        assert 'lab_cache_operation_duration_seconds_count{operation="set"} 17.0' in text
    finally:
        await client.aclose()


async def test_reload_applies_default_ttl_and_limits(start_sidecar: StartSidecar) -> None:
    config: dict[str, Any] = {"type": "memory", "config": {"defaultTTL": "5m"}}
    sidecar, _ = await start_sidecar(config, config_file=True)
    client = _client(sidecar)
    try:
        await client.set("a", "1")
        assert 299 <= await client.ttl("a") <= 300
        config["config"]["defaultTTL"] = "1m"
        config["limits"] = {"maxValueBytes": 100, "maxInflightBytes": 1024}
        _write(Path(sidecar.options.config_path or ""), yaml.safe_dump(config))

        async def applied() -> bool:
            await client.set("b", "1")
            return await client.ttl("b") <= 60

        await wait_until(applied)
        with pytest.raises(redis.ResponseError, match=r"limits\.maxValueBytes is 100"):
            await client.set("c", "x" * 101)
        assert await client.get("a") == b"1"  # entries survive the reload
    finally:
        await client.aclose()


async def test_socket_mode_and_disabled(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar({"type": "memory"})
    resp_mode = stat.S_IMODE(os.stat(sidecar.resp.path).st_mode)
    assert resp_mode == stat.S_IMODE(os.stat(sidecar.socket_path).st_mode)
    off, _ = await start_sidecar({"type": "memory", "resp": {"enabled": False}}, name="off")
    assert off.resp is None
    assert not _exists(off.socket_path.replace(".sock", "-redis.sock"))


async def test_connection_limit_evicts_an_idle_connection(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar({"type": "memory", "limits": {"maxConnections": 2}})
    idle = [await asyncio.open_unix_connection(sidecar.resp.path) for _ in range(2)]
    for _, writer in idle:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
    for reader, _ in idle:
        assert await reader.readline() == b"+PONG\r\n"
    client = _client(sidecar)
    try:
        async with asyncio.timeout(5):
            assert await client.ping() is True  # an idle one was closed to make room
        closed = 0
        for reader, _ in idle:
            try:
                async with asyncio.timeout(0.5):
                    closed += await reader.read() == b""
            except TimeoutError:
                pass  # this one stayed open
        assert closed == 1
    finally:
        await client.aclose()
        for _, writer in idle:
            writer.close()


async def test_outage_answers_tryagain_promptly(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    config = {
        "type": "redis",
        "config": {"url": redis_server.url, "keyPrefix": "o:", "timeouts": {"operation": "500ms"}},
    }
    sidecar, _ = await start_sidecar(config)
    client = _client(sidecar)
    try:
        await client.set("k", "v")
        redis_server.pause()
        started = time.monotonic()
        # TRYAGAIN: redis-py raises its TryAgainError with the rest of the text.
        with pytest.raises(redis.exceptions.TryAgainError, match="backend unavailable"):
            await client.get("k")
        assert time.monotonic() - started < 2.0
        with pytest.raises(redis.exceptions.TryAgainError):
            await client.incr("n")
        redis_server.resume()

        async def back() -> bool:
            try:
                return await client.get("k") == b"v"
            except redis.ResponseError:
                return False

        await wait_until(back)
    finally:
        redis_server.resume()
        await client.aclose()


async def test_auth_with_a_socket_password(
    start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODCACHE_RESP_PASSWORD", "s3cret")
    sidecar, _ = await start_sidecar({"type": "memory"})
    anonymous = _client(sidecar)
    good = redis.asyncio.Redis(unix_socket_path=sidecar.resp.path, password="s3cret")
    bad = redis.asyncio.Redis(unix_socket_path=sidecar.resp.path, password="wrong")
    try:
        # redis-py connects with HELLO 3 (AUTH inside when it has a password), which is
        # refused with NOAUTH or WRONGPASS as Redis refuses it; it raises either class.
        with pytest.raises((redis.AuthenticationError, redis.ConnectionError)):
            await anonymous.get("k")
        with pytest.raises((redis.AuthenticationError, redis.ConnectionError)):
            await bad.ping()
        assert await good.set("k", "v") is True
        assert await good.get("k") == b"v"
    finally:
        for client in (anonymous, good, bad):
            await client.aclose()


async def test_graceful_shutdown(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar({"type": "memory"})
    path = sidecar.resp.path
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
    assert await reader.readline() == b"+OK\r\n"
    await sidecar.shutdown()
    assert await reader.read() == b""  # the idle connection was closed
    assert not _exists(path)
    writer.close()


async def test_a_command_that_suspends_on_the_memory_backend(
    start_sidecar: StartSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Driven by hand first, a command that does wait is handed to a Task mid-flight
    (``hand_driven.resumed``) and answers in order; nothing in the memory backend waits today, so
    this guards the fallback."""
    from podcache.sidecar import resp_commands, resp_wire

    async def slow_echo(session: Any, args: list[bytes]) -> bytes:
        await asyncio.sleep(0.01)
        return resp_wire.bulk(args[1])

    entry = resp_commands.Command("echo", slow_echo, 2)
    monkeypatch.setitem(resp_commands.COMMANDS, b"ECHO", entry)
    monkeypatch.setitem(resp_commands.COMMANDS, b"echo", entry)
    sidecar, _ = await start_sidecar({"type": "memory"})
    client = _client(sidecar)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.echo("a").set("k", "v").echo("b").get("k")
        assert await pipe.execute() == [b"a", True, b"b", b"v"]
    finally:
        await client.aclose()


async def test_pipelines_of_many_connections_in_one_turn(start_sidecar: StartSidecar) -> None:
    """Pipelined replies wait for the end of the loop turn and go out together
    (``RespServer.write_later``): several connections' pipelines sent at the same
    instant each get all their replies, in order, with a general-path command in the
    middle; one that ends with QUIT is answered, then closed; one that leaves before
    its replies go out costs the others nothing."""
    sidecar, _ = await start_sidecar({"type": "memory", "config": {"defaultTTL": "5m"}})
    path = sidecar.resp.path

    def command(*args: bytes) -> bytes:
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    async def pipeline(i: int, *, quit_at_end: bool) -> bytes:
        reader, writer = await asyncio.open_unix_connection(path)
        key = b"c%d" % i
        sent = [command(b"SET", key, b"v%d" % i), command(b"GET", key),
                command(b"INCR", key + b"n"), command(b"GET", key)] * 20
        if quit_at_end:
            sent.append(command(b"QUIT"))
        writer.write(b"".join(sent))
        received = await asyncio.wait_for(reader.read(-1) if quit_at_end else
                                          reader.readexactly(len(expected(i))), 10)
        writer.close()
        return received

    def expected(i: int) -> bytes:
        value = b"v%d" % i
        return b"".join(
            b"+OK\r\n$%d\r\n%s\r\n:%d\r\n$%d\r\n%s\r\n" % (len(value), value, n + 1,
                                                         len(value), value)
            for n in range(20)
        )

    _, gone = await asyncio.open_unix_connection(path)
    gone.write(command(b"SET", b"gone", b"x") + command(b"GET", b"gone"))
    gone.close()
    answers = await asyncio.gather(*(pipeline(i, quit_at_end=i == 0) for i in range(8)))
    assert answers[0] == expected(0) + b"+OK\r\n"  # then the sidecar closed it (read(-1))
    assert answers[1:] == [expected(i) for i in range(1, 8)]
    client = _client(sidecar)
    try:
        assert await client.get("c3") == b"v3"
    finally:
        await client.aclose()
