"""The in-process backend: a bounded LRU map with TTLs and a background reaper.

Concurrency model: every public method mutates the map without awaiting in
between, so on one event loop each call is atomic with respect to every other
task and no lock is needed. It is NOT thread-safe: use it from one event loop.

Bounds: ``max_items`` entries and ``max_bytes``; beyond either, the least recently
used entries are evicted. ``max_bytes`` bounds memory, not just payload: each entry
is charged its UTF-8 key bytes, its value bytes and ``ENTRY_OVERHEAD`` (the objects
and table slots that hold it, measured by ``bench/bench_memory.py``). A value that
alone exceeds ``max_bytes`` is refused with ``ValueTooLarge`` instead of flushing
the whole cache to make room for it. ``resize`` applies new bounds to the live store.

Layout, chosen for bytes per entry (the target is at most 1.3 times a plain dict): one
``OrderedDict`` maps each key to its value with the expiry time packed into the
same ``bytes`` object (8 bytes appended), so an entry costs no object besides its key
and value. A GET returns a copy without those 8 bytes; values above ``PACK_LIMIT``
are kept as they came, in a small slotted object, so a large value is never copied.

Expiry: ``get`` never returns an expired entry (it is checked on every read). The
reaper frees the memory of entries nobody reads again: keys are filed by expiry in
a timing wheel (a list of keys per tick, 8 bytes per entry, instead of a heap item
per entry), and due buckets are swept every ``reap_interval`` in small batches,
yielding to the event loop in between. Ticks widen with the distance to the expiry
(at most 1/64 of it) so far-future TTLs share few buckets. References of
overwritten, deleted or evicted entries are skipped lazily (each entry's own expiry
decides). BEWARE: such a stale reference keeps its key string alive, so it is charged
against ``maxBytes`` too (``STALE_REF_OVERHEAD`` + key bytes) until the reaper drops it;
when stale references hold a quarter of ``maxBytes`` (an eviction flood), the wheel is
rebuilt from the live entries, which takes O(entries) at once (~0.5 us each).

No expiry: an entry stored for ``math.inf`` seconds (RESP ``PERSIST``, when the
config allows it) has no wheel reference; it lives until deleted or evicted by the
LRU bounds. ``_persisted`` counts them, so the common case pays nothing for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import math
import struct
import time

from podcache import etags, validation
from podcache.backends.base import Backend
from podcache.config import MemorySettings
from podcache.errors import BackendUnavailable, CacheMiss, ValueTooLarge

logger = logging.getLogger(__name__)

REAP_BATCH = 256
"""Wheel references examined per slice before yielding: keeps each slice well under 1 ms."""

ENTRY_OVERHEAD = 240
"""Bytes charged per entry beyond its key and value bytes. Measured with
``bench/bench_memory.py`` (CPython 3.11, 64-bit): str header 40, bytes header 33 plus
the packed expiry 8, allocator rounding ~16, the OrderedDict's slot, index, link
node and fast-lookup slot 74-116 depending on how full its table is, the wheel
reference ~9. Observed 190-215 B requested, up to ~30 B more after rounding; the
charge is at the top of that range so that ``maxBytes`` is a bound, not an average."""

PACK_LIMIT = 4096
"""Values up to this many bytes are stored with the expiry packed in (a GET copies
them, < 1 µs); larger ones are stored uncopied in a ``_Large``."""

_LARGE_OVERHEAD = 176
"""Extra bytes charged for a ``_Large`` holder: object 56 + float 24, and the ETag string
it keeps once read (83), rounded."""

_EXPIRY = struct.Struct("<d")
_EXPIRY_SIZE = _EXPIRY.size
_unpack_expiry = _EXPIRY.unpack_from  # bound once: peek is the RESP GET's hot path

_TICK = 0.01
"""Seconds per wheel tick: the reaper frees an entry at most this late (plus widening)."""

STALE_REF_OVERHEAD = 80
"""Bytes charged per stale wheel reference beyond its key bytes: the list slot and the
header of the key string it keeps alive (40-76 B, rounded)."""


class _Large:
    """A value above ``PACK_LIMIT``, its expiry and its ETag: spares a copy and a hash per GET."""

    __slots__ = ("etag", "expires_at", "value")

    def __init__(self, value: bytes, expires_at: float) -> None:
        self.value = value
        self.expires_at = expires_at
        """time.monotonic() deadline: wall-clock jumps must not expire or revive entries."""
        self.etag: str | None = None
        """Computed on the first read, then kept: a 1 MiB value is hashed once per write."""


_Stored = bytes | _Large


def _expires_at(stored: _Stored) -> float:
    if type(stored) is bytes:
        return float(_EXPIRY.unpack_from(stored, len(stored) - _EXPIRY_SIZE)[0])
    assert isinstance(stored, _Large)
    return stored.expires_at


def _value(stored: _Stored) -> bytes:
    if type(stored) is bytes:
        return stored[:-_EXPIRY_SIZE]
    assert isinstance(stored, _Large)
    return stored.value


def _key_bytes(key: str) -> int:
    return len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))


def entry_size(key: str, value_length: int) -> int:
    """Bytes charged against ``maxBytes`` for one entry (see ``ENTRY_OVERHEAD``)."""
    extra = _LARGE_OVERHEAD if value_length > PACK_LIMIT else 0
    return _key_bytes(key) + value_length + ENTRY_OVERHEAD + extra


def _stale_size(key: str) -> int:
    return _key_bytes(key) + STALE_REF_OVERHEAD


def _charged(key: str, stored: _Stored) -> int:
    if type(stored) is bytes:
        return entry_size(key, len(stored) - _EXPIRY_SIZE)
    assert isinstance(stored, _Large)
    return entry_size(key, len(stored.value))


def _wheel_tick(expires_at: float, now: float) -> int:
    """The tick whose bucket files an entry: at or after its expiry, coarser further out."""
    tick = math.ceil(expires_at / _TICK)
    distance = tick - int(now / _TICK)
    if distance < 128:
        return tick
    width = 1 << ((distance >> 6).bit_length() - 1)  # a power of two ≤ distance / 64
    return -(-tick // width) * width


class MemoryBackend(Backend):
    """Bounded LRU key/value store with TTLs, living in this process."""

    def __init__(self, settings: MemorySettings) -> None:
        self.settings = settings
        self.default_ttl = settings.default_ttl
        self._entries: collections.OrderedDict[str, _Stored] = collections.OrderedDict()
        self._bytes = 0
        self._wheel: dict[int, list[str]] = {}
        self._due: list[int] = []
        """Heap of the ticks that have a bucket in ``_wheel``."""
        self._wheel_items = 0
        self._stale_bytes = 0
        """Charged for wheel references whose entry is gone or was overwritten."""
        self._persisted = 0
        """Entries without expiry (and so without a wheel reference)."""
        self._reaper: asyncio.Task[None] | None = None
        self._stopped = False
        self.evictions = 0
        """Entries dropped to respect the bounds (not counting expiries)."""

    # -- introspection -----------------------------------------------------------

    @property
    def item_count(self) -> int:
        """Entries held right now, including expired ones the reaper has not reached yet."""
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        """Bytes charged against ``maxBytes``: key + value + ``ENTRY_OVERHEAD`` per entry,
        plus the stale wheel references not yet dropped."""
        return self._bytes + self._stale_bytes

    @property
    def stale_bytes(self) -> int:
        """The part of ``bytes_used`` charged for stale wheel references."""
        return self._stale_bytes

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the reaper now (otherwise it starts on first use inside a running loop)."""
        self._ensure_running()

    async def stop(self) -> None:
        self._stopped = True
        task, self._reaper = self._reaper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._entries.clear()
        self._wheel.clear()
        self._due.clear()
        self._wheel_items = 0
        self._stale_bytes = 0
        self._bytes = 0
        self._persisted = 0

    async def ping(self) -> None:
        self._ensure_running()

    def resize(self, settings: MemorySettings) -> None:
        """Apply new settings to the live store (a config reload): entries, locks and
        fences stay; if the bounds shrank, the least recently used entries go now."""
        self.settings = settings
        self.default_ttl = settings.default_ttl
        self._evict()

    def _ensure_running(self) -> None:
        if self._stopped:
            raise BackendUnavailable("the memory backend has been stopped")
        if self._reaper is None or self._reaper.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # called outside a loop: the next call from inside one starts it
            self._reaper = loop.create_task(self._reap_forever(), name="podcache-memory-reaper")

    # -- operations --------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        validation.check_key(key)
        self._ensure_running()
        stored = self._live(key, time.monotonic())
        if stored is None:
            raise CacheMiss(key)
        self._entries.move_to_end(key)
        return _value(stored)

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        validation.check_key(key)
        self._ensure_running()
        stored = self._live(key, time.monotonic())
        if stored is None:
            raise CacheMiss(key)
        self._entries.move_to_end(key)
        if type(stored) is bytes:
            value = stored[:-_EXPIRY_SIZE]
            return value, etags.etag_of(value)  # <= PACK_LIMIT bytes: under a microsecond
        assert isinstance(stored, _Large)
        if stored.etag is None:
            stored.etag = etags.etag_of(stored.value)
        return stored.value, stored.etag

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None:
        key, value, seconds = self._checked(key, value, ttl)
        self._ensure_running()
        self._store(key, value, seconds)

    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        key, value, seconds = self._checked(key, value, ttl)
        self._ensure_running()
        if self._live(key, time.monotonic()) is not None:
            return False
        self._store(key, value, seconds)
        return True

    async def set_if_match(self, key: str, value: bytes, expected: bytes, ttl: float = 0) -> bool:
        key, value, seconds = self._checked(key, value, ttl)
        expected = validation.check_value(expected)
        self._ensure_running()
        stored = self._live(key, time.monotonic())
        if stored is None or _value(stored) != expected:
            return False
        self._store(key, value, seconds)
        return True

    async def delete(self, key: str) -> bool:
        validation.check_key(key)
        self._ensure_running()
        stored = self._live(key, time.monotonic())
        self._remove(key)  # an expired entry goes too, but it did not "exist"
        return stored is not None

    async def count_items(self) -> int:
        return len(self._entries)

    # -- synchronous SET for the RESP batch loop (its GET is ``start`` once per batch,
    # then ``peek``): a pipelined batch runs in one pass, not a coroutine per command.

    def store(self, key: str, value: bytes, ttl: float = 0) -> None:
        """``set`` without the coroutine (it validates like ``set``)."""
        key, value, seconds = self._checked(key, value, ttl)
        self._ensure_running()
        self._store(key, value, seconds)

    # -- synchronous access for a layer in front of another backend (near cache) ---
    # No await between a check and its store: the caller's bookkeeping (e.g. an
    # invalidation token) and the map change happen atomically on the event loop.

    def peek(self, key: str, now: float = 0.0) -> bytes | None:
        """The live value of ``key`` (marked recently used), or None; no key validation.
        ``_live`` and ``_value`` inlined: this is the near cache's and RESP's hit path.
        ``now``: a ``time.monotonic()`` the caller read already (RESP reads it once per
        batch), else 0 and it is read here."""
        entries = self._entries
        stored = entries.get(key)
        if stored is None:
            return None
        if type(stored) is bytes:
            end = len(stored) - _EXPIRY_SIZE
            if _unpack_expiry(stored, end)[0] <= (now or time.monotonic()):
                self._remove(key)
                return None
            entries.move_to_end(key)
            return stored[:end]
        assert isinstance(stored, _Large)
        if stored.expires_at <= (now or time.monotonic()):
            self._remove(key)
            return None
        entries.move_to_end(key)
        return stored.value

    def put(self, key: str, value: bytes, seconds: float) -> bool:
        """Store for ``seconds`` (> 0); False, storing nothing, when it cannot fit at all."""
        if seconds <= 0 or entry_size(key, len(value)) > self.settings.max_bytes:
            return False
        self._store(key, value, seconds)
        return True

    def discard(self, key: str) -> bool:
        """Drop ``key`` if held; whether it was."""
        held = key in self._entries
        self._remove(key)
        return held

    def clear(self) -> int:
        """Drop every entry (the reaper keeps running); how many were held."""
        held = len(self._entries)
        self._entries.clear()
        self._wheel.clear()
        self._due.clear()
        self._wheel_items = 0
        self._stale_bytes = 0
        self._bytes = 0
        self._persisted = 0
        return held

    # -- internals (no awaits: each runs atomically on the loop) ------------------

    def _checked(self, key: str, value: bytes, ttl: float) -> tuple[str, bytes, float]:
        key = validation.check_key(key)
        value = validation.check_value(value)
        seconds = validation.resolve_ttl(ttl, self.default_ttl)
        size = entry_size(key, len(value))
        if size > self.settings.max_bytes:
            raise ValueTooLarge(
                f"entry of {size} bytes (key + value + {ENTRY_OVERHEAD} bytes of overhead) "
                f"exceeds the memory backend's maxBytes of {self.settings.max_bytes}"
            )
        return key, value, seconds

    def _live(self, key: str, now: float) -> _Stored | None:
        stored = self._entries.get(key)
        if stored is None:
            return None
        if _expires_at(stored) <= now:
            self._remove(key)
            return None
        return stored

    def _store(self, key: str, value: bytes, seconds: float) -> None:
        self._remove(key)
        now = time.monotonic()
        expires_at = now + seconds
        stored: _Stored
        if len(value) <= PACK_LIMIT:
            stored = value + _EXPIRY.pack(expires_at)
        else:
            stored = _Large(value, expires_at)
        self._entries[key] = stored
        self._bytes += entry_size(key, len(value))
        if expires_at == math.inf:
            self._persisted += 1  # never due: no wheel reference
        else:
            self._file(key, expires_at, now)
        self._evict()

    def _file(self, key: str, expires_at: float, now: float) -> None:
        tick = _wheel_tick(expires_at, now)
        bucket = self._wheel.get(tick)
        if bucket is None:
            bucket = self._wheel[tick] = []
            heapq.heappush(self._due, tick)
        bucket.append(key)
        self._wheel_items += 1

    def _remove(self, key: str) -> None:
        stored = self._entries.pop(key, None)
        if stored is not None:
            self._bytes -= _charged(key, stored)
            self._unfile(key, stored)

    def _unfile(self, key: str, stored: _Stored) -> None:
        """Account for the wheel reference of an entry that just left the map."""
        if self._persisted and _expires_at(stored) == math.inf:
            self._persisted -= 1  # it had none
        else:
            self._stale_bytes += _stale_size(key)  # it stays behind until reaped

    def _evict(self) -> None:
        limits = self.settings
        while len(self._entries) > limits.max_items or self.bytes_used > limits.max_bytes:
            if self._stale_bytes and (
                self._stale_bytes > limits.max_bytes // 4 or len(self._entries) <= 1
            ):
                # Free the stale references rather than evict live entries for them.
                self._rebuild_wheel()
                continue
            key, stored = self._entries.popitem(last=False)
            self._bytes -= _charged(key, stored)
            self._unfile(key, stored)
            self.evictions += 1

    def _rebuild_wheel(self) -> None:
        self._wheel.clear()
        self._due.clear()
        self._wheel_items = 0
        self._stale_bytes = 0
        now = time.monotonic()
        for key, stored in self._entries.items():
            expires_at = _expires_at(stored)
            if expires_at != math.inf:
                self._file(key, expires_at, now)

    def reap(self, *, limit: int = REAP_BATCH) -> int:
        """Remove expired entries, examining up to ``limit`` wheel references; return
        how many were examined."""
        now = time.monotonic()
        due = self._due
        consumed = 0
        # One tick late: then every entry filed in the bucket has expired despite float
        # rounding, so a reference to an unexpired entry is certainly a stale one.
        while due and consumed < limit and (due[0] + 1) * _TICK <= now:
            tick = due[0]
            bucket = self._wheel[tick]
            while bucket and consumed < limit:
                key = bucket.pop()
                consumed += 1
                # Stale or not, this reference is gone; a live one turns stale in _remove.
                self._stale_bytes -= _stale_size(key)
                stored = self._entries.get(key)
                if stored is not None and _expires_at(stored) <= now:
                    self._remove(key)
            if not bucket:
                heapq.heappop(due)
                del self._wheel[tick]
        self._wheel_items -= consumed
        return consumed

    async def reap_expired(self) -> None:
        """Remove every expired entry, one batch at a time, yielding to the loop in between."""
        while True:
            if self.reap() < REAP_BATCH:
                return
            await asyncio.sleep(0)  # let other tasks run between batches

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            try:
                await self.reap_expired()
            except Exception:  # a bug here must not silently end reaping for good
                logger.exception("memory backend reaper failed; retrying next interval")
