"""The commands of the Redis-protocol socket, with Redis's own reply shapes and errors.

Each command is a function ``(session, args) -> reply`` in ``COMMANDS``: connection
commands return encoded bytes at once; data commands are coroutines returning them.
Arity is checked before the call from the table (positive = exact, negative =
minimum, counting the name, as in Redis's command table), so a handler may index its
arguments freely. Handlers raise; ``error_reply`` turns any exception into the error
a Redis client expects (``resp_server`` calls it), so the connection always stays
usable.

Semantics underneath are the HTTP API's: keys go through the same validation
(``limits.maxKeyBytes``, UTF-8, never empty, the reserved ``podcache:`` space), values
through ``limits.maxValueBytes``, GET/SET/DEL through the ``Cache`` facade (its
metrics, the backend's hot-path connection), the rest through
``podcache.backends.keyspace``. A SET without a TTL gets the CacheConfig's default;
PERSIST (and GETEX ... PERSIST) takes a key's TTL away only where the config allows it
(``limits.allowPersist``, read per command so a reload applies to the next one), and
is refused, naming that setting, rather than silently ignored elsewhere.

Error texts were taken from redis-server 7.0 and are compared with a real one in
``tests/sidecar/test_resp_commands.py``; keep them byte for byte.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from podcache import validation
from podcache.backends import keyspace as keyspace_mod
from podcache.backends.keyspace import ExpireCondition, Keyspace, KeyspaceError, SetCondition
from podcache.errors import (
    BackendUnavailable,
    CacheMiss,
    InvalidKey,
    InvalidTTL,
    InvalidValue,
    ValueTooLarge,
)
from podcache.sidecar import resp_wire as wire

if TYPE_CHECKING:
    from podcache.sidecar.resp_server import RespServer
    from podcache.sidecar.state import SidecarState

logger = logging.getLogger(__name__)

REDIS_VERSION = "7.0.0"
"""What HELLO and INFO report as ``redis_version``: the command set and error texts
are Redis 7.0's, and some clients pick features by this number."""

Reply = bytes | Coroutine[Any, Any, bytes]
Handler = Callable[["Session", list[bytes]], Reply]


class RespError(Exception):
    """An error reply, its text starting with the code (``ERR``, ``NOAUTH``, ...)."""


SYNTAX = "ERR syntax error"
NOT_INTEGER = keyspace_mod.NOT_INTEGER


@dataclasses.dataclass
class Session:
    """One client connection's state (what Redis keeps in its ``client`` struct)."""

    state: SidecarState
    server: RespServer
    """Its server: the connection count, the password, the keyspaces."""
    client_id: int
    proto: int = 2
    name: bytes | None = None
    lib_name: bytes = b""
    lib_ver: bytes = b""
    authenticated: bool = True
    multi: list[list[bytes]] | None = None
    """Commands queued since MULTI; None outside a transaction."""
    multi_failed: bool = False
    """A queued command was refused (unknown, wrong arity): EXEC aborts."""
    closing: bool = False
    """QUIT: close once the reply is written."""

    def keyspace(self) -> Keyspace:
        return self.server.keyspace(self.state.slot)


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    arity: int
    flags: tuple[str, ...] = ()
    first_key: int = 0
    last_key: int = 0
    step: int = 0


# -- helpers ------------------------------------------------------------------------


def error_reply(exc: BaseException) -> bytes:
    """The error a Redis client gets for ``exc`` (never raises)."""
    if isinstance(exc, RespError | KeyspaceError):
        return wire.error(str(exc))
    if isinstance(exc, InvalidKey):
        return wire.error(f"ERR invalid key: {exc}")
    if isinstance(exc, ValueTooLarge):
        return wire.error(f"ERR value too large: {exc}")
    if isinstance(exc, InvalidTTL):
        return wire.error(f"ERR invalid expire time: {exc}")
    if isinstance(exc, InvalidValue):
        return wire.error(f"ERR {exc}")
    if isinstance(exc, BackendUnavailable):
        # TRYAGAIN: a code clients know as "retry later", as a Redis Cluster says it.
        return wire.error(f"TRYAGAIN backend unavailable: {exc}")
    logger.error("RESP command failed", exc_info=exc)
    return wire.error(f"ERR internal error ({type(exc).__name__}), see the sidecar's log")


