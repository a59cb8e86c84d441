"""Is the cache reachable where the app reaches it? Asked for the TCP ``/healthz``.

In a pod the kubelet probes the sidecar over TCP (an ``httpGet`` on the metrics port:
no process started per probe, unlike an ``exec`` probe, which costs a new Python
interpreter in the sidecar's cgroup every time). A TCP answer alone would say nothing
about the Unix sockets the app uses, so ``/healthz`` asks them the way a client does:
it connects to the HTTP socket and sends ``GET /healthz``, and PINGs the RESP socket
when there is one. A socket file that was deleted, a listener that stopped accepting,
or a loop too stuck to answer within the timeout makes ``/healthz`` 503, and the
kubelet restarts the sidecar, which binds its sockets again.

A listener at its connection limit stops accepting on purpose (``socket_site``): the
request then waits in the backlog and times out, but a saturated sidecar is busy, not
broken, and restarting it would drop every client at once. So a timeout while the
listener is full is reported healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

HEALTH_REQUEST = b"GET /healthz HTTP/1.0\r\nHost: podcache\r\n\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"
TIMEOUT = 1.0
"""Seconds each socket may take; under the kubelet's probe timeout (2 s as injected)."""


async def problem(
    http_socket: str,
    resp_socket: str | None,
    *,
    saturated: Callable[[], bool] = lambda: False,
    within: float = TIMEOUT,
) -> str | None:
    """Why a client could not use the sockets right now, or None when both answer."""
    found = await _ask(http_socket, HEALTH_REQUEST, _http_ok, within, busy=saturated)
    if found is None and resp_socket is not None:
        found = await _ask(resp_socket, PING, _resp_ok, within)
    return found


def _http_ok(line: bytes) -> bool:
    return line.startswith(b"HTTP/1.") and line.split()[1:2] == [b"200"]


def _resp_ok(line: bytes) -> bool:
    # Behind a password an unauthenticated PING is refused, in RESP: still alive.
    return line.startswith((b"+PONG", b"-NOAUTH"))


async def _ask(
    path: str,
    request: bytes,
    ok: Callable[[bytes], bool],
    within: float,
    *,
    busy: Callable[[], bool] = lambda: False,
) -> str | None:
    """Why ``path`` failed ``request``, or None; no answer while ``busy()`` is no failure."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(request)
            line = await reader.readline()
    except TimeoutError:
        return None if busy() else f"{path} did not answer within {within:g} s"
    except OSError as exc:
        return f"cannot connect to {path}: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not ok(line):
        return f"{path} answered {line[:64]!r}"
    return None
