"""The in-process backend on its own (no facade, no metrics).

Aspects:
- get/set/delete round trips; delete reports whether the key existed;
- TTLs: short expiry, the default TTL for ttl=0, negative ttl refused;
- set_nx and set_if_match, including on expired entries;
- LRU bounds by item count and by bytes, recency refreshed by get;
- an entry larger than maxBytes is refused, not stored by flushing everything;
- the reaper frees expired entries nobody reads, started lazily or by start(),
  in batches that let other tasks run in between;
- bad input (non-bytes value, empty/overlong/non-str key) is refused before any change;
- many concurrent tasks keep the byte and item accounting exact;
- maxBytes bounds memory: each entry is charged at least what Python allocates for it
  (tracemalloc), also under a flood of tiny entries and with stale wheel references;
- resize applies new bounds in place, evicting the eldest when they shrank;
- ETags: a large value is hashed once per write, not per read;
- stop() is idempotent and later calls fail clearly.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Callable

import pytest

from podcache.backends import memory
from podcache.backends.memory import (
    ENTRY_OVERHEAD,
    REAP_BATCH,
    STALE_REF_OVERHEAD,
    MemoryBackend,
    entry_size,
)
from podcache.config import MemorySettings
from podcache.errors import (
    BackendUnavailable,
    CacheMiss,
    InvalidKey,
    InvalidTTL,
    InvalidValue,
    ValueTooLarge,
)


async def wait_for(condition: Callable[[], bool], *, within: float = 3.0) -> None:
    """Poll a cheap condition until true or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def backend():
    b = MemoryBackend(MemorySettings(default_ttl=60, reap_interval=0.05))
    yield b
    await b.stop()


# -- basic operations --


