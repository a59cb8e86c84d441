"""The Unix socket the sidecar serves on: safe to (re)create, mode 0660, a connection limit.

Beware of the path before binding: a socket file left by a killed sidecar (stale)
is replaced, but a socket another sidecar still serves on (live) is refused with a
clear error rather than stolen, and a regular file is never deleted. A path that
cannot be used at all (a directory the sidecar may not write, a filesystem without
sockets such as /proc, a path too long) is ``SocketUnusable``, naming the path: the
bare ``OSError`` of ``bind()`` does not.

aiohttp's ``UnixSite`` accepts every connection; ``UnixListenerSite`` runs its own
accept loop instead, so at ``max_connections`` open connections it stops accepting
and further clients wait in the kernel's listen backlog (nothing is refused). While
a client waits there, the oldest idle keep-alive connection is closed to make room.
The limit may change on a config reload. A watch stream leaves the count when it
starts (``detach``): watches have a bound of their own (``podcache.sidecar.watches``).

Known gap: with ``max_connections`` connections all *busy* (e.g. blocked lock acquires),
``/healthz`` and ``/readyz`` wait in the backlog like any client, and the injected
liveness probe (1 s) can fail. A reserve of extra slots for probes is not done here
because a probe can only be told apart after accepting it and reading its request line:
an accepted non-probe must then either be refused (503), which turns "wait in the
backlog" into "refused" for every waiting client (the loop would accept and refuse the
whole backlog), or wait inside the sidecar, which means a user-space wait queue that
replaces the kernel backlog and the idle-eviction trigger above (shared with the RESP
socket). The smaller way out is a separate listener for probes (a probe socket with a
tiny limit, or the metrics port's ``/healthz``), which changes the operator's probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseRunner

from podcache.sidecar import http_protocol

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o660
"""Off-pod default: read/write for the owner and group only."""
MODE_ENV = "PODCACHE_SOCKET_MODE"
"""In a pod the injector sets it to 0666: the socket's directory is an emptyDir only that
pod's containers mount, and they may run as different users with no group in common
(a container-level ``runAsUser`` and no ``fsGroup``), who would get EACCES on 0660."""
MODES = (0o600, 0o660, 0o666)


def socket_mode(environ: Mapping[str, str] | None = None) -> int:
    """The sockets' mode: ``PODCACHE_SOCKET_MODE`` (octal), else ``SOCKET_MODE``."""
    raw = (os.environ if environ is None else environ).get(MODE_ENV, "").strip()
    if not raw:
        return SOCKET_MODE
    try:
        mode = int(raw, 8)
    except ValueError:
        mode = -1
    if mode not in MODES:
        allowed = ", ".join(f"{m:04o}" for m in MODES)
        raise ValueError(f"{MODE_ENV}={raw!r}: use one of {allowed}")
    return mode
BACKLOG = 1024
EVICT_RETRY = 0.05
"""Seconds between looks for an idle connection to close while every one is busy."""
LIVE_PROBE_TIMEOUT = 0.5


MAX_PATH_BYTES = 107
"""Longest Unix socket path Linux takes (``sun_path`` is 108 bytes with the NUL)."""


class SocketInUse(RuntimeError):
    """The socket path is served by another process, or is not a socket at all."""


class SocketUnusable(RuntimeError):
    """No socket can be made at the path; the message names the path and the reason."""

    def __init__(self, path: str, what: str, cause: OSError) -> None:
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        if cause.errno is None and len(os.fsencode(path)) > MAX_PATH_BYTES:
            reason += f" ({len(os.fsencode(path))} bytes, at most {MAX_PATH_BYTES})"
        super().__init__(f"{what} {path}: {reason}")
        self.path = path


