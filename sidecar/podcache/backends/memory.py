"""The in-process backend: a bounded LRU map with TTLs and a background reaper.

Concurrency model: every public method mutates the map without awaiting in
between, so on one event loop each call is atomic with respect to every other
task and no lock is needed. It is NOT thread-safe: use it from one event loop.

Bounds: ``max_items`` entries and ``max_bytes`` (UTF-8 key bytes plus value bytes);
beyond either, the least recently used entries are evicted. A value that alone
exceeds ``max_bytes`` is refused with ``ValueTooLarge`` instead of flushing the
whole cache to make room for it.

Expiry: ``get`` never returns an expired entry (it is checked on every read). The
reaper frees the memory of entries nobody reads again: a min-heap of expiry times
is swept every ``reap_interval`` in small batches, yielding to the event loop in
between, so a burst of expiries never holds the loop for long. Heap items of
overwritten or deleted entries are skipped lazily, and the heap is rebuilt when
such stale items outnumber the live entries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import heapq
import itertools
import logging
import time

from podcache import validation
from podcache.backends.base import Backend
from podcache.config import MemorySettings
from podcache.errors import BackendUnavailable, CacheMiss, ValueTooLarge

logger = logging.getLogger(__name__)

REAP_BATCH = 256
"""Expired entries removed per slice before yielding: keeps each slice well under 1 ms."""

_HEAP_SLACK = 1024
"""Stale heap items tolerated beyond the live count before a rebuild (amortises the cost)."""


@dataclasses.dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float
    """time.monotonic() deadline: wall-clock jumps must not expire or revive entries."""
    size: int
    seq: int
    """Identifies this write, so a heap item of an overwritten entry is recognised as stale."""


class MemoryBackend(Backend):
    """Bounded LRU key/value store with TTLs, living in this process."""

    def __init__(self, settings: MemorySettings) -> None:
        self.settings = settings
        self.default_ttl = settings.default_ttl
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._bytes = 0
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
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
        return self._bytes

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
        self._heap.clear()
        self._bytes = 0

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
        entry = self._live(key, time.monotonic())
        if entry is None:
            raise CacheMiss(key)
        self._entries.move_to_end(key)
        return entry.value

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
        entry = self._live(key, time.monotonic())
        if entry is None or entry.value != expected:
            return False
        self._store(key, value, seconds)
        return True

    async def delete(self, key: str) -> bool:
        validation.check_key(key)
        self._ensure_running()
        entry = self._live(key, time.monotonic())
        self._remove(key)  # an expired entry goes too, but it did not "exist"
        return entry is not None

    async def count_items(self) -> int:
        return len(self._entries)

    # -- internals (no awaits: each runs atomically on the loop) ------------------

    def _checked(self, key: str, value: bytes, ttl: float) -> tuple[str, bytes, float]:
        key = validation.check_key(key)
        value = validation.check_value(value)
        seconds = validation.resolve_ttl(ttl, self.default_ttl)
        size = _size(key, value)
        if size > self.settings.max_bytes:
            raise ValueTooLarge(
                f"entry of {size} bytes (key + value) exceeds the memory backend's "
                f"maxBytes of {self.settings.max_bytes}"
            )
        return key, value, seconds

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._remove(key)
            return None
        return entry

    def _store(self, key: str, value: bytes, seconds: float) -> None:
        self._remove(key)
        seq = next(self._seq)
        expires_at = time.monotonic() + seconds
        entry = _Entry(value=value, expires_at=expires_at, size=_size(key, value), seq=seq)
        self._entries[key] = entry
        self._bytes += entry.size
        heapq.heappush(self._heap, (expires_at, seq, key))
        self._evict()
        if len(self._heap) > 2 * len(self._entries) + _HEAP_SLACK:
            self._rebuild_heap()

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def _evict(self) -> None:
        limits = self.settings
        while len(self._entries) > limits.max_items or self._bytes > limits.max_bytes:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            self.evictions += 1

    def _rebuild_heap(self) -> None:
        self._heap = [(e.expires_at, e.seq, k) for k, e in self._entries.items()]
        heapq.heapify(self._heap)

    def reap(self, *, limit: int = REAP_BATCH) -> int:
        """Remove up to ``limit`` expired entries; return how many heap items were consumed."""
        now = time.monotonic()
        heap = self._heap
        consumed = 0
        while heap and consumed < limit and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            consumed += 1
            entry = self._entries.get(key)
            if entry is not None and entry.seq == seq:
                self._remove(key)
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


def _size(key: str, value: bytes) -> int:
    return len(key.encode("utf-8", "surrogatepass")) + len(value)