def key_of(session: Session, raw: bytes) -> str:
    """A client's key as the cache's key: the HTTP API's rules, Redis-worded errors."""
    limit = session.state.config.limits.max_key_bytes
    if len(raw) > limit:
        raise RespError(f"ERR invalid key: {len(raw)} bytes, limits.maxKeyBytes is {limit}")
    try:
        key = raw.decode()
    except UnicodeDecodeError:
        raise RespError("ERR invalid key: keys must be valid UTF-8") from None
    if not raw or raw.startswith(_RESERVED):
        validation.check_key(key)  # raises InvalidKey with the reason
    return key


_RESERVED = validation.RESERVED_KEY_PREFIX.encode()


def value_of(session: Session, raw: bytes) -> bytes:
    limit = session.state.config.limits.max_value_bytes
    if len(raw) > limit:
        raise RespError(f"ERR value too large: {len(raw)} bytes, limits.maxValueBytes is {limit}")
    return raw


def integer_of(raw: bytes, error: str = NOT_INTEGER) -> int:
    try:
        return keyspace_mod.parse_int(raw)
    except KeyspaceError:
        raise RespError(error) from None


def default_ms(session: Session) -> int:
    return max(1, round(session.state.default_ttl * 1000))


def persist_allowed(session: Session) -> bool:
    return session.state.config.limits.allow_persist


def _unix_ms() -> int:
    return time.time_ns() // 1_000_000


def _ttl_ms(unit: bytes, raw: bytes, command: str) -> int:
    """EX/PX/EXAT/PXAT's argument as milliseconds from now (at least 1)."""
    number = integer_of(raw)
    invalid = RespError(f"ERR invalid expire time in '{command}' command")
    if number <= 0:
        raise invalid
    if unit in (b"EX", b"EXAT"):
        if number > keyspace_mod.INT64_MAX // 1000:
            raise invalid
        number *= 1000
    if unit in (b"EXAT", b"PXAT"):
        # An instant already past: Redis stores and expires at once; 1 ms is the same.
        number = max(1, number - _unix_ms())
    return number


async def _counted(session: Session, operation: str, call: Coroutine[Any, Any, Any]) -> Any:
    """Await a keyspace call, counting it in the seed's metrics under its own name."""
    metrics = session.state.cache.metrics
    started = time.perf_counter()
    status = "error"  # also Redis's own refusals (not an integer...): as the facade counts
    try:
        result = await call
        status = "ok"
        return result
    finally:
        metrics.requests.labels(operation, status).inc()
        metrics.duration.labels(operation).observe(time.perf_counter() - started)


# -- connection ---------------------------------------------------------------------


def ping(session: Session, args: list[bytes]) -> Reply:
    if len(args) == 1:
        return wire.PONG
    if len(args) == 2:
        return wire.bulk(args[1])
    raise RespError("ERR wrong number of arguments for 'ping' command")


def echo(session: Session, args: list[bytes]) -> Reply:
    return wire.bulk(args[1])


def _check_password(session: Session, username: bytes, password: bytes) -> None:
    expected = session.server.password
    if expected is None:
        if username == b"default":
            return  # Redis accepts any password for "default" when none is set
        raise RespError("WRONGPASS invalid username-password pair or user is disabled.")
    if username != b"default" or password.decode(errors="replace") != expected:
        raise RespError("WRONGPASS invalid username-password pair or user is disabled.")
    session.authenticated = True


def auth(session: Session, args: list[bytes]) -> Reply:
    if len(args) not in (2, 3):
        raise RespError(SYNTAX)
    if len(args) == 2 and session.server.password is None:
        raise RespError(
            "ERR AUTH <password> called without any password configured for the default "
            "user. Are you sure your configuration is correct?"
        )
    username, password = (b"default", args[1]) if len(args) == 2 else (args[1], args[2])
    _check_password(session, username, password)
    return wire.OK