def prepare_path(path: str) -> None:
    """Create the parent directory; remove a stale socket; refuse a live one or a non-socket."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        directory = exc.filename or parent  # the missing level that could not be made
        raise SocketUnusable(path, f"cannot create {directory} for the socket", exc) from exc
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:  # e.g. EACCES: the directory may not be searched
        raise SocketUnusable(path, "cannot look up the socket", exc) from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    if _is_live(path):
        raise SocketInUse(
            f"another process is already serving on {path} "
            "(is another sidecar running with the same socket?)"
        )
    logger.info("removing the stale socket file %s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(LIVE_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # nobody listens: a leftover of a dead process
    except TimeoutError:
        return True  # a full backlog: someone listens but is busy
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        raise SocketInUse(f"cannot probe the existing socket {path}: {exc}") from exc
    finally:
        probe.close()
    return True


def bind(path: str, *, backlog: int = BACKLOG) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path`` with ``socket_mode()``."""
    mode = socket_mode()
    prepare_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # aiohttp and asyncio leave the mode to the umask; set it before anyone can connect.
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketUnusable(path, "cannot create the socket", exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def remove(path: str, inode: int | None) -> None:
    """Remove the socket file, unless another process has replaced it since we bound it."""
    try:
        if inode is not None and os.lstat(path).st_ino != inode:
            return
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Counted(asyncio.Protocol):
    """Forwards to aiohttp's protocol and reports when the connection is gone."""

    __slots__ = ("_on_lost", "data_received", "detached", "inner")

    def __init__(self, inner: asyncio.Protocol, on_lost: Callable[[_Counted], None]) -> None:
        self.inner = inner
        self._on_lost = on_lost
        self.detached = False
        """Taken off the connection limit (a watch stream, see ``_Listener.detach``)."""
        # The inner protocol's own bound method, not a forwarding one: the event loop
        # calls it once per read, and a frame less per read is ~5% of a RESP GET.
        self.data_received = inner.data_received  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self._on_lost(self)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Listener:
    """The accept loop; quacks like the ``asyncio.Server`` aiohttp's sites keep."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], Any],
        *,
        limit: int,
        on_change: Callable[[int], None] | None,
    ) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._factory = factory
        self._limit = limit
        self._on_change = on_change
        self._active = 0
        self._open: dict[_Counted, None] = {}  # insertion-ordered: oldest first
        self._by_inner: dict[object, _Counted] = {}
        """aiohttp's protocol -> our wrapper, so a handler can ``detach`` its connection."""
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        return self._active

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value
        self._room.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._accept_forever(), name="podcache-accept"
        )

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._sock.close()

    async def wait_closed(self) -> None:
        return None

    def detach(self, inner: object) -> bool:
        """Take the connection served by ``inner`` off the limit (it became a watch stream,
        which has a bound of its own); False if unknown or already detached."""
        protocol = self._by_inner.get(inner)
        if protocol is None or protocol.detached:
            return False
        protocol.detached = True
        self._open.pop(protocol, None)  # busy for good: never a candidate for eviction
        self._active -= 1
        self._changed()
        if self._active < self._limit:
            self._room.set()
        return True

    def _released(self, protocol: _Counted | None = None) -> None:
        if protocol is not None:
            self._by_inner.pop(protocol.inner, None)
            if protocol.detached:
                return  # its slot was given back when it was detached
        self._open.pop(protocol, None)  # type: ignore[arg-type]
        self._active -= 1
        self._changed()
        if self._active < self._limit:
            self._room.set()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._active)

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._active >= self._limit:
                await self._wait_for_room(loop)
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if self._sock.fileno() < 0:
                    return  # closed
                logger.warning("accept failed (%s); retrying", exc)
                await asyncio.sleep(0.1)  # e.g. EMFILE: give connections time to close
                continue
            self._active += 1
            self._changed()
            try:
                await loop.connect_accepted_socket(self._protocol, conn)
            except Exception as exc:
                logger.warning("could not serve an accepted connection: %s", exc)
                conn.close()
                self._released()

    def _protocol(self) -> _Counted:
        protocol = _Counted(self._factory(), self._released)
        self._open[protocol] = None
        self._by_inner[protocol.inner] = protocol
        return protocol

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop accepting until a connection closes; new clients wait in the kernel backlog.

        While someone does wait there, an idle keep-alive connection (no request in
        progress) is closed to make room, oldest first: a client that keeps idle
        connections open must not lock the others out.
        """
        fd = self._sock.fileno()
        while self._active >= self._limit:
            self._room.clear()
            someone_waits = loop.create_future()
            loop.add_reader(fd, _resolve, someone_waits)
            room = asyncio.ensure_future(self._room.wait())
            try:
                await asyncio.wait({room, someone_waits}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                loop.remove_reader(fd)
                room.cancel()
            if self._active >= self._limit and someone_waits.done() and not self._evict_idle():
                await asyncio.sleep(EVICT_RETRY)  # all busy: look again shortly

    def _evict_idle(self) -> bool:
        for protocol in self._open:
            # aiohttp's handler knows whether a request is being served on it.
            if not getattr(protocol.inner, "_request_in_progress", True):
                logger.debug("closing an idle connection to make room for a new one")
                protocol.inner.force_close()  # type: ignore[attr-defined]  # idle: nothing lost
                self._open.pop(protocol)
                return True
        return False


class UnixListenerSite(web.BaseSite):
    """An aiohttp site on a Unix socket with a connection limit (see the module docstring)."""

    def __init__(
        self,
        runner: BaseRunner,
        path: str,
        *,
        max_connections: int,
        on_connections: Callable[[int], None] | None = None,
        backlog: int = BACKLOG,
        protocols: Callable[[web.Server], Callable[[], Any]] = http_protocol.factory,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._path = path
        self._protocols = protocols
        """Given the runner's server, the factory of each connection's protocol."""
        self._max_connections = max_connections
        self._on_connections = on_connections
        self._listener: _Listener | None = None
        self.inode: int | None = None

    @property
    def name(self) -> str:
        return f"http://unix:{self._path}:"

    @property
    def path(self) -> str:
        return self._path

    @property
    def max_connections(self) -> int:
        return self._max_connections

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        self._max_connections = value
        if self._listener is not None:
            self._listener.limit = value

    @property
    def saturated(self) -> bool:
        """At its connection limit: new clients wait in the backlog."""
        listener = self._listener
        return listener is not None and listener.active >= listener.limit

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        sock = bind(self._path, backlog=self._backlog)
        self.inode = os.lstat(self._path).st_ino
        self._listener = _Listener(
            sock,
            self._protocols(server),  # by default: JSON answers for what the parser refuses
            limit=self._max_connections,
            on_change=self._on_connections,
        )
        self._server = self._listener  # type: ignore[assignment]  # BaseSite.stop() closes it
        self._listener.start()

    def detach(self, inner: object) -> bool:
        """Take a connection off ``max_connections`` (see ``_Listener.detach``)."""
        return self._listener is not None and self._listener.detach(inner)

    def remove_socket_file(self) -> None:
        remove(self._path, self.inode)
