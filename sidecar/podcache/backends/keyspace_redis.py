"""``Keyspace`` of the Redis backend: native commands and Lua scripts under the prefix.

Which connection: the backend's own hot-path connection, ``backend.pipeline`` (the
auto-pipelined one, issue 11) when it has one, else redis-py's ``backend.client``
(Cluster, where redis-py routes by slot), under the same operation timeout. Nothing
here opens a connection of its own.

Where Redis's native command would leave a key without a TTL (INCR on a new key,
SET ... KEEPTTL on a new key) a short script does the command and the default TTL
atomically. Error replies Redis gives for the client's own mistakes (not an
integer, overflow) come back as ``KeyspaceError`` with Redis's text; anything else
is ``BackendUnavailable``.

SCAN passes the cursor through to Redis with ``MATCH <escaped prefix><pattern>`` and
strips the prefix from what comes back; lock and election keys (``podcache:...``
under the prefix) are dropped. On a Cluster every primary holds some of the keys, so
the client's cursor carries two numbers: ``(node cursor << NODE_BITS) | node index``,
the index into redis-py's list of primaries sorted by address. Each SCAN call is one
SCAN step on that primary; when its cursor comes back 0 the next call starts on the
next primary, and 0 is returned after the last. A client's ordinary SCAN loop so
visits every primary in turn, and the cursor stays within 64 bits (go-redis reads it
as a uint64). BEWARE: like redis-py's own ``scan_iter`` over a cluster, a failover or
a slot migration during the loop may make it miss or repeat keys that moved.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

from podcache import validation
from podcache.backends.keyspace import ExpireCondition, Keyspace, KeyspaceError, SetCondition
from podcache.backends.redis import RedisBackend, escape_glob
from podcache.errors import BackendUnavailable

Arg = bytes | str | int

NODE_BITS = 10
"""Low bits of a Cluster SCAN cursor naming the primary (up to 1024, Redis Cluster's
recommended maximum of nodes); the node's own cursor takes the upper 54 bits, and a
node's cursor never exceeds its hash table's size."""
_NODE_MASK = (1 << NODE_BITS) - 1
_UINT64_MAX = 2**64 - 1


class _Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


SET_SCRIPT = _Script("""
-- SET with Redis's options, keeping every key under a TTL.
-- KEYS[1] - the prefixed key
-- ARGV[1] - the value
-- ARGV[2] - TTL in ms, or '' to keep the key's TTL (KEEPTTL)
-- ARGV[3] - the default TTL in ms (KEEPTTL on a key that is new, or has no TTL and
--           ARGV[6] is not '1')
-- ARGV[4] - 'NX', 'XX' or ''
-- ARGV[5] - '1' to return the old value (GET)
-- ARGV[6] - '1' when a key without a TTL keeps none (PERSIST allowed)
-- return {1 if stored else 0, the old value or nil}
local old = false
if ARGV[5] == '1' then old = redis.call('GET', KEYS[1]) end
local exists = redis.call('EXISTS', KEYS[1]) == 1
if (ARGV[4] == 'NX' and exists) or (ARGV[4] == 'XX' and not exists) then return {0, old} end
local ttl = ARGV[2]
if ttl == '' then
    ttl = redis.call('PTTL', KEYS[1])
    if ttl == -1 and ARGV[6] == '1' then
        redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
        return {1, old}
    end
    if ttl <= 0 then ttl = ARGV[3] end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
