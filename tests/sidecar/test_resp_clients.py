"""Real, unmodified Redis clients against the sidecar's RESP socket, on both backends.

Aspects: redis-py sync and asyncio, RESP2 and RESP3, with hiredis and with redis-py's
pure-Python parsers, plain calls, a pipeline and a transaction; ``redis-cli -s``
(including its connect-time probes); ``redis-benchmark -s`` with and without
pipelining (every request answered, nothing refused); Node's ioredis (when installed in
``tests/sidecar/node``); the same keys seen over HTTP.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis._parsers import (
    _AsyncHiredisParser,
    _AsyncRESP2Parser,
    _AsyncRESP3Parser,
    _HiredisParser,
    _RESP2Parser,
    _RESP3Parser,
)

from tests.availability import unavailable
from tests.sidecar import resp_support as support

resp_socket = support.resp_socket
ns = support.ns

SYNC_VARIANTS = [
    pytest.param(2, _HiredisParser, id="resp2-hiredis"),
    pytest.param(2, _RESP2Parser, id="resp2-python"),
    pytest.param(3, _HiredisParser, id="resp3-hiredis"),
    pytest.param(3, _RESP3Parser, id="resp3-python"),
]
ASYNC_VARIANTS = [
    pytest.param(2, _AsyncHiredisParser, id="resp2-hiredis"),
    pytest.param(2, _AsyncRESP2Parser, id="resp2-python"),
    pytest.param(3, _AsyncHiredisParser, id="resp3-hiredis"),
    pytest.param(3, _AsyncRESP3Parser, id="resp3-python"),
]


@pytest.mark.parametrize(("protocol", "parser"), SYNC_VARIANTS)
def test_redis_py_sync(resp_socket: str, ns: str, protocol: int, parser: Any) -> None:
    pool = redis.ConnectionPool(
        connection_class=redis.UnixDomainSocketConnection,
        path=resp_socket,
        protocol=protocol,
        parser_class=parser,
    )
    client = redis.Redis(connection_pool=pool)
    try:
        assert client.ping() is True
        assert client.set(ns + "a", b"\x00bin\r\n") is True
        assert client.get(ns + "a") == b"\x00bin\r\n"
        assert client.get(ns + "missing") is None
        assert client.set(ns + "a", "x", nx=True) is None
        assert client.set(ns + "t", "v", ex=60) is True
        assert 59 <= client.ttl(ns + "t") <= 60
        assert client.incr(ns + "n") == 1
        assert client.incrby(ns + "n", 41) == 42
        assert client.mget([ns + "a", ns + "missing", ns + "n"]) == [b"\x00bin\r\n", None, b"42"]
        assert client.delete(ns + "a", ns + "missing") == 1
        assert client.exists(ns + "n") == 1
        with pytest.raises(redis.ResponseError, match="unknown command 'LPUSH'"):
            client.lpush(ns + "list", "x")
        assert client.ping() is True  # the connection is still usable
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"{ns}p{i}", i)
            pipe.get(f"{ns}p{i}")
        replies = pipe.execute()
        assert replies[1::2] == [str(i).encode() for i in range(100)]
        with client.pipeline(transaction=True) as tx:
            tx.set(ns + "tx", "1").incr(ns + "tx").get(ns + "tx")
            assert tx.execute() == [True, 2, b"2"]
    finally:
        client.close()


@pytest.mark.parametrize(("protocol", "parser"), ASYNC_VARIANTS)
async def test_redis_py_asyncio(resp_socket: str, ns: str, protocol: int, parser: Any) -> None:
    pool = redis.asyncio.ConnectionPool(
        connection_class=redis.asyncio.UnixDomainSocketConnection,
        path=resp_socket,
        protocol=protocol,
        parser_class=parser,
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    try:
        assert await client.ping() is True
        assert await client.set(ns + "a", "1") is True
        assert await client.get(ns + "a") == b"1"
        assert await client.getdel(ns + "a") == b"1"
        assert await client.get(ns + "a") is None
        async with client.pipeline(transaction=True) as tx:
            tx.set(ns + "b", "5").incrby(ns + "b", 5).expire(ns + "b", 30).ttl(ns + "b")
            assert await tx.execute() == [True, 10, True, 30]
        pipe = client.pipeline(transaction=False)
        for _ in range(50):
            pipe.incr(ns + "c")
        assert await pipe.execute() == list(range(1, 51))
        with pytest.raises(redis.ResponseError, match="unknown command"):
            await client.execute_command("XADD", ns + "s", "*", "f", "v")
        assert await client.get(ns + "c") == b"50"
    finally:
        await client.aclose()


def test_redis_cli(resp_socket: str, ns: str) -> None:
    if shutil.which("redis-cli") is None:
        unavailable("redis-cli", "not installed (apt-get install redis-tools)")
    def cli(*args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-s", resp_socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip()

    assert cli("PING") == "PONG"
    assert cli("SET", ns + "k", "hello") == "OK"
    assert cli("GET", ns + "k") == "hello"
    assert cli("FOO") == "ERR unknown command 'FOO', with args beginning with:"
    assert cli("INFO", "server").splitlines()[1] == "redis_version:7.0.0"
    # Interactive mode reads commands from stdin (redis-cli probes COMMAND DOCS first).
    done = subprocess.run(
        ["redis-cli", "-s", resp_socket],
        input=f"SET {ns}x 1\nINCR {ns}x\nGET {ns}x\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert done.stdout.split() == ["OK", "2", "2"]


@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark(resp_socket: str, pipeline: int) -> None:
    if shutil.which("redis-benchmark") is None:
        unavailable("redis-benchmark", "not installed (apt-get install redis-tools)")
    done = subprocess.run(
        [
            "redis-benchmark",
            "-s",
            resp_socket,
            "-t",
            "set,get",
            "-n",
            "20000",
            "-c",
            "8",
            "-P",
            str(pipeline),
            "-q",
            "--csv",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith('"')]
    assert [row.split(",")[0] for row in rows[1:]] == ['"SET"', '"GET"'], done.stdout
    assert "error" not in done.stdout.lower() + done.stderr.lower()
    client = redis.Redis(unix_socket_path=resp_socket)
    try:
        assert len(client.get("key:__rand_int__") or b"") == 3  # its SETs were stored
    finally:
        client.close()


def test_the_same_cache_as_http(resp_socket: str, ns: str) -> None:
    http_socket = resp_socket.replace("cache-redis.sock", "cache.sock")
    client = redis.Redis(unix_socket_path=resp_socket)
    try:
        client.set(ns + "shared", "from-resp")
        done = subprocess.run(
            ["curl", "-s", "--unix-socket", http_socket, f"http://x/v1/cache/{ns}shared"],
            capture_output=True,
            timeout=10,
            check=True,
        )
        assert done.stdout == b"from-resp"
        subprocess.run(
            [
                "curl",
                "-s",
                "-X",
                "PUT",
                "--data-binary",
                "from-http",
                "--unix-socket",
                http_socket,
                f"http://x/v1/cache/{ns}other",
            ],
            capture_output=True,
            timeout=10,
            check=True,
        )
        assert client.get(ns + "other") == b"from-http"
    finally:
        client.close()


NODE_DIR = Path(__file__).parent / "node"
NODE_SCRIPT = """
const Redis = require("ioredis");
const [path, ns] = process.argv.slice(1);
(async () => {
  const redis = new Redis({ path, lazyConnect: true });
  await redis.connect();
  const out = [];
  out.push(await redis.set(ns + "k", "v", "EX", 60));
  out.push(await redis.get(ns + "k"));
  out.push(await redis.incr(ns + "n"));
  out.push(await redis.pipeline().set(ns + "p", "1").incr(ns + "p").get(ns + "p").exec());
  out.push(await redis.multi().set(ns + "m", "a").get(ns + "m").exec());
  try { await redis.lpush(ns + "l", "x"); } catch (e) { out.push(e.message); }
  out.push(await redis.ttl(ns + "k"));
  console.log(JSON.stringify(out));
  redis.disconnect();
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_ioredis(resp_socket: str, ns: str) -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "ioredis").is_dir():
        unavailable("Node's ioredis", "needs node and `npm ci` in tests/sidecar/node")
    done = subprocess.run(
        ["node", "-e", NODE_SCRIPT, resp_socket, ns],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(done.stdout) == [
        "OK",
        "v",
        1,
        [[None, "OK"], [None, 2], [None, "2"]],
        [[None, "OK"], [None, "a"]],
        f"ERR unknown command 'lpush', with args beginning with: '{ns}l' 'x' ",
        60,
    ]
