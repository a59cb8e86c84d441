"""The cache in the Redis protocol (RESP2/RESP3) on a second Unix socket.

Any Redis client connects with its Unix-socket option and gets the same cache as
the HTTP socket: same ``SidecarState`` (so hot reloads, limits, default TTL and a
swapped backend apply to the next command), same ``Cache`` facade and metrics, and
for Redis the backend's own connections (``podcache.backends.keyspace``).

A plain ``asyncio.Protocol``, no framework: requests are parsed by ``hiredis.Reader``
(C); replies are written by ``resp_wire``. Per connection, commands run strictly in
order, as Redis runs them. The replies of everything parsed from one read go out in
one write, so a pipeline costs one syscall per batch, not per command.

How a command runs: on the memory backend a plain ``GET key``/``SET key value`` is a
plain call (``resp_fast``), so a pipelined batch of them runs in one pass with one
write and one update of the cache metrics. Any other command on the memory backend
never waits either, so its coroutine is driven by hand (``send(None)``) and finishes
without a Task or an event loop turn. Otherwise (Redis) it runs in a Task; commands
that arrive meanwhile wait in the connection's queue. BEWARE: a coroutine driven by
hand has no current Task, so it must not use ``asyncio.timeout``; should one suspend
anyway, ``hand_driven.resumed`` hands it to a Task mid-flight instead of failing.

Bad input, answered as Redis answers it: a frame hiredis refuses, a nested array or
more than ``max_request_bytes`` of one unfinished command gets ``-ERR Protocol
error: ...`` after the replies of the commands before it, then the connection is
closed (Redis does the same: the stream cannot be resynchronised). Nothing stored is
touched. Commands over the limits (key, value) are refused with ``-ERR`` and the
connection stays usable. Inline commands (``PING\\r\\n``, as typed into telnet or nc)
are accepted on a connection whose first byte is not ``*``.

Socket, permissions, connection limit (``limits.maxConnections``, counted apart from
the HTTP socket's) and the idle-connection eviction at that limit are
``socket_site``'s, shared with the HTTP socket. Shutdown: stop accepting, close idle
connections, let commands in progress finish within the grace period, remove the
socket file.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

import hiredis
from prometheus_client import Gauge

from podcache.backends import keyspace as keyspace_mod
from podcache.backends.keyspace import Keyspace
from podcache.backends.memory import MemoryBackend
from podcache.sidecar import hand_driven, resp_fast, socket_site
from podcache.sidecar import resp_commands as commands
from podcache.sidecar import resp_wire as wire
from podcache.sidecar.state import CacheSlot, SidecarState

logger = logging.getLogger(__name__)

MAX_INLINE_BYTES = 64 * 1024
"""Redis's own bound on an inline command line (PROTO_INLINE_MAX_SIZE)."""

_UNDECIDED, _MULTIBULK, _INLINE = 0, 1, 2
_LF = 10

_QUEUE_ANYWAY = frozenset((b"EXEC", b"DISCARD", b"MULTI", b"QUIT", b"RESET", b"WATCH"))


class RespProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: RespServer) -> None:
        self._server = server
        self._state = server.state
        self._reader = hiredis.Reader()
        self._queue: collections.deque[list[bytes]] = collections.deque()
        self._out: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._transport: Any = None  # uvloop's transports do not subclass asyncio's
        self._paused = False
        self._closed = False
        self._mode = _UNDECIDED
        self._inline = b""
        self._pending = 0
        """Upper bound of the bytes of a command not yet complete."""
        self._broken: bytes | None = None
        """The protocol error to answer once the commands before it are answered."""
        self._write_queued = False
        """Whether ``RespServer.write_later`` holds this connection for this loop turn."""
        self.session = commands.Session(
            state=server.state,
            server=server,
            client_id=next(server.ids),
            authenticated=server.password is None,
        )

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
        self._server.closed(self)

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its commands too, or
        # the queue would grow without bound.
        self._paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self._transport.resume_reading()
        if self._task is None:
            self._run()

    def data_received(self, data: bytes) -> None:
        if self._broken is not None or self._closed:
            return  # the connection is being closed: ignore what follows
        if self._mode == _MULTIBULK:
            self._feed(data)
        else:
            self._received_undecided(data)
        if self._task is None and not self._paused:
            self._run()

    # -- for socket_site's idle eviction -------------------------------------------------

    @property
    def _request_in_progress(self) -> bool:
        return self._task is not None or bool(self._queue)

    def force_close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def busy(self) -> bool:
        return self._request_in_progress

    # -- framing ----------------------------------------------------------------------

    def _received_undecided(self, data: bytes) -> None:
        if self._mode == _UNDECIDED:
            self._mode = _MULTIBULK if data[:1] == b"*" else _INLINE
            if self._mode == _MULTIBULK:
                self._feed(data)
                return
        buffer = self._inline + data
        while buffer:
            if buffer[:1] == b"*":  # a real client after all: hiredis from here on
                self._mode = _MULTIBULK
                self._inline = b""
                self._feed(buffer)
                return
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_INLINE_BYTES:
                    self._broken = wire.error("ERR Protocol error: too big inline request")
                buffer_left = buffer
                break
            line, buffer = buffer[:end].rstrip(b"\r"), buffer[end + 1 :]
            args = line.split()
            if args:
                self._queue.append(args)
        else:
            buffer_left = b""
        self._inline = buffer_left

    def _feed(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        completed = False
        try:
            while True:
                frame = reader.gets()
                if frame is False:
                    break
                completed = True
                if type(frame) is list and frame:
                    for arg in frame:
                        if type(arg) is not bytes:
                            self._broken = wire.error(
                                "ERR Protocol error: expected '$', got '"
                                + ("*" if type(arg) is list else "?")
                                + "'"
                            )
                            return
                    self._queue.append(frame)
                elif frame is not None and type(frame) is not list:
                    self._broken = wire.error("ERR Protocol error: expected '*'")
                    return
                # `*0` and `*-1` are no command: Redis ignores them too
        except hiredis.ProtocolError as exc:
            self._broken = wire.error(f"ERR Protocol error: {exc}")
            return
        if completed:
            # What follows the last CRLF belongs to the unfinished command, if any: an
            # underestimate by at most one read, never an overestimate (a refusal of a
            # command within the limit would be the worse error). A read that ends in LF
            # (nearly every one: clients write whole commands) leaves 0 without a search.
            self._pending = 0 if data[-1] == _LF else len(data) - data.rfind(b"\r\n") - 2
            return
        self._pending += len(data)
        limit = self._server.max_request_bytes()
        if self._pending > limit:
            self._broken = wire.error(
                f"ERR Protocol error: a command of more than {limit} bytes "
                "(half of limits.maxInflightBytes)"
            )

    # -- running commands ----------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        out = self._out
        session = self.session
        dispatch = self._dispatch
        # The memory backend's plain GET/SET run without a coroutine, a batch of them in
        # one call counted once (resp_fast); everything else goes through _dispatch.
        fast = self._server.memory_fast(self._state)
        # Only a command through _dispatch can change these (MULTI, AUTH, RESET, HELLO, a
        # write that pauses): they are read again after each such command, not per GET.
        quick = fast is not None and session.multi is None and session.authenticated
        proto = session.proto
        while queue and not self._paused and not self._closed:
            if quick:
                assert fast is not None
                fast.run(queue, out, proto)
                if not queue:
                    break
            args = queue.popleft()
            reply = dispatch(args)
            quick = fast is not None and session.multi is None and session.authenticated
            proto = session.proto
            if type(reply) is bytes:
                out.append(reply)
            else:
                assert not isinstance(reply, bytes)
                slot = self._state.slot
                if not slot.never_blocks:
                    self._start(reply, slot)
                    return  # the Task continues with the queue when it is done
                # Inlined from _start: the memory backend's hot path.
                try:
                    yielded = reply.send(None)
                except StopIteration as stop:
                    out.append(stop.value)
                except Exception as exc:
                    out.append(commands.error_reply(exc))
                else:
                    self._start(reply, slot, yielded=(yielded,))
                    return
            if session.closing:
                break
        # Several replies (a pipelining client) wait for the end of this loop turn
        # (RespServer.write_later); a lone one goes at once, as its client waits for it.
        # The closing checks run only when one of them can apply, and write at once.
        if out and not self._closed and not self._write_queued:
            if len(out) > 1:
                self._write_queued = True
                self._server.write_later(self)
            else:
                self._transport.write(out[0])
                out.clear()
        if session.closing or self._broken is not None or self._server.stopping:
            self._flush()

    def _start(
        self,
        coro: Coroutine[Any, Any, bytes],
        slot: CacheSlot,
        *,
        yielded: tuple[Any] | None = None,
    ) -> None:
        """Run ``coro`` in a Task; the queue waits for it. ``yielded``: what it gave when
        it suspended while driven by hand (then it continues where it stopped)."""
        if yielded is not None:
            self._write_out()
            self._task = asyncio.get_running_loop().create_task(
                self._finish(hand_driven.resumed(coro, yielded[0]), slot)
            )
            return
        self._write_out()  # what came before goes out while this one waits
        slot.inflight += 1  # a backend swap retires this slot only after it is done
        self._task = asyncio.get_running_loop().create_task(self._finish(coro, slot, left=False))

    async def _finish(
        self, coro: Coroutine[Any, Any, bytes], slot: CacheSlot, *, left: bool = True
    ) -> None:
        try:
            reply = await coro
        except Exception as exc:
            reply = commands.error_reply(exc)
        finally:
            if not left:
                slot.leave()
        self._task = None
        if self._closed:
            return
        self._out.append(reply)
        if self.session.closing:
            self._flush()
            return
        self._run()

    def write_queued(self) -> None:
        """``RespServer.write_later``'s turn: write what ``_run`` answered."""
        self._write_queued = False
        self._write_out()

    def _write_out(self) -> None:
        out = self._out
        if out and not self._closed:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _flush(self) -> None:
        """Write the replies so far; close if QUIT, a protocol error or a shutdown is due
        and nothing is left to answer (so never while a command is about to start)."""
        self._write_out()
        if self._closed:
            return
        transport = self._transport
        if self.session.closing:
            transport.close()
        elif self._broken is not None and not self._queue and self._task is None:
            transport.write(self._broken)
            transport.close()
        elif self._server.stopping and not self._queue and self._task is None:
            transport.close()

    def _dispatch(self, args: list[bytes]) -> commands.Reply:
        session = self.session
        name = args[0]
        entry = commands.COMMANDS.get(name)
        if entry is None:
            upper = name.upper()
            entry = commands.COMMANDS.get(upper)
            if entry is None or session.multi is not None:
                special = self._special(upper, args)
                if special is not None:
                    return special
            if entry is None:
                session.multi_failed = session.multi is not None
                return _unknown(args)
        if session.multi is not None:
            if not _arity_ok(entry, args):
                session.multi_failed = True
                return _wrong_arity(entry)
            session.multi.append(args)
            return wire.QUEUED
        if not _arity_ok(entry, args):
            return _wrong_arity(entry)
        if not session.authenticated and "no-auth" not in entry.flags:
            return wire.error("NOAUTH Authentication required.")
        try:
            return entry.handler(session, args)
        except Exception as exc:
            return commands.error_reply(exc)

    def _special(self, upper: bytes, args: list[bytes]) -> commands.Reply | None:
        """MULTI, EXEC, DISCARD, QUIT, RESET; inside MULTI anything else is queued."""
        session = self.session
        if session.multi is not None and upper not in _QUEUE_ANYWAY:
            return None  # a known command: queued by the caller
        if not session.authenticated and upper in (b"MULTI", b"EXEC", b"DISCARD"):
            return wire.error("NOAUTH Authentication required.")
        if upper == b"MULTI":
            if len(args) != 1:
                return wire.error("ERR wrong number of arguments for 'multi' command")
            if session.multi is not None:
                return wire.error("ERR MULTI calls can not be nested")
            session.multi, session.multi_failed = [], False
            return wire.OK
        if upper == b"EXEC":
            if session.multi is None:
                return wire.error("ERR EXEC without MULTI")
            queued, failed = session.multi, session.multi_failed
            session.multi, session.multi_failed = None, False
            if failed:
                return wire.error("EXECABORT Transaction discarded because of previous errors.")
            return self._exec(queued)
        if upper == b"DISCARD":
            if session.multi is None:
                return wire.error("ERR DISCARD without MULTI")
            session.multi, session.multi_failed = None, False
            return wire.OK
        if upper == b"WATCH":
            if session.multi is not None:
                return wire.error("ERR WATCH inside MULTI is not allowed")
            return None
        if upper == b"QUIT":
            session.closing = True
            return wire.OK
        if upper == b"RESET":
            session.multi, session.multi_failed = None, False
            session.proto, session.name = 2, None
            session.authenticated = self._server.password is None
            return wire.simple("RESET")
        return None

    async def _exec(self, queued: list[list[bytes]]) -> bytes:
        """The queued commands in order. On the memory backend none waits, so nothing
        else runs in between; on Redis other connections' commands may interleave."""
        replies: list[bytes] = []
        for args in queued:
            reply = self._dispatch(args)
            if type(reply) is bytes:
                replies.append(reply)
                continue
            assert not isinstance(reply, bytes)
            try:
                replies.append(await reply)
            except Exception as exc:
                replies.append(commands.error_reply(exc))
        return wire.array(replies)


def _arity_ok(entry: commands.Command, args: list[bytes]) -> bool:
    arity = entry.arity
    return len(args) == arity if arity > 0 else len(args) >= -arity


def _wrong_arity(entry: commands.Command) -> bytes:
    return wire.error(f"ERR wrong number of arguments for '{entry.name}' command")


def _unknown(args: list[bytes]) -> bytes:
    # Redis's wording, including the trailing space and the 128-byte caps.
    shown = ""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += "'" + arg.decode(errors="replace")[: 128 - len(shown)] + "' "
    name = args[0].decode(errors="replace")[:128]
    return wire.error(f"ERR unknown command '{name}', with args beginning with: {shown}")


class RespServer:
    """The listening socket and its connections."""

    def __init__(self, state: SidecarState, *, path: str, password: str | None = None) -> None:
        self.state = state
        self.path = path
        self.password = password
        self.ids = itertools.count(1)
        self.started = time.monotonic()
        self.stopping = False
        self.inode: int | None = None
        self._listener: socket_site._Listener | None = None
        self._open: set[RespProtocol] = set()
        self._gone = asyncio.Event()
        self._keyspace: tuple[CacheSlot, Keyspace] | None = None
        self._fast: tuple[CacheSlot, resp_fast.MemoryFast | None] | None = None
        self._writers: list[RespProtocol] = []
        """Connections whose replies go out at the end of this loop turn (``write_later``)."""
        self._gauge = Gauge(
            "resp_connections",
            "Redis-protocol socket connections open now",
            namespace=state.metrics.namespace,
            registry=state.metrics.registry,
        )

    @property
    def connections(self) -> int:
        return len(self._open)

    def write_later(self, protocol: RespProtocol) -> None:
        """Write ``protocol``'s replies after every connection that was readable in this
        loop turn has run its commands, as redis-server does before it sleeps.

        Why: a reply written as soon as it is ready wakes the client, which then sleeps
        again before the next connection's reply wakes it once more; at 32 connections
        with ``-P 16`` those wake-ups (the write system calls) were half of the
        sidecar's CPU. Written together, the client wakes once per turn and finds them
        all. Order is kept: every path writes ``_out`` whole, so a reply written early
        by another path leaves nothing for this one."""
        if not self._writers:
            asyncio.get_running_loop().call_soon(self._write_all)
        self._writers.append(protocol)

    def _write_all(self) -> None:
        writers, self._writers = self._writers, []
        for protocol in writers:
            protocol.write_queued()

    @property
    def max_connections(self) -> int:
        return self._listener.limit if self._listener is not None else 0

    @max_connections.setter
    def max_connections(self, value: int) -> None:
        if self._listener is not None:
            self._listener.limit = value

    def max_request_bytes(self) -> int:
        limits = self.state.config.limits
        return max(limits.max_inflight_bytes // 2, limits.max_value_bytes + 64 * 1024)

    def keyspace(self, slot: CacheSlot) -> Keyspace:
        """The keyspace operations of ``slot``'s backend (rebuilt after a backend swap)."""
        found = self._keyspace
        if found is None or found[0] is not slot:
            found = self._keyspace = (slot, keyspace_mod.for_backend(slot.cache.backend))
        return found[1]

    def memory_fast(self, state: SidecarState) -> resp_fast.MemoryFast | None:
        """The fast GET/SET of the current slot's memory backend, its limits read for
        one batch; None on another backend (rebuilt after a backend swap)."""
        slot = state.slot
        found = self._fast
        if found is None or found[0] is not slot:
            backend = slot.cache.backend
            fast = (
                resp_fast.MemoryFast(backend, slot.cache.metrics)
                if type(backend) is MemoryBackend
                else None
            )
            found = self._fast = (slot, fast)
        fast = found[1]
        if fast is not None and not fast.prepare(state):  # a reload's limits, a stop
            return None
        return fast

    async def start(self) -> None:
        sock = socket_site.bind(self.path)  # refuses a live socket, sets mode 0660
        self.inode = os.lstat(self.path).st_ino
        self._listener = socket_site._Listener(
            sock,
            lambda: RespProtocol(self),
            limit=self.state.config.limits.max_connections,
            on_change=None,
        )
        self._listener.start()

    def opened(self, protocol: RespProtocol) -> None:
        self._open.add(protocol)
        self._gauge.set(len(self._open))

    def closed(self, protocol: RespProtocol) -> None:
        self._open.discard(protocol)
        self._gauge.set(len(self._open))
        if not self._open:
            self._gone.set()

    async def stop(self, grace: float) -> None:
        """Stop accepting; close idle connections now and busy ones when their command
        is done, or after ``grace`` seconds; remove the socket file. Idempotent."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for protocol in list(self._open):
            if not protocol.busy:
                protocol.force_close()
        if self._open:
            self._gone.clear()
            try:
                async with asyncio.timeout(grace):
                    await self._gone.wait()
            except TimeoutError:
                logger.warning(
                    "%d Redis-protocol connections still busy after %gs; closing them",
                    len(self._open),
                    grace,
                )
                for protocol in list(self._open):
                    protocol.force_close()
        socket_site.remove(self.path, self.inode)