return {1, old}
""")

MSET_SCRIPT = _Script("""
-- MSET with a TTL, atomic: a script runs with nothing else in between.
-- KEYS - the prefixed keys
-- ARGV[1] - TTL in ms; ARGV[i + 1] - the value of KEYS[i]
for i, key in ipairs(KEYS) do
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
end
return #KEYS
""")

INCR_SCRIPT = _Script("""
-- INCRBY that gives a new key the default TTL (an existing key keeps its own).
-- KEYS[1] - the prefixed key
-- ARGV[1] - the increment
-- ARGV[2] - the default TTL in ms
-- ARGV[3] - '1' when an existing key without a TTL keeps none (PERSIST allowed)
-- return the new value, or INCRBY's own error reply (not an integer, overflow)
local existed = ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1
local value = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(value) == 'table' and value.err then return value end
if not existed and redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
""")


def _error_text(exc: ResponseError) -> str:
    # redis-py strips the code of the errors it maps to classes (``ERR``): put it back.
    text = str(exc)
    first = text.split(" ", 1)[0]
    return text if first.isupper() and first.isalpha() else "ERR " + text


class RedisKeyspace(Keyspace):
    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._prefix = backend.key_prefix.encode()
        self._reserved = self._prefix + validation.RESERVED_KEY_PREFIX.encode()

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    async def _command(self, *args: Arg) -> Any:
        backend = self._backend
        pipeline = getattr(backend, "pipeline", None)
        try:
            if pipeline is not None:
                return await pipeline.execute(*args)  # its own deadline, no second timer
            async with asyncio.timeout(backend.settings.operation_timeout):
                return await backend.client.execute_command(*args)
        except NoScriptError as exc:
            raise KeyspaceError(f"NOSCRIPT {exc}") from exc
        except ResponseError as exc:
            raise KeyspaceError(_error_text(exc)) from exc
        except BackendUnavailable as exc:
            reply = getattr(exc, "reply", None)  # the pipelined connection's error replies
            if isinstance(reply, str):
                raise KeyspaceError(reply) from exc
            raise
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"redis did not answer {args[0]!r} within {backend.settings.operation_timeout:g}s"
            ) from exc
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis {args[0]!r} failed: {exc}") from exc

    async def _script(self, script: _Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)
        except KeyspaceError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._command("EVAL", script.source, len(keys), *keys, *args)

    async def pttl(self, key: str) -> int:
        return int(await self._command("PTTL", self._key(key)))

    async def _pexpire(self, key: str, ms: int, conditions: Sequence[ExpireCondition]) -> bool:
        return bool(await self._command("PEXPIRE", self._key(key), ms, *conditions))

    async def _persist(self, key: str) -> bool:
        return bool(await self._command("PERSIST", self._key(key)))

    async def _getdel(self, key: str) -> bytes | None:
        value: bytes | None = await self._command("GETDEL", self._key(key))
        return value

    async def _getex(self, key: str, ms: int | None, persist: bool) -> bytes | None:
        args: list[Arg] = ["GETEX", self._key(key)]
        if persist:
            args.append("PERSIST")
        elif ms is not None:
            args += ["PX", ms]
        value: bytes | None = await self._command(*args)
        return value

    async def _set_with(
        self,
        key: str,
        value: bytes,
        *,
        ms: int | None,
        default_ms: int,
        keep_ttl: bool = False,
        condition: SetCondition = None,
        get: bool = False,
        keep_persisted: bool = False,
    ) -> tuple[bool, bytes | None]:
        ttl: Arg = ms if ms is not None else ("" if keep_ttl else default_ms)
        stored, old = await self._script(
            SET_SCRIPT,
            [self._key(key)],
            [value, ttl, default_ms, condition or "", "1" if get else "",
             "1" if keep_persisted else ""],
        )
        return bool(stored), old

    async def _incr_by(self, key: str, delta: int, *, default_ms: int, keep_persisted: bool) -> int:
        keep = "1" if keep_persisted else ""
        return int(await self._script(INCR_SCRIPT, [self._key(key)], [delta, default_ms, keep]))

    async def _set_many(self, pairs: Sequence[tuple[str, bytes]], ms: int) -> None:
        keys = [self._key(key) for key, _ in pairs]
        values = [value for _, value in pairs]
        client = self._backend.client
        if isinstance(client, RedisCluster) and len({key_slot(key) for key in keys}) > 1:
            # Keys in several slots cannot be in one script: one SET each, in order.
            for key, value in zip(keys, values, strict=True):
                await self._command("SET", key, value, "PX", ms)
            return
        await self._script(MSET_SCRIPT, keys, [ms, *values])

    # Writes drop the near cache's copy before and after (``RedisBackend.written``).

    async def pexpire(self, key: str, ms: int, *conditions: ExpireCondition) -> bool:
        return await self._backend.written((key,), self._pexpire(key, ms, conditions))

    async def persist(self, key: str) -> bool:
        return await self._backend.written((key,), self._persist(key))

    async def getdel(self, key: str) -> bytes | None:
        return await self._backend.written((key,), self._getdel(key))

    async def getex(self, key: str, ms: int | None, *, persist: bool = False) -> bytes | None:
        return await self._backend.written((key,), self._getex(key, ms, persist))

    async def set_with(
        self,
        key: str,
        value: bytes,
        *,
        ms: int | None,
        default_ms: int,
        keep_ttl: bool = False,
        condition: SetCondition = None,
        get: bool = False,
        keep_persisted: bool = False,
    ) -> tuple[bool, bytes | None]:
        return await self._backend.written((key,), self._set_with(
            key, value, ms=ms, default_ms=default_ms, keep_ttl=keep_ttl, condition=condition,
            get=get, keep_persisted=keep_persisted,
        ))

    async def set_many(self, pairs: Sequence[tuple[str, bytes]], *, ms: int) -> None:
        await self._backend.written([key for key, _ in pairs], self._set_many(pairs, ms))

    async def incr_by(
        self, key: str, delta: int, *, default_ms: int, keep_persisted: bool = False
    ) -> int:
        return await self._backend.written(
            (key,), self._incr_by(key, delta, default_ms=default_ms, keep_persisted=keep_persisted)
        )

    async def exists(self, key: str) -> bool:
        return bool(await self._command("EXISTS", self._key(key)))

    async def scan(self, cursor: int, match: str | None, count: int) -> tuple[int, list[str]]:
        pattern = escape_glob(self._backend.key_prefix) + (match if match is not None else "*")
        client = self._backend.client
        if isinstance(client, RedisCluster):
            next_cursor, raw_keys = await self._scan_cluster(client, cursor, pattern, count)
        else:
            # redis-py's client parses SCAN into (int, list); the pipelined one gives it raw.
            next_cursor, raw_keys = await self._command(
                "SCAN", cursor, "MATCH", pattern, "COUNT", count
            )
        skip = len(self._prefix)
        keys = [
            key[skip:].decode("utf-8", "surrogateescape")
            for key in raw_keys
            if not key.startswith(self._reserved)
        ]
        return int(next_cursor), keys

    async def _scan_cluster(
        self, client: RedisCluster, cursor: int, pattern: str, count: int
    ) -> tuple[int, list[bytes]]:
        """One SCAN step on the primary the cursor names (see the module's docstring)."""
        if cursor > _UINT64_MAX:
            raise KeyspaceError("ERR invalid cursor")
        index, node_cursor = cursor & _NODE_MASK, cursor >> NODE_BITS
        timeout = self._backend.settings.operation_timeout
        try:
            async with asyncio.timeout(timeout):
                await client.initialize()  # a no-op once the slot map is known
                primaries = _primaries(client)
                if index >= len(primaries):
                    raise KeyspaceError("ERR invalid cursor")
                node = primaries[index]
                cursors, raw_keys = await client.execute_command(
                    "SCAN", node_cursor, "MATCH", pattern, "COUNT", count, target_nodes=node
                )
        except ResponseError as exc:
            raise KeyspaceError(_error_text(exc)) from exc
        except TimeoutError as exc:
            raise BackendUnavailable(f"redis did not answer 'SCAN' within {timeout:g}s") from exc
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis 'SCAN' failed: {exc}") from exc
        node_next = int(cursors[node.name])
        if node_next != 0:
            if node_next >> (64 - NODE_BITS):
                # A hash table of over 2**54 slots: not a real Redis.
                raise BackendUnavailable(f"SCAN cursor {node_next} of {node.name} is too large")
            return (node_next << NODE_BITS) | index, raw_keys
        if index + 1 < len(primaries):
            return index + 1, raw_keys  # the next primary, from its start
        return 0, raw_keys


def _primaries(client: RedisCluster) -> list[ClusterNode]:
    """The primaries in an order that does not depend on discovery: by address."""
    return sorted(client.get_primaries(), key=lambda node: (node.host, node.port))
