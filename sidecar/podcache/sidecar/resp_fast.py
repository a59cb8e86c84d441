"""GET and SET on the memory backend for the RESP batch loop: no coroutine per command.

Why: on the memory backend nothing waits, yet the general path (``resp_commands``)
gives every GET three coroutines (the handler, the ``Cache`` facade, the backend),
driven by hand to their ``StopIteration``, two clock reads and a metrics update. For
a pipelined batch of 16 GETs that was most of the sidecar's CPU (py-spy, issue 12's
``-P 16`` case). Here ``resp_server`` calls one plain method per batch, which answers
the GETs and SETs at the head of the connection's queue in one loop, and the cache
metrics are counted once per batch: the same counts, each call observed at the batch's
mean duration (tallied in plain attributes and folded in at a scrape when that mean is
within the histogram's first bucket, as it nearly always is; else at once).

Only the common shapes are taken: ``GET key`` and ``SET key value`` (no options),
with a key that is non-empty, within both key limits (the config's and the backend's
own), outside the reserved space and valid UTF-8, and a value within
``limits.maxValueBytes``. Anything else, and any failure (a stopped backend, an entry
over ``maxBytes``), stops the batch before changing anything, and the command goes the
general way, which answers and counts it exactly as before.
"""

from __future__ import annotations

import collections
from time import get_clock_info, monotonic, perf_counter
from typing import TYPE_CHECKING

from podcache import validation
from podcache.backends.memory import MemoryBackend
from podcache.metrics import DURATION_BUCKETS
from podcache.sidecar import resp_wire as wire

if TYPE_CHECKING:
    from podcache.metrics import CacheMetrics
    from podcache.sidecar.state import SidecarState

_RESERVED = validation.RESERVED_KEY_PREFIX.encode()
_P = _RESERVED[0]
_OK = wire.OK
_NULL2 = wire.NULL2
_NULL3 = wire.NULL3
_CRLF = b"\r\n"
_BULK_HEADERS = [b"$%d\r\n" % size for size in range(1024)]
"""``$<len>\\r\\n`` of the common value sizes: a concatenation instead of a %-format."""
_KNOWN = len(_BULK_HEADERS)
_CLOCK_EVERY = 64
"""GETs per read of the clock for the expiry checks (a read costs about a tenth of a GET)."""
_QUICK = DURATION_BUCKETS[0]
"""A batch whose calls took less than this each is counted in the histogram's first bucket."""
_ONE_CLOCK = (
    get_clock_info("perf_counter").implementation == get_clock_info("monotonic").implementation
)
"""Whether the batch's start time is also a ``monotonic()`` reading (on Linux both are
CLOCK_MONOTONIC): then a one-GET batch reads the clock twice, not three times."""


