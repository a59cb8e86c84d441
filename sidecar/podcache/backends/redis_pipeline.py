"""An auto-pipelined Redis connection for the cache's hot path (issue 11).

Why this exists beside redis-py and hiredis: redis-py's asyncio client gives every
command a pooled connection of its own and a full round trip, and with a socket
timeout set it wraps each read and write in ``asyncio.timeout``/``wait_for`` (a Task
per command). Measured on the sidecar (bench/bench_sidecar.py) that is two thirds of
a cache GET's CPU, and concurrent requests never share a write. hiredis is only a
reply parser. Neither multiplexes: this module does, and nothing more. Every command
issued during one event-loop tick goes out in one write on one connection; replies are
parsed by ``hiredis.Reader`` and matched to their callers in order (Redis answers a
connection's commands in the order it received them).

What it does itself, and what it delegates:

- One deadline mechanism for everything in flight: each command carries the loop
  time by which it must be answered, and one timer per connection looks at the
  oldest. If the oldest is overdue, Redis is stalled or gone: the connection is
  dropped and every command on it fails with ``BackendUnavailable`` (so every waiter
  gets its 503 within the operation timeout and none hangs). No per-command timer.
- Reconnects by itself: a lost connection fails what was written on it (whether it
  ran is unknown, exactly as with redis-py) and the next command connects again.
  Commands issued while connecting wait for the connection, under their deadline.
- AUTH (password or ACL user, the password file re-read on every connect), SELECT
  and CLIENT SETNAME are sent on each new connection before anything else.
- TLS with the same CA, client certificate and host-name check as redis-py's
  connections (``redis_connection.tls_kwargs`` rules).
- Sentinel: the primary's address is asked from the sentinels through redis-py's
  ``Sentinel.discover_master`` on every connect; a ``READONLY`` reply (a demoted
  primary) drops the connection, so the next command finds the new primary.
- Cluster is NOT handled: the backend keeps redis-py's ``RedisCluster`` (slot map,
  MOVED/ASK) for it, and uses this connection only for standalone and Sentinel.
- Bounded in flight: beyond ``max_inflight`` commands a call fails at once with
  ``BackendUnavailable`` (a 503) instead of queueing without limit.
- Lua scripts by EVALSHA, falling back to EVAL on ``NOSCRIPT`` (Redis restarted or
  SCRIPT FLUSH); EVAL also caches the script, so the next EVALSHA works.

Who uses it: the Redis backend's GET/SET/SET NX/compare-and-set/DEL and PING, and the
lock scripts (``RedisBackend.pipeline``). Anything else on the hot path (the RESP
socket, a near cache) should share that one, not open a second: one connection
carries a 2-core sidecar's load with room to spare (~3 us of Redis CPU per GET at 32
concurrent requests, bench/bench_sidecar.py), and a single connection is also what
keeps one client's writes in order. Transactions (MULTI/EXEC), blocking commands and
pub/sub must never go through it: they would hold up or mix with everyone's replies.

Beware: a command whose caller was cancelled still goes to Redis if it was queued
(its reply is read and dropped), so a cancelled write may still be applied, as with
any network client. Error replies are ``ReplyError`` (a ``BackendUnavailable``), so a
caller that does not look at them maps them to a 503 like the backend always did.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
from redis.connection import parse_url

from podcache.backends import redis_connection
from podcache.config import RedisSettings
from podcache.errors import BackendUnavailable, ConfigError

logger = logging.getLogger(__name__)

MAX_INFLIGHT = 10_000
"""Commands queued or unanswered on one connection before calls are refused: far above
what the sidecar's connection limit can issue, low enough that a stalled Redis cannot
make the queue grow without bound."""

BIG_ARG = 64 * 1024
"""Arguments at least this long are written as their own buffer, not copied into the
command's bytes (a 1 MiB value is not copied once more on its way out)."""

Arg = bytes | str | int | float
_Entry = tuple["asyncio.Future[Any]", float, "bytes | tuple[bytes, ...]"]
"""A command in flight: its caller's future, its deadline (loop time), its encoded bytes."""