async def test_set_then_get(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", ttl=5)
    assert await backend.get("k") == b"v"


async def test_overwrite_replaces_value_and_accounting(backend: MemoryBackend) -> None:
    await backend.set("k", b"12345")
    await backend.set("k", b"1")
    assert await backend.get("k") == b"1"
    assert backend.item_count == 1
    assert backend.bytes_used - backend.stale_bytes == entry_size("k", 1)


async def test_get_missing_raises_cache_miss(backend: MemoryBackend) -> None:
    with pytest.raises(CacheMiss):
        await backend.get("absent")


async def test_delete_reports_existence(backend: MemoryBackend) -> None:
    await backend.set("k", b"v")
    assert await backend.delete("k") is True
    assert await backend.delete("k") is False
    with pytest.raises(CacheMiss):
        await backend.get("k")


async def test_bytearray_and_memoryview_values_are_copied(backend: MemoryBackend) -> None:
    buf = bytearray(b"abc")
    await backend.set("k", buf)  # type: ignore[arg-type]
    buf[0] = ord("z")
    assert await backend.get("k") == b"abc"
    await backend.set("m", memoryview(b"xyz"))  # type: ignore[arg-type]
    assert await backend.get("m") == b"xyz"


# -- TTLs --


async def test_entry_expires_after_ttl(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", ttl=0.2)
    assert await backend.get("k") == b"v"
    await asyncio.sleep(0.25)
    with pytest.raises(CacheMiss):
        await backend.get("k")


async def test_ttl_zero_uses_default() -> None:
    b = MemoryBackend(MemorySettings(default_ttl=0.2))
    try:
        await b.set("k", b"v", ttl=0)
        await b.set("long", b"v", ttl=30)
        await asyncio.sleep(0.25)
        with pytest.raises(CacheMiss):
            await b.get("k")
        assert await b.get("long") == b"v"
    finally:
        await b.stop()


async def test_negative_ttl_refused_without_change(backend: MemoryBackend) -> None:
    await backend.set("k", b"old")
    with pytest.raises(InvalidTTL, match="negative"):
        await backend.set("k", b"new", ttl=-1)
    assert await backend.get("k") == b"old"


async def test_delete_of_expired_key_reports_absent(backend: MemoryBackend) -> None:
    await backend.set("k", b"v", ttl=0.05)
    await asyncio.sleep(0.08)
    assert await backend.delete("k") is False


# -- conditional writes --


async def test_set_nx(backend: MemoryBackend) -> None:
    assert await backend.set_nx("k", b"first") is True
    assert await backend.set_nx("k", b"second") is False
    assert await backend.get("k") == b"first"


async def test_set_nx_over_expired_entry(backend: MemoryBackend) -> None:
    await backend.set("k", b"old", ttl=0.05)
    await asyncio.sleep(0.08)
    assert await backend.set_nx("k", b"new") is True
    assert await backend.get("k") == b"new"


async def test_set_if_match(backend: MemoryBackend) -> None:
    await backend.set("k", b"v1")
    assert await backend.set_if_match("k", b"v2", b"wrong") is False
    assert await backend.get("k") == b"v1"
    assert await backend.set_if_match("k", b"v2", b"v1") is True
    assert await backend.get("k") == b"v2"


async def test_set_if_match_on_missing_or_expired(backend: MemoryBackend) -> None:
    assert await backend.set_if_match("absent", b"v", b"") is False
    await backend.set("k", b"v", ttl=0.05)
    await asyncio.sleep(0.08)
    assert await backend.set_if_match("k", b"new", b"v") is False
    with pytest.raises(CacheMiss):
        await backend.get("k")


async def test_set_if_match_applies_new_ttl(backend: MemoryBackend) -> None:
    await backend.set("k", b"v1", ttl=30)
    assert await backend.set_if_match("k", b"v2", b"v1", ttl=0.1) is True
    await asyncio.sleep(0.15)
    with pytest.raises(CacheMiss):
        await backend.get("k")


# -- bounds --


async def test_lru_bound_by_items() -> None:
    b = MemoryBackend(MemorySettings(max_items=3))
    try:
        for key in ("a", "b", "c"):
            await b.set(key, b"v")
        await b.get("a")  # "a" becomes most recent; "b" is now the eldest
        await b.set("d", b"v")
        assert b.item_count == 3
        with pytest.raises(CacheMiss):
            await b.get("b")
        for key in ("a", "c", "d"):
            assert await b.get(key) == b"v"
        assert b.evictions == 1
    finally:
        await b.stop()


async def test_lru_bound_by_bytes() -> None:
    # each entry: 1-byte key + 9-byte value + the overhead; this holds two.
    one = entry_size("a", 9)
    b = MemoryBackend(MemorySettings(max_bytes=2 * one + 100))
    try:
        await b.set("a", b"x" * 9)
        await b.set("b", b"x" * 9)
        await b.set("c", b"x" * 9)
        assert b.bytes_used - b.stale_bytes == 2 * one
        with pytest.raises(CacheMiss):
            await b.get("a")
        assert await b.get("c") == b"x" * 9
        await b.set("d", b"x" * (one + 9))  # more than one entry's room: evicts both
        assert b.item_count == 1
        assert b.bytes_used - b.stale_bytes == entry_size("d", one + 9)
        assert b.bytes_used <= 2 * one + 100
    finally:
        await b.stop()


async def test_resize_keeps_entries_and_evicts_the_eldest_when_shrunk() -> None:
    b = MemoryBackend(MemorySettings(max_items=10))
    try:
        for i in range(10):
            await b.set(f"k{i}", b"v")
        await b.get("k0")  # now the most recent
        b.resize(MemorySettings(max_items=5, default_ttl=7))
        assert b.item_count == 5
        assert b.default_ttl == 7
        for key in ("k0", "k7", "k8", "k9", "k6"):
            assert await b.get(key) == b"v"
        b.resize(MemorySettings(max_items=20))  # growing keeps everything
        assert b.item_count == 5
    finally:
        await b.stop()


async def test_key_bytes_count_towards_max_bytes() -> None:
    b = MemoryBackend(MemorySettings(max_bytes=ENTRY_OVERHEAD + 10))
    try:
        with pytest.raises(ValueTooLarge, match="maxBytes"):
            await b.set("é" * 5, b"x")  # 10 key bytes + 1 value byte
    finally:
        await b.stop()


async def test_oversized_entry_refused_and_cache_kept() -> None:
    b = MemoryBackend(MemorySettings(max_bytes=ENTRY_OVERHEAD + 100))
    try:
        await b.set("keep", b"v")
        with pytest.raises(ValueTooLarge):
            await b.set("big", b"x" * 200)
        assert await b.get("keep") == b"v"
    finally:
        await b.stop()


# -- reaper --


async def test_reaper_removes_expired_entries_without_reads(backend: MemoryBackend) -> None:
    for i in range(10):
        await backend.set(f"short{i}", b"v", ttl=0.1)
    await backend.set("long", b"v", ttl=30)
    assert backend.item_count == 11
    await wait_for(lambda: backend.item_count == 1)
    assert backend.bytes_used == entry_size("long", 1)  # the stale references went too


async def test_reaper_started_explicitly_before_any_call() -> None:
    b = MemoryBackend(MemorySettings(reap_interval=0.05))
    try:
        b.start()
        assert b._reaper is not None
        assert not b._reaper.done()
    finally:
        await b.stop()
    assert b._reaper is None


async def test_reap_works_in_batches() -> None:
    b = MemoryBackend(MemorySettings(reap_interval=3600))  # no background sweep here
    try:
        for i in range(REAP_BATCH * 2 + 10):
            await b.set(f"k{i}", b"v", ttl=0.01)
        await asyncio.sleep(0.03)
        assert b.reap() == REAP_BATCH  # one slice stops at the batch size
        assert b.item_count == REAP_BATCH + 10
        await b.reap_expired()
        assert b.item_count == 0
    finally:
        await b.stop()


async def test_reaper_yields_to_other_tasks_between_batches() -> None:
    b = MemoryBackend(MemorySettings(reap_interval=3600))
    try:
        total = REAP_BATCH * 4
        for i in range(total):
            await b.set(f"k{i}", b"v", ttl=0.01)
        await asyncio.sleep(0.03)
        seen: list[int] = []

        async def probe() -> None:
            for _ in range(3):
                seen.append(b.item_count)
                await asyncio.sleep(0)

        sweep = asyncio.create_task(b.reap_expired())
        await asyncio.gather(sweep, probe())
        assert b.item_count == 0
        assert any(0 < count < total for count in seen), seen  # ran in the middle of the sweep
    finally:
        await b.stop()


async def test_reaper_ignores_overwritten_entries(backend: MemoryBackend) -> None:
    await backend.set("k", b"old", ttl=0.05)
    await backend.set("k", b"new", ttl=30)  # the old heap item must not delete this
    await asyncio.sleep(0.15)
    backend.reap()
    assert await backend.get("k") == b"new"


async def test_wheel_is_compacted_under_repeated_overwrites() -> None:
    b = MemoryBackend(MemorySettings(reap_interval=3600, max_bytes=100_000))
    try:
        for _ in range(5000):
            await b.set("same", b"v", ttl=60)
        assert b.bytes_used <= b.settings.max_bytes
        assert b._wheel_items <= 100_000 // 4 // STALE_REF_OVERHEAD + 2
        assert await b.get("same") == b"v"
    finally:
        await b.stop()


# -- maxBytes bounds memory (issue 10, item 3) --


async def _traced_store(settings: MemorySettings, count: int, size: int) -> tuple[int, int]:
    """Fill a backend; return (bytes Python allocated for keys, values and the store,
    the backend's charge). tracemalloc counts requested sizes: allocator rounding adds
    up to ~30 B per entry, which ENTRY_OVERHEAD leaves room for (checked below)."""
    backend = MemoryBackend(settings)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            await backend.set(f"key:{i:08d}", b"%0*d" % (size, i), ttl=300)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    charged = backend.bytes_used
    await backend.stop()
    return traced, charged


# 21,900 entries: just past a table growth, where the tables cost the most per entry.
@pytest.mark.parametrize("size", [1, 100, 5000])
async def test_charge_covers_what_the_entries_really_take(size: int) -> None:
    settings = MemorySettings(max_items=10**7, max_bytes=1 << 40, reap_interval=3600)
    traced, charged = await _traced_store(settings, 21_900, size)
    assert traced + 30 * 21_900 <= charged, (traced / 21_900, charged / 21_900)


async def test_memory_stays_within_max_bytes_under_a_flood_of_tiny_entries() -> None:
    """The issue's case: tiny entries used to cost ~490 B each against a 1-2 B charge."""
    settings = MemorySettings(max_items=10**7, max_bytes=2 << 20, reap_interval=3600)
    traced, charged = await _traced_store(settings, 60_000, 1)  # ~7x what fits
    assert charged <= 2 << 20
    assert traced <= (2 << 20) * 1.1, traced


# -- bad input --


@pytest.mark.parametrize("value", ["text", 42, None, ["b"]])
async def test_non_bytes_value_refused(backend: MemoryBackend, value: object) -> None:
    with pytest.raises(InvalidValue, match="bytes"):
        await backend.set("k", value)  # type: ignore[arg-type]
    assert backend.item_count == 0


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "empty"), ("x" * 1025, "1025 bytes"), ("é" * 513, "1026 bytes"), (7, "string")],
)
async def test_bad_keys_refused(backend: MemoryBackend, key: object, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        await backend.set(key, b"v")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        await backend.get(key)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        await backend.delete(key)  # type: ignore[arg-type]


async def test_longest_valid_key_accepted(backend: MemoryBackend) -> None:
    await backend.set("k" * 1024, b"v")
    assert await backend.get("k" * 1024) == b"v"


# -- concurrency and lifecycle --


async def test_many_concurrent_tasks_keep_accounting_exact() -> None:
    b = MemoryBackend(MemorySettings(max_items=500, reap_interval=0.01))
    try:

        async def worker(n: int) -> None:
            for i in range(200):
                key = f"k{(n * 7 + i) % 800}"
                await b.set(key, b"x" * (i % 13), ttl=0.05 if i % 3 == 0 else 30)
                if i % 5 == 0:
                    await b.delete(key)
                await b.set_nx(f"nx{i % 50}", b"v")
                await asyncio.sleep(0)

        await asyncio.gather(*(worker(n) for n in range(50)))
        assert b.item_count <= 500
        expected = sum(
            entry_size(key, len(memory._value(stored))) for key, stored in b._entries.items()
        )
        assert b.bytes_used - b.stale_bytes == expected
    finally:
        await b.stop()


async def test_stop_is_idempotent_and_later_calls_fail() -> None:
    b = MemoryBackend(MemorySettings())
    await b.set("k", b"v")
    await b.stop()
    await b.stop()
    with pytest.raises(BackendUnavailable, match="stopped"):
        await b.get("k")


@pytest.mark.parametrize("key", ["podcache:lock:{job}", "podcache:leader:{x}", "podcache:"])
async def test_reserved_key_space_refused(key: str) -> None:
    """Keys under 'podcache:' would collide with lock and election keys in Redis."""
    backend = MemoryBackend(MemorySettings())
    try:
        with pytest.raises(InvalidKey, match="reserved"):
            await backend.set(key, b"v")
        await backend.set("podcache-not-reserved", b"v")
        assert await backend.get("podcache-not-reserved") == b"v"
    finally:
        await backend.stop()


# -- ETags --


async def test_large_value_is_hashed_once_per_write(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MiB value's ETag is computed on its first read and kept (issue 11: it was
    recomputed by every GET); a new write gets a new tag."""
    from podcache import etags

    calls: list[int] = []
    real = etags.etag_of

    def counting(value: bytes) -> str:
        calls.append(len(value))
        return real(value)

    monkeypatch.setattr(etags, "etag_of", counting)
    big = b"x" * (1 << 20)
    await backend.set("big", big)
    first = await backend.get_with_etag("big")
    second = await backend.get_with_etag("big")
    assert first == second == (big, real(big))
    assert calls == [1 << 20]
    await backend.set("big", big + b"y")
    assert (await backend.get_with_etag("big"))[1] == real(big + b"y")
    await backend.set("small", b"hello")
    assert await backend.get_with_etag("small") == (b"hello", real(b"hello"))
