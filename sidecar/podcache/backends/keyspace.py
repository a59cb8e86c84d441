"""Key-level operations beyond ``Backend``: TTLs, counters, SCAN, conditional SETs.

The HTTP API needs only get/set/delete and two conditional writes, which is what
``Backend`` offers. The Redis-protocol socket (``podcache.sidecar.resp_server``) also
serves ``TTL``, ``EXPIRE``, ``INCR``, ``GETDEL``, ``GETEX``, ``SET ... KEEPTTL/XX/GET``,
``EXISTS`` and ``SCAN``; each backend implements them here, beside its own module,
rather than growing the interface every library user and test double implements:

- ``keyspace_memory.MemoryKeyspace`` works on the memory backend's map directly.
  Every method runs without awaiting, so each is atomic on the event loop (an INCR
  can never lose an update), exactly like the backend's own calls.
- ``keyspace_redis.RedisKeyspace`` sends native commands or small Lua scripts through
  the connection the backend uses for its own hot path (the auto-pipelined one when
  there is one), so the tenant prefix and the operation timeout apply the same way.

Semantics every implementation keeps: keys are the caller's (already validated, no
prefix); every stored key has a TTL (a new key gets ``default_ms``) unless ``persist``
took it away, which the caller allows only when the config does
(``limits.allowPersist``): then ``pttl`` answers -1, as Redis does, and a key without a
TTL keeps none through ``set_with(keep_ttl=True)`` and ``incr_by`` only when the caller
says ``keep_persisted`` (else it gets ``default_ms``: with PERSIST not allowed, every
key written has a TTL again). Errors a Redis client must see verbatim are
``KeyspaceError`` carrying Redis's own text; an outage is ``BackendUnavailable``.
"""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Sequence
from typing import Literal

from podcache.backends.base import Backend

SetCondition = Literal["NX", "XX"] | None
ExpireCondition = Literal["NX", "XX", "GT", "LT"]
"""EXPIRE's flags; Redis 7.0 takes XX with GT or LT, so ``pexpire`` takes several."""

NOT_INTEGER = "ERR value is not an integer or out of range"
OVERFLOW = "ERR increment or decrement would overflow"
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class KeyspaceError(Exception):
    """An error reply as Redis words it (``ERR ...``, ``WRONGTYPE ...``)."""


class Keyspace(abc.ABC):
    """The extra operations of one backend, for one tenant."""

    @abc.abstractmethod
    async def pttl(self, key: str) -> int:
        """Milliseconds left; -1 when the key has no TTL (``persist``); -2 when absent."""

    @abc.abstractmethod
    async def pexpire(self, key: str, ms: int, *conditions: ExpireCondition) -> bool:
        """Give ``key`` ``ms`` to live (``ms <= 0`` deletes it) when every condition
        holds (Redis's: a key without a TTL has none for NX/XX, an infinite one for
        GT/LT); whether it was changed."""

    @abc.abstractmethod
    async def persist(self, key: str) -> bool:
        """Remove the TTL of ``key``; whether it had one (False when absent)."""

    @abc.abstractmethod
    async def getdel(self, key: str) -> bytes | None:
        """The value, removing the key; None when absent."""

    @abc.abstractmethod
    async def getex(self, key: str, ms: int | None, *, persist: bool = False) -> bytes | None:
        """The value, setting a new TTL first when ``ms`` is given (removing it with
        ``persist``); None when absent."""

    @abc.abstractmethod
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
        """SET with Redis's options: (stored, the old value when ``get``).

        ``ms`` None means the default TTL, or the key's current TTL with ``keep_ttl``
        (a key that did not exist gets the default; one without a TTL keeps none only
        with ``keep_persisted``)."""

    @abc.abstractmethod
    async def set_many(self, pairs: Sequence[tuple[str, bytes]], *, ms: int) -> None:
        """MSET: every pair stored with ``ms`` to live, all at once (no reader sees some
        stored and not others; Redis Cluster: only when the keys share a slot)."""

    @abc.abstractmethod
    async def incr_by(
        self, key: str, delta: int, *, default_ms: int, keep_persisted: bool = False
    ) -> int:
        """Add ``delta`` to the integer at ``key`` (0 when absent, then with the default
        TTL; an existing key keeps its TTL, and one without a TTL keeps none only with
        ``keep_persisted``); the new value."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def scan(self, cursor: int, match: str | None, count: int) -> tuple[int, list[str]]:
        """One SCAN step over this tenant's cache keys (never lock or election keys)."""


def for_backend(backend: Backend) -> Keyspace:
    """The keyspace of ``backend`` (imported lazily: redis stays unloaded for memory)."""
    from podcache.backends.memory import MemoryBackend

    if isinstance(backend, MemoryBackend):
        from podcache.backends.keyspace_memory import MemoryKeyspace

        return MemoryKeyspace(backend)
    from podcache.backends.redis import RedisBackend

    if isinstance(backend, RedisBackend):
        from podcache.backends.keyspace_redis import RedisKeyspace

        return RedisKeyspace(backend)
    raise TypeError(f"no keyspace operations for {type(backend).__name__}")


def parse_int(value: bytes) -> int:
    """``value`` as Redis's string2ll reads it (no spaces, no '+', no leading zeros)."""
    if len(value) > 20 or not _INTEGER.fullmatch(value):
        raise KeyspaceError(NOT_INTEGER)
    number = int(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise KeyspaceError(NOT_INTEGER)
    return number


_INTEGER = re.compile(rb"0|-?[1-9][0-9]*")  # "-0" and "007" are not integers to Redis


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Redis's glob (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\`` escapes) as a regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end < 0:  # Redis treats an unclosed class as running to the end
                end = len(pattern)
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            if negate:
                body = body[1:]
            escaped = "".join("\\" + c if c in "\\]^[" else c for c in body)
            out.append(f"[{'^' if negate else ''}{escaped}]" if body else "(?!)")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)
