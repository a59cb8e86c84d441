"""``Keyspace`` of the memory backend: works on its map, without awaiting (so atomically).

BEWARE: this reaches into ``MemoryBackend``'s internals (``_live``, ``_store``,
``_remove``, ``_checked`` and the packed-entry helpers) on purpose: going through its
public get/set would split read-modify-write operations such as INCR or GETDEL in two
and lose the TTL. ``tests/sidecar/test_resp_commands.py`` runs every operation here
against a real redis-server's answers, so a change of layout there shows up at once.

SCAN: the map's order changes on every read (LRU), so a cursor cannot be a position
in it. Cursor 0 takes a snapshot of the keys (one list of references) and the cursor
encodes which snapshot and where in it; keys present for the whole iteration are
returned exactly once, keys deleted meanwhile are skipped. At most ``MAX_SCANS``
snapshots are kept (oldest dropped): a client that resumes a dropped one gets
``ERR invalid cursor`` and starts again.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Sequence

from podcache.backends import keyspace, memory
from podcache.backends.keyspace import ExpireCondition, Keyspace, KeyspaceError, SetCondition
from podcache.backends.memory import MemoryBackend

MAX_SCANS = 64
"""Snapshots kept for iterations in progress: each holds one reference per key."""

_POSITION_BITS = 32


class MemoryKeyspace(Keyspace):
    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._scans: collections.OrderedDict[int, list[str]] = collections.OrderedDict()
        self._scan_ids = itertools.count(1)

    def _remaining_ms(self, stored: memory._Stored, now: float) -> float:
        """Milliseconds left (at least 1), ``math.inf`` for a key without a TTL."""
        expires_at = memory._expires_at(stored)
        if expires_at == math.inf:
            return math.inf
        return max(1, math.ceil((expires_at - now) * 1000))

    def _kept_ms(self, stored: memory._Stored, now: float, default_ms: int, keep: bool) -> float:
        """The TTL a write keeps: the key's own, or ``default_ms`` for a key without one
        unless ``keep`` (PERSIST allowed)."""
        left = self._remaining_ms(stored, now)
        return default_ms if left == math.inf and not keep else left

    async def pttl(self, key: str) -> int:
        now = time.monotonic()
        stored = self._backend._live(key, now)
        if stored is None:
            return -2
        left = self._remaining_ms(stored, now)
        return -1 if left == math.inf else int(left)

    async def pexpire(self, key: str, ms: int, *conditions: ExpireCondition) -> bool:
        backend = self._backend
        now = time.monotonic()
        stored = backend._live(key, now)
        if stored is None:
            return False
        current = self._remaining_ms(stored, now)
        has_ttl = current != math.inf
        for condition in conditions:
            # Redis's rules: no TTL is "none" for NX/XX and infinite for GT/LT.
            if (
                (condition == "NX" and has_ttl)
                or (condition == "XX" and not has_ttl)
                or (condition == "GT" and ms <= current)
                or (condition == "LT" and ms >= current)
            ):
                return False
        if ms <= 0:
            backend._remove(key)
        else:
            backend._store(key, memory._value(stored), ms / 1000)
        return True

    async def persist(self, key: str) -> bool:
        backend = self._backend
        stored = backend._live(key, time.monotonic())
        if stored is None or memory._expires_at(stored) == math.inf:
            return False
        backend._store(key, memory._value(stored), math.inf)
        return True

    async def getdel(self, key: str) -> bytes | None:
        stored = self._backend._live(key, time.monotonic())
        if stored is None:
            return None
        self._backend._remove(key)
        return memory._value(stored)

    async def getex(self, key: str, ms: int | None, *, persist: bool = False) -> bytes | None:
        backend = self._backend
        stored = backend._live(key, time.monotonic())
        if stored is None:
            return None
        value = memory._value(stored)
        if persist:
            backend._store(key, value, math.inf)
        elif ms is not None:
            backend._store(key, value, ms / 1000)
        else:
            backend._entries.move_to_end(key)
        return value

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
        backend = self._backend
        now = time.monotonic()
        stored = backend._live(key, now)
        old = memory._value(stored) if get and stored is not None else None
        if (condition == "NX" and stored is not None) or (condition == "XX" and stored is None):
            return False, old
        left: float = default_ms if ms is None else ms
        if ms is None and keep_ttl and stored is not None:
            left = self._kept_ms(stored, now, default_ms, keep_persisted)
        key, value, seconds = backend._checked(key, value, left / 1000)  # maxBytes, as SET
        backend._store(key, value, seconds)
        return True, old

    async def set_many(self, pairs: Sequence[tuple[str, bytes]], *, ms: int) -> None:
        backend = self._backend
        checked = [backend._checked(key, value, ms / 1000) for key, value in pairs]
        for key, value, seconds in checked:  # no await between: nothing interleaves
            backend._store(key, value, seconds)

    async def incr_by(
        self, key: str, delta: int, *, default_ms: int, keep_persisted: bool = False
    ) -> int:
        backend = self._backend
        now = time.monotonic()
        stored = backend._live(key, now)
        ms: float
        if stored is None:
            current, ms = 0, default_ms
        else:
            current = keyspace.parse_int(memory._value(stored))
            ms = self._kept_ms(stored, now, default_ms, keep_persisted)
        result = current + delta
        if not keyspace.INT64_MIN <= result <= keyspace.INT64_MAX:
            raise KeyspaceError(keyspace.OVERFLOW)
        key, value, seconds = backend._checked(key, b"%d" % result, ms / 1000)
        backend._store(key, value, seconds)
        return result

    async def exists(self, key: str) -> bool:
        return self._backend._live(key, time.monotonic()) is not None

    async def scan(self, cursor: int, match: str | None, count: int) -> tuple[int, list[str]]:
        if cursor == 0:
            scan_id = next(self._scan_ids) % (1 << 30) or next(self._scan_ids)
            snapshot = list(self._backend._entries)
            self._scans[scan_id] = snapshot
            while len(self._scans) > MAX_SCANS:
                self._scans.popitem(last=False)
            position = 0
        else:
            scan_id, position = cursor >> _POSITION_BITS, cursor & ((1 << _POSITION_BITS) - 1)
            found = self._scans.get(scan_id)
            if found is None:
                raise KeyspaceError("ERR invalid cursor")
            snapshot = found
        end = min(position + count, len(snapshot))
        regex = keyspace.glob_regex(match) if match is not None else None
        now = time.monotonic()
        live = self._backend._live
        keys = [
            key
            for key in snapshot[position:end]
            if (regex is None or regex.fullmatch(key)) and live(key, now) is not None
        ]
        if end >= len(snapshot):
            self._scans.pop(scan_id, None)
            return 0, keys
        return (scan_id << _POSITION_BITS) | end, keys
