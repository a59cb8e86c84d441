"""GET and SET on the memory backend for the RESP batch loop: no coroutine per command.

Why: on the memory backend nothing waits, yet the general path (``resp_commands``)
gives every GET three coroutines (the handler, the ``Cache`` facade, the backend),
driven by hand to their ``StopIteration``, two clock reads and a metrics update. For
a pipelined batch of 16 GETs that was most of the sidecar's CPU (py-spy, issue 12's
``-P 16`` case). Here ``resp_server`` calls one plain method per command, and the
cache metrics are counted once per batch (``CacheMetrics.observe_many``): the same
counts, each call observed at the batch's mean duration.

Only the common shapes are taken: ``GET key`` and ``SET key value`` (no options),
with a key that is non-empty, within both key limits (the config's and the backend's
own), outside the reserved space and valid UTF-8, and a value within
``limits.maxValueBytes``. Anything else, and any failure (a stopped backend, an entry
over ``maxBytes``), returns None before changing anything, and the command goes the
general way, which answers and counts it exactly as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from podcache import validation
from podcache.backends.memory import MemoryBackend
from podcache.sidecar import resp_wire as wire

if TYPE_CHECKING:
    from podcache.metrics import CacheMetrics
    from podcache.sidecar.state import SidecarState

_RESERVED = validation.RESERVED_KEY_PREFIX.encode()
_OK = wire.OK
_NULL2 = wire.NULL2
_NULL3 = wire.NULL3


class MemoryFast:
    """One memory backend's fast GET/SET and the counts of the batch in progress."""

    __slots__ = (
        "backend", "config", "hits", "max_key", "max_value", "metrics", "misses", "peek", "sets",
        "ttl",
    )

    def __init__(self, backend: MemoryBackend, metrics: CacheMetrics) -> None:
        self.backend = backend
        self.peek = backend.peek
        """``get`` without the coroutine, the key check (done here) and the running check,
        which ``ready`` makes once per batch (nothing stops the backend mid-batch)."""
        self.metrics = metrics
        self.hits = self.misses = self.sets = 0
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

    def command(self, args: list[bytes], proto: int) -> bytes | None:
        """The reply to ``args`` if it is a plain GET or SET that succeeds, else None."""
        count = len(args)
        if count == 2:
            name = args[0]
            if name != b"GET" and name != b"get":  # two compares beat a set
                return None
        elif count == 3:
            name = args[0]
            if name != b"SET" and name != b"set":
                return None
            if len(args[2]) > self.max_value:
                return None
        else:
            return None
        raw = args[1]
        if not raw or len(raw) > self.max_key or raw.startswith(_RESERVED):
            return None
        try:
            key = raw.decode()
            if count == 3:
                self.backend.store(key, args[2], self.ttl)
                self.sets += 1
                return _OK
            value = self.peek(key)
        except Exception:  # bad UTF-8, a stopped backend, over maxBytes: nothing changed
            return None
        if value is None:
            self.misses += 1
            return _NULL3 if proto == 3 else _NULL2
        self.hits += 1
        return b"$%d\r\n%b\r\n" % (len(value), value)

    def flush(self, seconds: float) -> None:
        """Count the batch's calls in the cache metrics; ``seconds``: the batch's time."""
        hits, misses, sets = self.hits, self.misses, self.sets
        done = hits + misses + sets
        if not done:
            return
        self.hits = self.misses = self.sets = 0
        each = seconds / done
        observe = self.metrics.observe_many
        if hits:
            observe("get", "hit", hits, each * hits)
        if misses:
            observe("get", "miss", misses, each * misses)
        if sets:
            observe("set", "ok", sets, each * sets)
