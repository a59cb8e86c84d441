"""Helpers for the Redis-protocol socket's tests: a raw client, a reference redis-server,
and a sidecar with its RESP socket on each backend.

The raw client speaks bytes and parses with ``hiredis.Reader`` (errors come back as
values), so a test can send what no well-behaved client would and compare what the
sidecar and a real redis-server answer to the same bytes.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest

from tests.redis_server import RedisServer, RedisUnavailable
from tests.sidecar.conftest import SidecarProcess


def encode(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class RawClient:
    """A blocking Unix-socket client that sends raw bytes and reads parsed replies."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = hiredis.Reader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Any:
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("connection closed")
            self.reader.feed(data)

    def call(self, *args: bytes | str | int) -> Any:
        self.send(encode(*args))
        return self.read()

    def closed_by_peer(self) -> bool:
        """True when the server closed the connection (after any pending replies)."""
        try:
            while self.reader.gets() is not False:
                pass
            return self.sock.recv(1 << 16) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.sock.close()


def norm(reply: Any) -> Any:
    """A comparable form: errors as ("error", text), containers recursively."""
    if isinstance(reply, hiredis.ReplyError):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [norm(item) for item in reply]
    if isinstance(reply, dict):
        return {norm(key): norm(value) for key, value in reply.items()}
    return reply


@pytest.fixture(scope="session")
def reference_socket() -> Iterator[str]:
    """A real redis-server on a Unix socket: the replies every RESP test compares with."""
    directory = Path(tempfile.mkdtemp(prefix="pcref-", dir="/tmp"))
    path = str(directory / "redis.sock")
    try:
        server = RedisServer(extra_args=("--unixsocket", path, "--unixsocketperm", "700"))
        server.start()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield path
    finally:
        server.close()


@pytest.fixture
def reference(reference_socket: str) -> Iterator[RawClient]:
    client = RawClient(reference_socket)
    client.call("FLUSHALL")
    yield client
    client.close()


LIMITS = {"maxValueBytes": 4096, "maxKeyBytes": 64, "maxInflightBytes": 65536}


def backend_config(backend: str, redis_url: str | None) -> dict[str, Any]:
    if backend == "memory":
        return {"type": "memory", "config": {"defaultTTL": "5m"}}
    prefix = f"resp-{uuid.uuid4().hex[:6]}:"
    return {"type": "redis", "config": {"url": redis_url, "defaultTTL": "5m", "keyPrefix": prefix}}


@contextlib.contextmanager
def spawned(config: dict[str, Any]) -> Iterator[tuple[SidecarProcess, str]]:
    """A sidecar process with ``config``; yields it and its RESP socket's path."""
    workdir = Path(tempfile.mkdtemp(prefix="pcr-", dir="/tmp"))
    process = SidecarProcess(workdir, config)
    try:
        process.wait_socket()
        yield process, str(workdir / "cache-redis.sock")  # the default beside cache.sock
    finally:
        process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module", params=["memory", "redis"])
def resp_socket(request: pytest.FixtureRequest) -> Iterator[str]:
    """The RESP socket of a sidecar process on each backend (shared by a module's tests:
    they use keys of their own), with small limits."""
    url = request.getfixturevalue("redis_session_url") if request.param == "redis" else None
    with spawned({**backend_config(request.param, url), "limits": LIMITS}) as (_, path):
        yield path


@pytest.fixture
def resp(resp_socket: str) -> Iterator[RawClient]:
    client = RawClient(resp_socket)
    yield client
    client.close()


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own (the sidecar of a module is shared)."""
    return f"t{uuid.uuid4().hex[:8]}:"