def hello(session: Session, args: list[bytes]) -> Reply:
    proto = session.proto
    index = 1
    if len(args) > 1:
        try:
            proto = keyspace_mod.parse_int(args[1])
        except KeyspaceError:
            raise RespError("ERR Protocol version is not an integer or out of range") from None
        if proto not in (2, 3):
            raise RespError("NOPROTO unsupported protocol version")
        index = 2
    name = None
    while index < len(args):
        option = args[index].upper()
        if option == b"AUTH" and index + 2 < len(args):
            _check_password(session, args[index + 1], args[index + 2])
            index += 3
        elif option == b"SETNAME" and index + 1 < len(args):
            name = _client_name(args[index + 1])
            index += 2
        else:
            option_text = args[index].decode(errors="replace")
            raise RespError(f"ERR Syntax error in HELLO option '{option_text}'")
    if not session.authenticated:
        raise RespError(
            "NOAUTH HELLO must be called with the client already authenticated, "
            "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
            "authenticate the client and select the RESP protocol version at the "
            "same time"
        )
    if name is not None:
        session.name = name or None
    session.proto = proto
    return wire.mapping(
        {
            wire.bulk(b"server"): wire.bulk(b"redis"),
            wire.bulk(b"version"): wire.bulk(REDIS_VERSION.encode()),
            wire.bulk(b"proto"): wire.integer(proto),
            wire.bulk(b"id"): wire.integer(session.client_id),
            wire.bulk(b"mode"): wire.bulk(b"standalone"),
            wire.bulk(b"role"): wire.bulk(b"master"),
            wire.bulk(b"modules"): wire.EMPTY_ARRAY,
        },
        proto,
    )


def select(session: Session, args: list[bytes]) -> Reply:
    if integer_of(args[1]) != 0:
        raise RespError("ERR DB index is out of range")  # one keyspace per tenant
    return wire.OK


def _client_name(raw: bytes) -> bytes:
    if any(byte <= 32 or byte >= 127 for byte in raw):
        raise RespError("ERR Client names cannot contain spaces, newlines or special characters.")
    return raw