class MemoryFast:
    """One memory backend's fast GET/SET and the counts of the batch in progress."""

    __slots__ = (
        "backend",
        "config",
        "get_seconds",
        "hits",
        "max_key",
        "max_value",
        "metrics",
        "misses",
        "peek",
        "set_seconds",
        "sets",
        "ttl",
    )

    def __init__(self, backend: MemoryBackend, metrics: CacheMetrics) -> None:
        self.backend = backend
        self.peek = backend.peek
        """``get`` without the coroutine, the key check (done here) and the running check,
        which ``ready`` makes once per batch (nothing stops the backend mid-batch)."""
        self.metrics = metrics
        self.hits = self.misses = self.sets = 0
        self.get_seconds = self.set_seconds = 0.0
        """Tallies of the batches whose calls each took under ``_QUICK``, kept here until a
        scrape (``fold``): adding five numbers per batch costs less than the histogram's
        dictionaries and bucket search. Slower batches are counted at once."""
        metrics.add_pending(self.fold)
        self.max_key = self.max_value = 0
        self.ttl = 0.0
        self.config: object = None
        """The config the limits were read from (a reload replaces the object)."""

    def begin(self, state: SidecarState) -> None:
        """Read the limits and the default TTL of the current config."""
        self.config = state.config
        limits = state.config.limits
        # The backend checks keys against its own bound too (validation.MAX_KEY_BYTES).
        self.max_key = min(limits.max_key_bytes, validation.MAX_KEY_BYTES)
        self.max_value = limits.max_value_bytes
        self.ttl = state.config.backend.default_ttl

    def ready(self) -> bool:
        """Whether the backend serves (and its reaper runs); False once it is stopped."""
        try:
            self.backend.start()
        except Exception:  # stopped: every command takes the general path and its error
            return False
        return True

    def prepare(self, state: SidecarState) -> bool:
        """``begin`` if a reload replaced the config, then ``ready``: once per batch.

        A running reaper means a serving backend (``stop`` drops it as it stops the
        backend), so the usual case is answered without ``ready``'s two calls, about a
        tenth of an unpipelined GET's Python time."""
        if self.config is not state.config:
            self.begin(state)
        reaper = self.backend._reaper
        if reaper is not None and not reaper.done():
            return True
        return self.ready()

    def run(self, queue: collections.deque[list[bytes]], out: list[bytes], proto: int) -> None:
        """Answer the plain GETs and SETs at the head of ``queue``: each is popped and its
        reply appended to ``out``; the first other command (or one that fails) is left at
        the head for the general path. The batch's calls are counted on return.

        One call per batch, not per command, with everything bound once: at ``-P 16`` the
        per-command call, attribute reads and clock reads were a third of the Python time.
        Nothing in here can pause the transport or close the connection (no write, no
        await), so the caller's checks between commands are not needed here."""
        started = perf_counter()
        backend = self.backend
        peek = self.peek
        max_key = self.max_key
        max_value = self.max_value
        null = _NULL3 if proto == 3 else _NULL2
        # The module's constants are not bound here: a global read is nearly a local's
        # (3.11 caches it), and an unpipelined batch of one GET would pay for the binding.
        popleft = queue.popleft
        append = out.append
        hits = misses = sets = 0
        # The clock for the expiry checks is read once per _CLOCK_EVERY commands, not per
        # GET: an entry is served at most that many commands' time (~50 us) past its end.
        now = started if _ONE_CLOCK else monotonic()
        clock = _CLOCK_EVERY
        try:
            while queue:
                args = popleft()  # put back below if it is not for this path
                count = len(args)
                if count == 2:
                    name = args[0]
                    if name != b"GET" and name != b"get":  # two compares beat a set
                        break
                elif count == 3:
                    name = args[0]
                    if name != b"SET" and name != b"set":
                        break
                    if len(args[2]) > max_value:
                        break
                else:
                    break
                raw = args[1]
                # The first byte before startswith: a method call costs more than an index.
                if not raw or len(raw) > max_key or (raw[0] == _P and raw.startswith(_RESERVED)):
                    break
                try:
                    key = raw.decode()
                    if count == 3:
                        backend.store(key, args[2], self.ttl)
                        sets += 1
                        append(_OK)
                        continue
                    clock -= 1
                    if not clock:
                        now = monotonic()
                        clock = _CLOCK_EVERY
                    value = peek(key, now)
                except Exception:  # bad UTF-8, a stopped backend, over maxBytes: unchanged
                    break
                if value is None:
                    misses += 1
                    append(null)
                    continue
                hits += 1
                size = len(value)
                if size < _KNOWN:
                    append(_BULK_HEADERS[size] + value + _CRLF)
                else:
                    append(b"$%d\r\n%b\r\n" % (size, value))
            else:
                return
            queue.appendleft(args)  # the general path answers it
        finally:
            done = hits + misses + sets
            if done:
                seconds = perf_counter() - started
                if seconds < done * _QUICK:  # the usual: tallied here, folded at a scrape
                    # Only the tallies that change: a batch is mostly all GETs or all SETs.
                    if hits:
                        self.hits += hits
                    if misses:
                        self.misses += misses
                    if not sets:
                        self.get_seconds += seconds
                    else:
                        self.sets += sets
                        gets = seconds * (hits + misses) / done
                        self.get_seconds += gets
                        self.set_seconds += seconds - gets
                else:
                    self._count(hits, misses, sets, seconds)

    def _count(self, hits: int, misses: int, sets: int, seconds: float) -> None:
        """Count a batch's calls in the cache metrics; ``seconds``: the batch's time."""
        each = seconds / (hits + misses + sets)
        observe = self.metrics.observe_many
        if hits:
            observe("get", "hit", hits, each * hits)
        if misses:
            observe("get", "miss", misses, each * misses)
        if sets:
            observe("set", "ok", sets, each * sets)

    def fold(self) -> None:
        """Add the tallies of the quick batches to the cache metrics (before a scrape)."""
        if self.hits or self.misses or self.sets:
            self.metrics.add_quick(
                hits=self.hits, misses=self.misses, sets=self.sets,
                get_seconds=self.get_seconds, set_seconds=self.set_seconds,
            )  # fmt: skip
            self.hits = self.misses = self.sets = 0
            self.get_seconds = self.set_seconds = 0.0
