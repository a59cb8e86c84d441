"""The interface every storage backend implements.

Mirrors the seed's Go ``Client`` (Get/Set/Delete/Stop) made asynchronous, plus the
two conditional writes the socket API needs. Metrics are not a backend concern:
``podcache.cache.Cache`` wraps a backend and counts every call once.
"""

from __future__ import annotations

import abc

from podcache import etags


class Backend(abc.ABC):
    """Async key/value storage with TTLs. Keys are str, values are bytes."""

    default_ttl: float
    """Seconds used when a caller passes ttl=0."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """Return the value; raise ``CacheMiss`` when absent or expired."""

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The value and its ETag (``podcache.etags``); a backend that keeps the tag overrides."""
        value = await self.get(key)
        return value, etags.etag_of(value)

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float = 0) -> None:
        """Store unconditionally; ttl 0 means the default TTL."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the key; return whether it existed. Deleting a missing key is fine."""

    @abc.abstractmethod
    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        """Store only if absent; return whether it was stored."""

    @abc.abstractmethod
    async def set_if_match(self, key: str, value: bytes, expected: bytes, ttl: float = 0) -> bool:
        """Store only if the current value equals ``expected``; return whether it was stored."""

    @abc.abstractmethod
    async def count_items(self) -> int:
        """How many live entries this backend (this tenant) holds, for the items gauge."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise ``BackendUnavailable`` otherwise."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Release connections and background tasks. Idempotent."""