class ReplyError(BackendUnavailable):
    """Redis answered with an error (``-ERR ...``); ``reply`` is its text."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def pack(args: Sequence[Arg]) -> bytes | tuple[bytes, ...]:
    """One command in RESP: bytes, or chunks when an argument is big (see ``BIG_ARG``)."""
    parts: list[bytes] = [b"*%d\r\n" % len(args)]
    chunks: list[bytes] | None = None
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        if len(data) >= BIG_ARG:
            chunks = chunks if chunks is not None else []
            parts.append(b"$%d\r\n" % len(data))
            chunks.append(b"".join(parts))
            chunks.append(data)
            parts = [b"\r\n"]
        else:
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    if chunks is None:
        return b"".join(parts)
    chunks.append(b"".join(parts))
    return tuple(chunks)


class _Link(asyncio.Protocol):
    """One TCP/Unix/TLS connection: writes commands, matches replies to futures in order."""

    def __init__(self, owner: PipelinedConnection) -> None:
        self.owner = owner
        self.transport: Any = None  # uvloop's transports do not subclass asyncio.Transport
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.sent: collections.deque[_Entry] = collections.deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        sent = self.sent
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(BackendUnavailable(f"redis sent an unparsable reply: {exc}"))
                return
            if reply is False:  # no complete reply yet (RESP2 has no boolean replies)
                break
            if not sent:
                self.abort(BackendUnavailable("redis sent a reply nobody asked for"))
                return
            future = sent.popleft()[0]
            if isinstance(reply, ReplyError):
                if not future.done():
                    future.set_exception(reply)
                if reply.reply.startswith(("READONLY", "MASTERDOWN")):
                    # A demoted or cut-off primary (a failover): leave it now, so that no
                    # more commands go to it, and reconnect (under Sentinel the new primary
                    # is asked for). What was in flight on it fails: the failover window.
                    self.abort(BackendUnavailable(f"redis answered {reply.reply[:40]!r}"))
                    return
            elif not future.done():  # done: its caller was cancelled; drop the reply
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = f": {exc}" if exc is not None else ""
        self.fail_sent(BackendUnavailable(f"the connection to redis was lost{reason}"))
        self.owner.link_lost(self)

    def fail_sent(self, error: BackendUnavailable) -> None:
        sent, self.sent = self.sent, collections.deque()
        for future, _, _ in sent:
            if not future.done():
                future.set_exception(error)

    def abort(self, error: BackendUnavailable) -> None:
        """Fail everything sent on this connection and drop it (its replies cannot be trusted)."""
        self.fail_sent(error)
        self.owner.link_lost(self)  # at once: nothing more may be written on this one
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def write(self, entries: Sequence[_Entry]) -> None:
        self.sent.extend(entries)
        if len(entries) == 1 and isinstance(entries[0][2], bytes):
            self.transport.write(entries[0][2])
            return
        chunks: list[bytes] = []
        big = False
        for _, _, payload in entries:
            if isinstance(payload, bytes):
                chunks.append(payload)
            else:
                chunks.extend(payload)
                big = True
        if big:
            self.transport.writelines(chunks)
        else:
            self.transport.write(b"".join(chunks))


class PipelinedConnection:
    """Commands from all callers multiplexed on one Redis connection (see the module doc).

    ``execute(*args)`` returns a future of the reply; awaiting it raises
    ``BackendUnavailable`` on a timeout or outage and ``ReplyError`` on an error reply.
    """

    def __init__(
        self,
        settings: RedisSettings,
        *,
        max_inflight: int = MAX_INFLIGHT,
        client_name: str = "podcache-pipeline",
    ) -> None:
        if settings.cluster is not None:
            raise ConfigError("config.cluster", "the pipelined connection serves no cluster")
        self.settings = settings
        self.timeout = settings.operation_timeout
        self.max_inflight = max_inflight
        self.client_name = client_name
        self._ssl = ssl_context(settings)
        self._link: _Link | None = None
        self._unsent: collections.deque[_Entry] = collections.deque()
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sentinel: Any = None  # redis-py's Sentinel, created on first use
        self.connects = 0
        """Connections opened so far (tests and debugging)."""
        self.on_connect: Callable[[], None] | None = None
        """Called on every new connection (the near cache drops its copies: the new one
        may lead to another server, e.g. the new primary after a failover)."""

    # -- commands ---------------------------------------------------------------------

    def execute(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command; it is written with everything else queued in this loop tick."""
        if self._closed:
            raise BackendUnavailable("the redis pipeline has been closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        link = self._link
        inflight = len(self._unsent) + (len(link.sent) if link is not None else 0)
        if inflight >= self.max_inflight:
            raise BackendUnavailable(
                f"{inflight} redis commands in flight on one connection; retry shortly"
            )
        future: asyncio.Future[Any] = loop.create_future()
        self._unsent.append((future, loop.time() + self.timeout, pack(args)))
        if link is not None:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif self._connecting is None:
            self._connecting = loop.create_task(self._connect(), name="podcache-redis-pipeline")
        if self._timer is None:
            self._arm()
        return future

    async def call(self, *args: Arg) -> Any:
        """``execute`` awaited (for callers that prefer a coroutine)."""
        return await self.execute(*args)

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA of ``script``, or EVAL when Redis lost its script cache (NOSCRIPT)."""
        try:
            return await self.execute(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not exc.reply.startswith("NOSCRIPT"):
                raise
        return await self.execute(b"EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connection; queued and unanswered commands fail. Idempotent."""
        self._closed = True
        error = BackendUnavailable("the redis pipeline has been closed")
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_unsent(error)
        link, self._link = self._link, None
        if link is not None:
            link.abort(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            with contextlib.suppress(Exception):
                await sentinel.aclose()

    # -- writing ----------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        link = self._link
        if link is None or not self._unsent:
            return
        entries = list(self._unsent)
        self._unsent.clear()
        link.write(entries)

    def _fail_unsent(self, error: BackendUnavailable) -> None:
        unsent, self._unsent = self._unsent, collections.deque()
        for future, _, _ in unsent:
            if not future.done():
                future.set_exception(error)

    def _connect_failed(self, started: float, error: BackendUnavailable) -> None:
        """Fail what waited for the failed attempt; what came later gets an attempt of its own.

        A command queued a moment before an attempt timed out (e.g. the first one after
        a paused Redis resumed) would otherwise fail without Redis ever being asked.
        """
        assert self._loop is not None
        while self._unsent and self._unsent[0][1] - self.timeout <= started:
            future = self._unsent.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if self._unsent and not self._closed:
            self._connecting = self._loop.create_task(self._connect())

    def link_lost(self, link: _Link) -> None:
        if link is self._link:
            self._link = None
            if self._unsent and not self._closed and self._connecting is None:
                loop = self._loop or asyncio.get_running_loop()
                self._connecting = loop.create_task(self._connect())

    # -- the one deadline timer -----------------------------------------------------------

    def _oldest_deadline(self) -> float | None:
        link = self._link
        deadlines = [entries[0][1] for entries in (link.sent if link else (), self._unsent)
                     if entries]
        return min(deadlines) if deadlines else None

    def _arm(self) -> None:
        deadline = self._oldest_deadline()
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        error = BackendUnavailable(f"redis did not answer within {self.timeout:g}s")
        link = self._link
        if link is not None and link.sent and link.sent[0][1] <= now:
            # The oldest command is overdue: Redis is stalled or unreachable. Every later
            # command on this connection would wait behind it, so all of them fail now.
            self._link = None
            link.abort(error)
        while self._unsent and self._unsent[0][1] <= now:
            # Still unwritten after its whole budget: the connect is hanging.
            future = self._unsent.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if self._link is None and self._unsent and self._connecting is None and not self._closed:
            self._connecting = self._loop.create_task(self._connect())
        self._arm()

    # -- connecting -----------------------------------------------------------------------

    async def _connect(self) -> None:
        assert self._loop is not None
        started = self._loop.time()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                link = await self._open()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connecting = None
            what = exc if isinstance(exc, BackendUnavailable) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, TimeoutError):
                what = f"no connection within {self.settings.connect_timeout:g}s"
            self._connect_failed(started, BackendUnavailable(f"cannot connect to redis: {what}"))
            return
        self._connecting = None
        if self._closed:
            link.abort(BackendUnavailable("the redis pipeline has been closed"))
            return
        self._link = link
        self.connects += 1
        if self.on_connect is not None:
            self.on_connect()  # before anything is written or read on the new connection
        self._flush()

    async def _open(self) -> _Link:
        link = _Link(self)
        db = await open_transport(
            self.settings, lambda: link, ssl_context=self._ssl, primary=self.primary_address
        )
        try:
            await self._handshake(link, db)
        except BaseException:
            link.abort(BackendUnavailable("handshake failed"))
            raise
        return link

    async def _handshake(self, link: _Link, db: int) -> None:
        loop = asyncio.get_running_loop()
        commands: list[tuple[Arg, ...]] = []
        password = redis_connection.read_password(self.settings)
        if password is not None:
            if self.settings.username is not None:
                commands.append((b"AUTH", self.settings.username, password))
            else:
                commands.append((b"AUTH", password))
        if db:
            commands.append((b"SELECT", db))
        commands.append((b"CLIENT", b"SETNAME", self.client_name))
        deadline = loop.time() + self.settings.connect_timeout
        entries: list[_Entry] = [(loop.create_future(), deadline, pack(c)) for c in commands]
        link.write(entries)
        for (future, _, _), command in zip(entries, commands, strict=True):
            try:
                await future
            except ReplyError as exc:
                raise BackendUnavailable(f"redis refused {command[0]!r}: {exc.reply}") from exc

    async def primary_address(self) -> tuple[str, int]:
        """The Sentinel primary's address, asked now (also for the near cache's channel)."""
        from redis.exceptions import RedisError

        from podcache.backends import redis_topologies

        assert self.settings.sentinel is not None
        if self._sentinel is None:
            self._sentinel = redis_topologies.sentinel_manager(self.settings)
        try:
            host, port = await self._sentinel.discover_master(self.settings.sentinel.master_name)
        except RedisError as exc:
            raise BackendUnavailable(f"no primary from the sentinels: {exc}") from exc
        return str(host), int(port)


async def open_transport(
    settings: RedisSettings,
    factory: Callable[[], asyncio.Protocol],
    *,
    ssl_context: ssl.SSLContext | None,
    primary: Callable[[], Awaitable[tuple[str, int]]],
) -> int:
    """Connect a protocol to the Redis ``settings`` name (``primary`` asks the sentinels);
    return the database number to SELECT. Shared with ``near_cache``'s invalidation
    channel so that both connections always reach the same server the same way."""
    loop = asyncio.get_running_loop()
    db = 0
    if settings.sentinel is not None:
        host, port = await primary()
        path = None
    else:
        if settings.url is None:
            raise ConfigError("config.url", "required without sentinel or cluster")
        # redis-py's own URL rules (unix://, ?db=, /db), so both connections agree.
        parsed: dict[str, Any] = parse_url(settings.url)  # type: ignore[no-untyped-call]
        db = int(parsed.get("db") or 0)
        path = parsed.get("path")
        host, port = parsed.get("host", "localhost"), int(parsed.get("port", 6379))
    if path is not None:
        await loop.create_unix_connection(factory, path)
    else:
        await loop.create_connection(
            factory, host, port, ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None,
        )
    return db


class Script:
    """A Lua script and its SHA1, for ``PipelinedConnection.run_script``."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()  # Redis names scripts by SHA1


def ssl_context(settings: RedisSettings) -> ssl.SSLContext | None:
    """The TLS context redis-py would build from the same settings (or None without TLS)."""
    url = settings.url or ""
    if not (settings.tls.enabled or url.startswith("rediss://")):
        return None
    options = redis_connection.tls_kwargs(settings)  # also checks the files exist
    context = ssl.create_default_context(cafile=options["ssl_ca_certs"])
    if options["ssl_certfile"] is not None:
        context.load_cert_chain(options["ssl_certfile"], options["ssl_keyfile"])
    context.check_hostname = options["ssl_check_hostname"]
    context.verify_mode = options["ssl_cert_reqs"]
    return context
