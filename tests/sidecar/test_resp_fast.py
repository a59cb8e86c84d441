"""The memory backend's one-pass GET/SET for the RESP batch loop (``resp_fast``), in process.

Aspects:
- a batch answers the plain GETs/SETs at the head of the queue and leaves the first
  other command, and everything after it, in the queue untouched;
- replies are Redis's bulk strings, null in RESP2 and RESP3, for values below and above
  the pre-encoded header sizes (and the empty value);
- the expiry clock is read again within a long batch, so an entry is served at most
  ``_CLOCK_EVERY`` GETs past its end;
- the cache metrics count each call once.

The wire-level behaviour (mixed pipelines, MULTI inside a batch, counts on a scrape) is
in ``test_resp_lifecycle``; the reply bytes against a real redis-server in
``test_resp_commands``.
"""

from __future__ import annotations

import collections
import itertools
import time
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from podcache import configfile
from podcache.backends.memory import MemoryBackend
from podcache.config import MemorySettings
from podcache.metrics import CacheMetrics
from podcache.sidecar import resp_fast

Queue = collections.deque[list[bytes]]


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    store = MemoryBackend(MemorySettings(default_ttl=300))
    store.start()
    yield store
    await store.stop()


def _fast(backend: MemoryBackend) -> tuple[resp_fast.MemoryFast, CacheMetrics]:
    metrics = CacheMetrics(CollectorRegistry())
    fast = resp_fast.MemoryFast(backend, metrics)
    state: Any = types.SimpleNamespace(config=configfile.loads("type: memory\n"))
    fast.begin(state)
    return fast, metrics


async def test_stops_at_the_first_other_command(backend: MemoryBackend) -> None:
    fast, metrics = _fast(backend)
    queue: Queue = collections.deque([
        [b"SET", b"a", b"1"], [b"get", b"a"], [b"GET", b"missing"],
        [b"GET", b"podcache:x"],  # reserved: the general path refuses it
        [b"GET", b"a"],
    ])  # fmt: skip
    out: list[bytes] = []
    fast.run(queue, out, 2)
    assert out == [b"+OK\r\n", b"$1\r\n1\r\n", b"$-1\r\n"]
    assert list(queue) == [[b"GET", b"podcache:x"], [b"GET", b"a"]]
    for stops in ([b"GET", b"a", b"b"], [b"SET", b"a", b"1", b"EX", b"1"], [b"INCR", b"a"],
                  [b"GET", b"\xff"], [b"GET", b""], [b"GET", b"k" * 1025]):  # fmt: skip
        queue = collections.deque([stops, [b"GET", b"a"]])
        out = []
        fast.run(queue, out, 2)
        assert out == [], stops
        assert list(queue) == [stops, [b"GET", b"a"]], stops
    assert _scraped(metrics) == {"hit": 1, "miss": 1, "ok": 1, "get": 2, "set": 1}


def _scraped(metrics: CacheMetrics) -> dict[str, float | None]:
    """What a scrape shows: requests by status, histogram counts by operation."""
    sample = metrics.registry.get_sample_value
    shown = {
        status: sample("lab_cache_requests_total", {"operation": op, "status": status})
        for op, status in (("get", "hit"), ("get", "miss"), ("set", "ok"))
    }
    for op in ("get", "set"):
        shown[op] = sample("lab_cache_operation_duration_seconds_count", {"operation": op})
    return shown


