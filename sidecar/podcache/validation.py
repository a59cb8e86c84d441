"""Checks every backend applies to keys, values and TTLs, in one place.

Backends call these first so both behave identically on bad input: the error is
raised before any state changes.
"""

from __future__ import annotations

from podcache.errors import InvalidKey, InvalidTTL, InvalidValue

MAX_KEY_BYTES = 1024
RESERVED_KEY_PREFIX = "podcache:"
"""Locks and elections live under ``<keyPrefix>podcache:`` in Redis; a cache key there
could overwrite a lock or a lease, so both backends refuse such keys alike."""


def check_name(name: object, *, what: str, max_bytes: int = MAX_KEY_BYTES) -> str:
    """Return ``name`` if it is a non-empty str of at most ``max_bytes`` UTF-8 bytes."""
    if not isinstance(name, str):
        raise InvalidKey(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidKey(f"{what} must not be empty")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidKey(f"{what} is {size} bytes, the limit is {max_bytes}")
    return name


def check_key(key: object, *, max_bytes: int = MAX_KEY_BYTES) -> str:
    """Return ``key`` if it is a valid cache key: a name outside the reserved space."""
    check_name(key, what="key", max_bytes=max_bytes)
    assert isinstance(key, str)
    if key.startswith(RESERVED_KEY_PREFIX):
        raise InvalidKey(
            f"keys starting with {RESERVED_KEY_PREFIX!r} are reserved for locks and elections"
        )
    return key


def check_value(value: object) -> bytes:
    """Return ``value`` as bytes; bytearray/memoryview are copied, anything else refused."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise InvalidValue(f"value must be bytes, got {type(value).__name__}")


def resolve_ttl(ttl: float | None, default_ttl: float) -> float:
    """Seconds to keep an entry: ``0``/``None`` means the default, negatives are refused."""
    if ttl is None or ttl == 0:
        return default_ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidTTL(f"ttl must be a number of seconds, got {ttl!r}")
    if ttl < 0 or ttl != ttl:
        raise InvalidTTL(f"ttl must not be negative, got {ttl!r}")
    return float(ttl)
