"""One budget for the request bodies held in memory at once, across all connections.

``maxBytes`` bounds what the memory backend stores; without this, 50 concurrent
1 MiB PUTs would hold 50 MiB (twice that while each is joined from its chunks) on top
of it, and an OOM kill loses every entry. A PUT claims ``2 * length`` before reading
its body (the chunks plus the joined copy exist together for a moment), chunk by
chunk when the length is not declared, and gives it back when the request is done:
then the value is either stored, and counted by the backend, or gone.

A PUT that does not fit answers at once, before its body is read: 503 ``overloaded``
with ``Retry-After`` (others are uploading; nothing stored is touched). A body that
could never fit is refused by the config check instead (``maxInflightBytes`` is at
least twice ``maxValueBytes``).

BEWARE: aiohttp buffers up to ~256 KiB per connection below this (its read-ahead
before a handler reads); ``limits.maxConnections`` bounds that part.
"""

from __future__ import annotations

RETRY_AFTER = "1"
"""Seconds: a body in flight on the socket takes milliseconds, not more."""


class BodyBudget:
    """Bytes of request bodies in memory now, against the limit of the current config."""

    def __init__(self) -> None:
        self.used = 0

    def claim(self, limit: int) -> Claim:
        """A claim on the budget for one request (a context manager): everything taken is
        given back on exit. A class, not ``contextlib.contextmanager``: no generator per PUT."""
        return Claim(self, limit)


class Claim:
    """What one request holds of the budget."""

    def __init__(self, budget: BodyBudget, limit: int) -> None:
        self._budget = budget
        self._limit = limit
        self.held = 0

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._budget.used -= self.held
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``2 * size`` more bytes, or raise 503 ``overloaded`` holding nothing more."""
        needed = 2 * size
        if self._budget.used + needed > self._limit:
            # Imported here: errors imports state, which imports this module.
            from podcache.sidecar.errors import ApiError

            raise ApiError(
                503,
                "overloaded",
                f"request bodies in memory would exceed limits.maxInflightBytes "
                f"({self._limit} bytes, {self._budget.used} in use); retry shortly",
                headers={"Retry-After": RETRY_AFTER},
            )
        self._budget.used += needed
        self.held += needed