def client(session: Session, args: list[bytes]) -> Reply:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        session.name = _client_name(args[2]) or None
        return wire.OK
    if sub == b"GETNAME" and len(args) == 2:
        return wire.bulk_or_null(session.name, session.proto)
    if sub == b"ID" and len(args) == 2:
        return wire.integer(session.client_id)
    if sub == b"SETINFO" and len(args) == 4:
        attribute = args[2].upper()
        if attribute == b"LIB-NAME":
            session.lib_name = _client_name(args[3])
        elif attribute == b"LIB-VER":
            session.lib_ver = _client_name(args[3])
        else:
            raise RespError(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
        return wire.OK
    if sub == b"INFO" and len(args) == 2:
        return wire.verbatim(_client_line(session) + b"\n", session.proto)
    if sub in (b"SETNAME", b"GETNAME", b"ID", b"SETINFO", b"INFO"):
        name = sub.decode().lower()
        raise RespError(f"ERR wrong number of arguments for 'client|{name}' command")
    raise RespError(
        f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CLIENT HELP."
    )


def _client_line(session: Session) -> bytes:
    return b"id=%d name=%b db=0 resp=%d lib-name=%b lib-ver=%b" % (
        session.client_id,
        session.name or b"",
        session.proto,
        session.lib_name,
        session.lib_ver,
    )


def config(session: Session, args: list[bytes]) -> Reply:
    """``CONFIG GET`` answers no parameters (what Redis answers for unknown ones), so a
    client or redis-benchmark that reads settings at connect time carries on; nothing
    of Redis's configuration applies to the sidecar, so SET/RESETSTAT/REWRITE refuse."""
    sub = args[1].upper()
    if sub == b"GET" and len(args) >= 3:
        return wire.mapping({}, session.proto)
    if sub in (b"SET", b"RESETSTAT", b"REWRITE"):
        raise RespError(f"ERR CONFIG {sub.decode()} is not supported by the podcache sidecar")
    if sub == b"GET":
        raise RespError("ERR wrong number of arguments for 'config|get' command")
    raise RespError(
        f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CONFIG HELP."
    )


def command(session: Session, args: list[bytes]) -> Reply:
    proto = session.proto
    if len(args) == 1:
        return wire.array(_command_info(entry, proto) for entry in _UNIQUE_COMMANDS)
    sub = args[1].upper()
    if sub == b"COUNT":
        return wire.integer(len(_UNIQUE_COMMANDS))
    if sub == b"INFO":
        found = (COMMANDS.get(name.upper()) for name in args[2:])
        return wire.array(
            _command_info(entry, proto) if entry else wire.null(proto) for entry in found
        )
    if sub == b"DOCS":
        # Docs are optional for clients (redis-cli uses them for hints only).
        return wire.mapping({}, proto)
    if sub == b"LIST":
        return wire.bulk_array((entry.name.encode() for entry in _UNIQUE_COMMANDS), proto)
    raise RespError(
        f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try COMMAND HELP."
    )


def _command_info(entry: Command, proto: int) -> bytes:
    return wire.array(
        [
            wire.bulk(entry.name.encode()),
            wire.integer(entry.arity),
            wire.set_of((flag.encode() for flag in entry.flags), proto),
            wire.integer(entry.first_key),
            wire.integer(entry.last_key),
            wire.integer(entry.step),
            wire.set_of((), proto),
            wire.EMPTY_ARRAY,
            wire.EMPTY_ARRAY,
            wire.EMPTY_ARRAY,
        ]
    )


async def info(session: Session, args: list[bytes]) -> bytes:
    wanted = {arg.lower() for arg in args[1:]} or {b"default"}
    everything = bool(wanted & {b"all", b"everything", b"default"})
    parts: list[str] = []
    if everything or b"server" in wanted:
        backend = session.state.config.backend.type
        parts.append(
            "# Server\r\n"
            f"redis_version:{REDIS_VERSION}\r\n"
            f"podcache_version:{_version()}\r\n"
            f"podcache_backend:{backend}\r\n"
            "podcache_note:a podcache sidecar serving one tenant's cache in RESP; "
            "keys carry the tenant prefix and a TTL; locks and elections are on HTTP\r\n"
            "redis_mode:standalone\r\n"
            f"process_id:{os.getpid()}\r\n"
            f"uptime_in_seconds:{int(time.monotonic() - session.server.started)}\r\n"
        )
    if everything or b"clients" in wanted:
        parts.append(f"# Clients\r\nconnected_clients:{session.server.connections}\r\n")
    if everything or b"keyspace" in wanted:
        keys = await session.state.cache.backend.count_items()
        parts.append(
            "# Keyspace\r\n" + (f"db0:keys={keys},expires={keys},avg_ttl=0\r\n" if keys else "")
        )
    return wire.verbatim("\r\n".join(parts).encode(), session.proto)


def _version() -> str:
    # Imported here, on the first INFO: importlib.metadata (and the email package it
    # loads) is ~10 ms of every sidecar's start.
    import importlib.metadata

    try:
        return importlib.metadata.version("podcache")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


# -- strings ------------------------------------------------------------------------


async def get(session: Session, args: list[bytes]) -> bytes:
    key = key_of(session, args[1])
    try:
        value = await session.state.slot.cache.get(key)
    except CacheMiss:
        return wire.NULL3 if session.proto == 3 else wire.NULL2
    return b"$%d\r\n%b\r\n" % (len(value), value)


@dataclasses.dataclass
class _SetOptions:
    ms: int | None = None
    keep_ttl: bool = False
    condition: SetCondition = None
    get: bool = False


def _set_options(args: list[bytes]) -> _SetOptions:
    options = _SetOptions()
    index = 3
    expiry_seen = False
    while index < len(args):
        option = args[index].upper()
        if option in (b"NX", b"XX"):
            if options.condition is not None:
                raise RespError(SYNTAX)
            options.condition = "NX" if option == b"NX" else "XX"
        elif option == b"GET":
            options.get = True
        elif option == b"KEEPTTL":
            if expiry_seen:
                raise RespError(SYNTAX)
            options.keep_ttl = expiry_seen = True
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and index + 1 < len(args):
            if expiry_seen:
                raise RespError(SYNTAX)
            expiry_seen = True
            index += 1
            options.ms = _ttl_ms(option, args[index], "set")
        else:
            raise RespError(SYNTAX)
        index += 1
    return options


async def set_(session: Session, args: list[bytes]) -> bytes:
    key = key_of(session, args[1])
    value = value_of(session, args[2])
    cache = session.state.slot.cache
    if len(args) == 3:  # the common case, straight to the facade
        await cache.set(key, value, session.state.default_ttl)
        return wire.OK
    options = _set_options(args)
    seconds = options.ms / 1000 if options.ms is not None else session.state.default_ttl
    if not (options.keep_ttl or options.get or options.condition == "XX"):
        if options.condition == "NX":
            stored = await cache.set_nx(key, value, seconds)
            return wire.OK if stored else wire.null(session.proto)
        await cache.set(key, value, seconds)
        return wire.OK
    stored, old = await _counted(
        session,
        "set",
        session.keyspace().set_with(
            key,
            value,
            ms=options.ms,
            default_ms=default_ms(session),
            keep_ttl=options.keep_ttl,
            condition=options.condition,
            get=options.get,
            keep_persisted=persist_allowed(session),
        ),
    )
    if options.get:
        return wire.bulk_or_null(old, session.proto)
    return wire.OK if stored else wire.null(session.proto)


async def setnx(session: Session, args: list[bytes]) -> bytes:
    key = key_of(session, args[1])
    value = value_of(session, args[2])
    stored = await session.state.slot.cache.set_nx(key, value, session.state.default_ttl)
    return wire.ONE if stored else wire.ZERO


def _setex(unit: bytes, name: str) -> Handler:
    async def handler(session: Session, args: list[bytes]) -> bytes:
        key = key_of(session, args[1])
        ms = _ttl_ms(unit, args[2], name)
        value = value_of(session, args[3])
        await session.state.slot.cache.set(key, value, ms / 1000)
        return wire.OK

    return handler


async def getdel(session: Session, args: list[bytes]) -> bytes:
    key = key_of(session, args[1])
    value = await _counted(session, "getdel", session.keyspace().getdel(key))
    return wire.bulk_or_null(value, session.proto)


async def getex(session: Session, args: list[bytes]) -> bytes:
    key = key_of(session, args[1])
    ms: int | None = None
    persist = False
    if len(args) > 2:
        option = args[2].upper()
        if option == b"PERSIST" and len(args) == 3:
            if not persist_allowed(session):
                raise RespError(_NO_PERSIST)
            persist = True
        elif option not in (b"EX", b"PX", b"EXAT", b"PXAT") or len(args) != 4:
            raise RespError(SYNTAX)
        else:
            ms = _ttl_ms(option, args[3], "getex")
    value = await _counted(session, "getex", session.keyspace().getex(key, ms, persist=persist))
    return wire.bulk_or_null(value, session.proto)


_NO_PERSIST = (
    "ERR PERSIST is not allowed: every key in this cache has a TTL (the CacheConfig's "
    "defaultTTL when none is given); set limits.allowPersist: true in the sidecar's "
    "config (CacheConfig spec.allowPersist) to allow it"
)


async def delete(session: Session, args: list[bytes]) -> bytes:
    keys = [key_of(session, raw) for raw in args[1:]]
    cache = session.state.slot.cache
    removed = 0
    for key in keys:
        removed += await cache.delete(key)
    return wire.integer(removed)


async def exists(session: Session, args: list[bytes]) -> bytes:
    keys = [key_of(session, raw) for raw in args[1:]]
    keyspace = session.keyspace()
    found = 0
    for key in keys:
        found += await _counted(session, "exists", keyspace.exists(key))
    return wire.integer(found)


async def mget(session: Session, args: list[bytes]) -> bytes:
    keys = [key_of(session, raw) for raw in args[1:]]
    cache = session.state.slot.cache

    async def one(key: str) -> bytes | None:
        try:
            return await cache.get(key)
        except CacheMiss:
            return None

    if session.state.slot.never_blocks:
        values = [await one(key) for key in keys]
    else:  # reads of distinct keys: concurrently, so N keys cost one round trip's wait
        values = await asyncio.gather(*(one(key) for key in keys))
    return wire.bulk_array(values, session.proto)


async def mset(session: Session, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        raise RespError("ERR wrong number of arguments for 'mset' command")
    pairs = [
        (key_of(session, args[i]), value_of(session, args[i + 1])) for i in range(1, len(args), 2)
    ]
    # One write of every pair (a key given twice ends with its last value, as in Redis).
    await _counted(session, "mset", session.keyspace().set_many(pairs, ms=default_ms(session)))
    return wire.OK


# -- expiry -------------------------------------------------------------------------


_EXPIRE_FLAGS: dict[bytes, ExpireCondition] = {b"NX": "NX", b"XX": "XX", b"GT": "GT", b"LT": "LT"}


def _expire(unit: bytes, name: str) -> Handler:
    async def handler(session: Session, args: list[bytes]) -> bytes:
        key = key_of(session, args[1])
        number = integer_of(args[2])
        if unit == b"EX":
            if abs(number) > keyspace_mod.INT64_MAX // 1000:
                raise RespError(f"ERR invalid expire time in '{name}' command")
            number *= 1000
        flags = {arg.upper() for arg in args[3:]}
        for flag in args[3:]:
            if flag.upper() not in (b"NX", b"XX", b"GT", b"LT"):
                raise RespError(f"ERR Unsupported option {flag.decode(errors='replace')}")
        if b"NX" in flags and flags & {b"XX", b"GT", b"LT"}:
            raise RespError("ERR NX and XX, GT or LT options at the same time are not compatible")
        if b"GT" in flags and b"LT" in flags:
            raise RespError("ERR GT and LT options at the same time are not compatible")
        # XX with LT both count (a key without a TTL passes LT, not XX); once each.
        conditions = [_EXPIRE_FLAGS[flag] for flag in (b"NX", b"XX", b"GT", b"LT") if flag in flags]
        changed = await _counted(
            session, name, session.keyspace().pexpire(key, number, *conditions)
        )
        return wire.ONE if changed else wire.ZERO

    return handler


def _ttl(milliseconds: bool, name: str) -> Handler:
    async def handler(session: Session, args: list[bytes]) -> bytes:
        key = key_of(session, args[1])
        left = await _counted(session, name, session.keyspace().pttl(key))
        if left < 0 or milliseconds:
            return wire.integer(left)
        return wire.integer((left + 500) // 1000)  # rounded, as Redis does

    return handler


async def persist(session: Session, args: list[bytes]) -> bytes:
    key = key_of(session, args[1])
    if not persist_allowed(session):
        raise RespError(_NO_PERSIST)
    removed = await _counted(session, "persist", session.keyspace().persist(key))
    return wire.ONE if removed else wire.ZERO


async def type_(session: Session, args: list[bytes]) -> bytes:
    key = key_of(session, args[1])
    found = await _counted(session, "type", session.keyspace().exists(key))
    return wire.simple("string" if found else "none")


# -- counters -----------------------------------------------------------------------


def _incr(sign: int, with_argument: bool, name: str) -> Handler:
    async def handler(session: Session, args: list[bytes]) -> bytes:
        key = key_of(session, args[1])
        delta = integer_of(args[2]) if with_argument else 1
        if sign < 0:
            if delta == keyspace_mod.INT64_MIN:
                raise RespError("ERR decrement would overflow")
            delta = -delta
        result = await _counted(
            session,
            name,
            session.keyspace().incr_by(
                key, delta, default_ms=default_ms(session), keep_persisted=persist_allowed(session)
            ),
        )
        return wire.integer(result)

    return handler


# -- keyspace -----------------------------------------------------------------------


async def dbsize(session: Session, args: list[bytes]) -> bytes:
    count = await _counted(session, "dbsize", session.state.cache.backend.count_items())
    return wire.integer(count)


async def scan(session: Session, args: list[bytes]) -> bytes:
    try:
        cursor = int(args[1])
        if cursor < 0 or not args[1].isdigit():
            raise ValueError
    except ValueError:
        raise RespError("ERR invalid cursor") from None
    match: str | None = None
    count = 10
    only_strings = True
    index = 2
    while index < len(args):
        option = args[index].upper()
        if index + 1 >= len(args):
            raise RespError(SYNTAX)
        argument = args[index + 1]
        if option == b"MATCH":
            match = argument.decode(errors="surrogateescape")
        elif option == b"COUNT":
            count = integer_of(argument)
            if count < 1:
                raise RespError(SYNTAX)
        elif option == b"TYPE":
            only_strings = argument.lower() == b"string"
        else:
            raise RespError(SYNTAX)
        index += 2
    next_cursor, keys = await _counted(
        session, "scan", session.keyspace().scan(cursor, match, count)
    )
    encoded = [key.encode("utf-8", "surrogateescape") for key in keys] if only_strings else []
    return wire.array([wire.bulk(b"%d" % next_cursor), wire.bulk_array(encoded, session.proto)])


# -- the table ----------------------------------------------------------------------

_READ = ("readonly", "fast")
_WRITE = ("write", "fast")


def _table(*commands: Command) -> dict[bytes, Command]:
    table: dict[bytes, Command] = {}
    for entry in commands:
        table[entry.name.upper().encode()] = entry
        table[entry.name.encode()] = entry  # clients send either case; skip .upper() on both
    return table


COMMANDS = _table(
    Command("ping", ping, -1, ("fast",)),
    Command("echo", echo, 2, ("fast",)),
    Command("auth", auth, -2, ("no-auth", "fast")),
    Command("hello", hello, -1, ("no-auth", "fast")),
    Command("select", select, 2, ("fast",)),
    Command("client", client, -2),
    Command("command", command, -1),
    Command("info", info, -1),
    Command("config", config, -2),
    Command("get", get, 2, _READ, 1, 1, 1),
    Command("set", set_, -3, ("write",), 1, 1, 1),
    Command("setnx", setnx, 3, _WRITE, 1, 1, 1),
    Command("setex", _setex(b"EX", "setex"), 4, ("write",), 1, 1, 1),
    Command("psetex", _setex(b"PX", "psetex"), 4, ("write",), 1, 1, 1),
    Command("getdel", getdel, 2, _WRITE, 1, 1, 1),
    Command("getex", getex, -2, _WRITE, 1, 1, 1),
    Command("del", delete, -2, ("write",), 1, -1, 1),
    Command("unlink", delete, -2, _WRITE, 1, -1, 1),
    Command("exists", exists, -2, _READ, 1, -1, 1),
    Command("mget", mget, -2, _READ, 1, -1, 1),
    Command("mset", mset, -3, ("write",), 1, -1, 2),
    Command("expire", _expire(b"EX", "expire"), -3, _WRITE, 1, 1, 1),
    Command("pexpire", _expire(b"PX", "pexpire"), -3, _WRITE, 1, 1, 1),
    Command("persist", persist, 2, _WRITE, 1, 1, 1),
    Command("ttl", _ttl(False, "ttl"), 2, _READ, 1, 1, 1),
    Command("pttl", _ttl(True, "pttl"), 2, _READ, 1, 1, 1),
    Command("type", type_, 2, _READ, 1, 1, 1),
    Command("incr", _incr(1, False, "incr"), 2, _WRITE, 1, 1, 1),
    Command("incrby", _incr(1, True, "incrby"), 3, _WRITE, 1, 1, 1),
    Command("decr", _incr(-1, False, "decr"), 2, _WRITE, 1, 1, 1),
    Command("decrby", _incr(-1, True, "decrby"), 3, _WRITE, 1, 1, 1),
    Command("dbsize", dbsize, 1, _READ),
    Command("scan", scan, -2, ("readonly",)),
)
"""Name (as sent, upper or lower case) -> command. MULTI, EXEC, DISCARD, QUIT and
RESET change how the connection runs commands, so ``resp_server`` handles them
itself; they are listed in ``SERVER_COMMANDS`` for COMMAND's answers."""

SERVER_COMMANDS = ("multi", "exec", "discard", "quit", "reset")


def _server_entry(name: str) -> Command:
    # Listed by COMMAND only; resp_server runs these itself, never through ``handler``.
    return Command(name, ping, -1 if name in ("quit",) else 1, ("fast",))


_UNIQUE_COMMANDS: tuple[Command, ...] = tuple(
    {id(entry): entry for entry in COMMANDS.values()}.values()
) + tuple(_server_entry(name) for name in SERVER_COMMANDS)
