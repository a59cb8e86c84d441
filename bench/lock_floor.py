"""The floor of a lock cycle through any Python process between the app and Redis.

A server on a Unix socket that does only the I/O of the sidecar's lock requests: it
reads an HTTP request, runs the sidecar's own acquire or release script (the same Lua,
the same ``PipelinedConnection``) with a fixed token and TTL, and writes a fixed-shape
answer. No JSON parsing, validation, lease book, metrics or Task per request: a
reply's future calls back straight into the write. ``bench_sidecar.py`` runs it as the
"lock floor" case, so the sidecar's lock figure can be read against what the two hops
themselves (app -> process -> Redis and back, twice per cycle) cost on this machine.

It answers ``GET /healthz`` (readiness), ``POST /v1/locks/<name>`` and
``DELETE /v1/locks/<name>``; nothing else is meant to reach it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sidecar"))

import http_frames  # noqa: E402  # bench/, this script's folder
from podcache.backends.redis_pipeline import PipelinedConnection, Script  # noqa: E402
from podcache.config import RedisSettings, parse_settings  # noqa: E402
from podcache.locks.redis import SIGNAL_TTL_MS, RedisLocks, lock_keys  # noqa: E402

TOKEN = "0" * 32
TTL_MS = 10_000
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
_NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
_CONFLICT = b"HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\n\r\n"
_HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class FloorProtocol(asyncio.Protocol):
    """One connection; requests are answered in order, one at a time (as the load sends them)."""

    def __init__(self, pipe: PipelinedConnection, acquire: Script, release: Script) -> None:
        self.pipe = pipe
        self.acquire = acquire
        self.release = release
        self.transport: Any = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        message = http_frames.complete(self.buffer)
        if message is None:
            return
        head, _, total = message
        self.buffer = self.buffer[total:]
        method, target = head.split(b" ", 2)[:2]
        if method == b"GET":
            self.transport.write(_HEALTHY)
            return
        owner, fence, signal = lock_keys("bench-floor:", target.rsplit(b"/", 1)[1].decode())
        if method == b"POST":
            future = self.pipe.execute(b"EVALSHA", self.acquire.sha, 3, owner, fence, signal,
                                       TOKEN, TTL_MS)
            future.add_done_callback(self._acquired)
        else:
            future = self.pipe.execute(b"EVALSHA", self.release.sha, 2, owner, signal, TOKEN,
                                       SIGNAL_TTL_MS)
            future.add_done_callback(self._released)

    def _acquired(self, future: asyncio.Future[Any]) -> None:
        reply = future.result()
        if int(reply[0]) != 1:
            self.transport.write(_CONFLICT)
            return
        body = b'{"token": "%s", "fence": %d, "ttl_ms": %d, "waited_ms": 0}' % (
            TOKEN.encode(), int(reply[1]), TTL_MS)
        self.transport.write(b"%s%d\r\n\r\n%s" % (_OK, len(body), body))

    def _released(self, future: asyncio.Future[Any]) -> None:
        self.transport.write(_NO_CONTENT if int(future.result()) == 1 else _CONFLICT)


async def serve(socket_path: str, redis_url: str) -> None:
    settings = parse_settings("redis", {"url": redis_url})
    assert isinstance(settings, RedisSettings)
    pipe = PipelinedConnection(settings)
    acquire, release = Script(RedisLocks.ACQUIRE_LUA), Script(RedisLocks.RELEASE_LUA)
    for script in (acquire, release):  # loaded once: the hot path is EVALSHA only
        await pipe.execute(b"SCRIPT", b"LOAD", script.source)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(
        lambda: FloorProtocol(pipe, acquire, release), socket_path)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    uvloop.run(serve(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