async def test_quick_batches_tallied_slow_ones_counted_at_once(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, metrics = _fast(backend)
    backend.store("k", b"v")
    # The batch's clock is fixed: on a busy machine a real reading can exceed 50 µs a call.
    monkeypatch.setattr(resp_fast, "_ONE_CLOCK", False)
    quick = iter([0.0, 2e-6])
    monkeypatch.setattr(resp_fast, "perf_counter", lambda: next(quick))
    fast.run(collections.deque([[b"GET", b"k"], [b"SET", b"k", b"w"]]), [], 2)
    assert metrics._counts["get", "hit"] == 0  # tallied in fast, not yet folded
    assert _scraped(metrics) == {"hit": 1, "miss": 0, "ok": 1, "get": 1, "set": 1}
    first = 'lab_cache_operation_duration_seconds_bucket{le="5e-05",operation="get"} 1.0'
    assert first in generate_latest(metrics.registry).decode()
    # A batch of 2 GETs that took 1 s: counted at once, in the bucket of its mean (0.5 s).
    readings = iter([0.0, 1.0])
    monkeypatch.setattr(resp_fast, "perf_counter", lambda: next(readings))
    fast.run(collections.deque([[b"GET", b"k"], [b"GET", b"nope"]]), [], 2)
    assert metrics._counts["get", "hit"] == 2
    assert metrics._counts["get", "miss"] == 1
    text = generate_latest(metrics.registry).decode()
    assert 'lab_cache_operation_duration_seconds_bucket{le="0.25",operation="get"} 1.0' in text
    assert 'lab_cache_operation_duration_seconds_bucket{le="0.5",operation="get"} 3.0' in text
    assert _sum(text) == pytest.approx(1.0, abs=1e-3)  # 1 s plus the quick batch's
    assert _scraped(metrics) == {"hit": 2, "miss": 1, "ok": 1, "get": 3, "set": 1}


def _sum(text: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(
        'lab_cache_operation_duration_seconds_sum{operation="get"}'))  # fmt: skip
    return float(line.split()[-1])


@pytest.mark.parametrize("size", [0, 1, 100, 1023, 1024, 5000])
async def test_bulk_replies_of_every_size(backend: MemoryBackend, size: int) -> None:
    fast, _ = _fast(backend)
    value = bytes(range(256)) * (size // 256) + b"\r\n" * (size % 256 // 2) + b"x" * (size % 2)
    assert len(value) == size
    backend.store("k", value)
    for proto, null in ((2, b"$-1\r\n"), (3, b"_\r\n")):
        out: list[bytes] = []
        fast.run(collections.deque([[b"GET", b"k"], [b"GET", b"nope"]]), out, proto)
        assert out == [b"$%d\r\n%b\r\n" % (size, value), null]


async def test_clock_read_again_within_a_long_batch(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, _ = _fast(backend)
    backend.store("k", b"v", ttl=100)
    now = time.monotonic()
    readings = itertools.chain([now], itertools.repeat(now + 200))  # it ends in between
    monkeypatch.setattr(resp_fast, "monotonic", lambda: next(readings))
    monkeypatch.setattr(resp_fast, "_ONE_CLOCK", False)  # the first reading is monotonic's
    queue: Queue = collections.deque([b"GET", b"k"] for _ in range(2 * resp_fast._CLOCK_EVERY))
    out: list[bytes] = []
    fast.run(queue, out, 2)
    served = resp_fast._CLOCK_EVERY - 1  # the clock is read before the 64th GET's lookup
    assert out == [b"$1\r\nv\r\n"] * served + [b"$-1\r\n"] * (len(out) - served)
    assert len(out) == 2 * resp_fast._CLOCK_EVERY


async def test_quick_tallies_split_the_batch_time_by_operation(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All-GET, all-SET and mixed batches: each operation's sum gets its share."""
    fast, metrics = _fast(backend)
    readings = iter([0.0, 4e-6, 10.0, 10.000006, 20.0, 20.000009])
    monkeypatch.setattr(resp_fast, "perf_counter", lambda: next(readings))
    monkeypatch.setattr(resp_fast, "_ONE_CLOCK", False)  # the expiry clock stays real
    fast.run(collections.deque([[b"GET", b"a"], [b"GET", b"b"]]), [], 2)
    fast.run(collections.deque([[b"SET", b"a", b"1"], [b"SET", b"b", b"2"]]), [], 2)
    fast.run(collections.deque([[b"GET", b"a"], [b"GET", b"b"], [b"SET", b"c", b"3"]]), [], 2)
    sample = metrics.registry.get_sample_value
    assert _scraped(metrics) == {"hit": 2, "miss": 2, "ok": 3, "get": 4, "set": 3}
    get_sum = sample("lab_cache_operation_duration_seconds_sum", {"operation": "get"})
    set_sum = sample("lab_cache_operation_duration_seconds_sum", {"operation": "set"})
    assert get_sum == pytest.approx(4e-6 + 6e-6)
    assert set_sum == pytest.approx(6e-6 + 3e-6)


async def test_prepare_follows_reloads_and_a_stop(backend: MemoryBackend) -> None:
    """``prepare``: the new config's limits after a reload; False once the backend stops
    (the general path answers with its error), without the reaper check misleading it."""
    metrics = CacheMetrics(CollectorRegistry())
    fast = resp_fast.MemoryFast(backend, metrics)
    state: Any = types.SimpleNamespace(config=configfile.loads("type: memory\n"))
    assert fast.prepare(state)
    assert fast.config is state.config
    state.config = configfile.loads("type: memory\nlimits:\n  maxValueBytes: 10\n")
    assert fast.prepare(state)
    assert fast.max_value == 10
    await backend.stop()
    assert not fast.prepare(state)


async def test_batch_start_is_the_expiry_clock_when_the_clocks_agree(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where perf_counter is CLOCK_MONOTONIC too, the batch's start time serves as the
    expiry checks' first reading: an entry past its end at that time is not served."""
    fast, _ = _fast(backend)
    backend.store("k", b"v", ttl=100)
    later = time.monotonic() + 200
    monkeypatch.setattr(resp_fast, "_ONE_CLOCK", True)
    monkeypatch.setattr(resp_fast, "perf_counter", lambda: later)
    out: list[bytes] = []
    fast.run(collections.deque([[b"GET", b"k"]]), out, 2)
    assert out == [b"$-1\r\n"]
    assert (
        time.get_clock_info("perf_counter").implementation
        == time.get_clock_info("monotonic").implementation
    ), "Linux, CPython 3.11: the one-clock case is the one that runs"
