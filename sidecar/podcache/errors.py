"""The library's error hierarchy.

Every failure a caller may want to tell apart has its own class here, so the
socket server can map each one to one HTTP status in a single middleware and
the clients can raise the very same classes on the other side of the socket.
"""

from __future__ import annotations


class PodcacheError(Exception):
    """Base of every error raised by podcache on purpose."""


class ConfigError(PodcacheError, ValueError):
    """A configuration is invalid; ``field`` names the offending key path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class InvalidKey(PodcacheError, ValueError):
    """A key is empty, too long, or not a string."""


class InvalidValue(PodcacheError, TypeError):
    """A value is not bytes."""


class InvalidTTL(PodcacheError, ValueError):
    """A TTL is negative, unparsable or above an allowed maximum."""


class ValueTooLarge(PodcacheError, ValueError):
    """A value exceeds the configured maximum size."""


class CacheMiss(PodcacheError, KeyError):
    """The key is absent or has expired."""

    def __str__(self) -> str:  # KeyError's repr-quoting is noise here
        return Exception.__str__(self)


class BackendUnavailable(PodcacheError):
    """The backend (Redis) did not answer within the operation timeout or refused us."""

    retry_after: float | None = None
    """Seconds the sidecar suggested waiting (its ``Retry-After``), when known."""


class TooManyWaiters(PodcacheError):
    """A blocking lock acquire found its wait budget used up (Redis ``waitPoolSize``).

    Only the waiting caller is refused, at once; the cache and the other locks keep
    serving. Retry later, or acquire without ``wait``.
    """

    retry_after: float | None = None
    """Seconds the sidecar suggested waiting (its ``Retry-After``), when known."""


class ClientError(PodcacheError, ConnectionError):
    """The socket client could not reach the sidecar, or lost it mid-request."""


class ServerError(PodcacheError):
    """The sidecar answered with an error code that has no class of its own."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class LockError(PodcacheError):
    """Base of lock failures."""

    def __init__(self, message: str, *, lock_name: str) -> None:
        super().__init__(message)
        self.lock_name = lock_name


class LockNotAcquired(LockError):
    """The lock is held by someone else and did not become free within ``wait``."""


class NotOwner(LockError):
    """Release or refresh with a token that does not (or no longer) own the lock."""


class LockLost(LockError):
    """A held lock could not be refreshed: another holder may have it now."""


__all__ = [
    "BackendUnavailable",
    "CacheMiss",
    "ClientError",
    "ConfigError",
    "InvalidKey",
    "InvalidTTL",
    "InvalidValue",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "NotOwner",
    "PodcacheError",
    "ServerError",
    "TooManyWaiters",
    "ValueTooLarge",
]
