"""The socket API as data: what to send for each operation and what each reply means.

This module does no I/O (a "sans-I/O" layer). Each operation is a ``Call``: the
method, the already percent-encoded path, the body and headers, and an
``interpret`` function turning the sidecar's ``Reply`` into a value or a typed
error. The sync ``Client`` and the async ``AsyncClient`` only move bytes; because
both run the same ``Call``s, they cannot drift apart on encoding or error mapping.

Beware: keys travel as ONE path segment, so ``/``, ``%``, ``?`` and ``#`` must be
percent-encoded (``quote(key, safe="")``); the server matches on the still-encoded
path and decodes the segment itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from podcache import durations
from podcache.client import models
from podcache.errors import (
    BackendUnavailable,
    CacheMiss,
    InvalidKey,
    InvalidTTL,
    InvalidValue,
    LockNotAcquired,
    NotOwner,
    PodcacheError,
    ServerError,
    TooManyWaiters,
    ValueTooLarge,
)

# Same value as podcache.configfile.DEFAULT_SOCKET; not imported from there because that
# module pulls in PyYAML, and the CLI's startup probe must stay cheap.
DEFAULT_SOCKET = "/var/run/podcache/cache.sock"
SOCKET_ENV = "PODCACHE_SOCKET"

T = TypeVar("T")
Duration = float | int | str
"""Seconds (a number) or a Go-style duration string ("300ms", "30s", "5m")."""


@dataclasses.dataclass(frozen=True)
class Reply:
    """One complete HTTP response; header names are lower-case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclasses.dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the socket API and the meaning of its reply."""

    method: str
    path: str
    interpret: Callable[[Reply], T]
    body: bytes | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    blocks_for: float = 0.0
    """Seconds the sidecar may hold the request on purpose (a lock's wait): added to the timeout."""


def resolve_socket(path: str | os.PathLike[str] | None = None) -> str:
    """The socket to use: the argument, else ``$PODCACHE_SOCKET``, else the default path."""
    if path is not None and str(path):
        return os.fspath(path)
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def segment(text: str, *, what: str = "key") -> str:
    """Percent-encode ``text`` as one path segment (every byte but A-Z a-z 0-9 - . _ ~)."""
    if not isinstance(text, str):
        raise InvalidKey(f"{what} must be a string, got {type(text).__name__}")
    if not text:
        raise InvalidKey(f"{what} must not be empty")
    try:
        return quote(text, safe="", encoding="utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"{what} is not valid UTF-8 text: {text!r}") from exc


def seconds(value: Duration, *, field: str = "ttl") -> float:
    """A ttl/wait argument as seconds; bad values raise ``InvalidTTL`` before anything is sent."""
    try:
        return durations.parse_duration(value, field=field)
    except ValueError as exc:
        raise InvalidTTL(str(exc)) from exc


def duration_text(value: float) -> str:
    """Seconds as a duration string every parser on the other side accepts ("0.2s", "30s")."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _value(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise InvalidValue(f"value must be bytes, got {type(value).__name__}")


def _ttl_query(ttl: Duration) -> str:
    ttl_seconds = seconds(ttl)
    return f"ttl={quote(duration_text(ttl_seconds))}" if ttl_seconds else ""


def _path(base: str, *params: str) -> str:
    query = "&".join(param for param in params if param)
    return f"{base}?{query}" if query else base


# -- error mapping ---------------------------------------------------------------------------

_TYPED_ERRORS: dict[str, type[PodcacheError]] = {
    "not_found": CacheMiss,
    "backend_unavailable": BackendUnavailable,
    "invalid_key": InvalidKey,
    "invalid_ttl": InvalidTTL,
    "invalid_value": InvalidValue,
    "too_large": ValueTooLarge,
    "too_many_waiters": TooManyWaiters,
}


def error_from(reply: Reply, *, lock_name: str | None = None) -> PodcacheError:
    """The exception a failed reply stands for, decoded from its JSON ``error`` code."""
    code, message = _error_fields(reply)
    if code in ("locked", "not_owner") and lock_name is not None:
        lock_class = LockNotAcquired if code == "locked" else NotOwner
        return lock_class(message, lock_name=lock_name)
    typed = _TYPED_ERRORS.get(code)
    if typed is None:
        return ServerError(message, code=code, status=reply.status)
    error = typed(message)
    if isinstance(error, BackendUnavailable | TooManyWaiters):
        error.retry_after = _retry_after(reply.headers.get("retry-after"))
    return error


def _error_fields(reply: Reply) -> tuple[str, str]:
    try:
        payload = json.loads(reply.body) if reply.body else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message = payload.get("message")
        return payload["error"], str(message) if message else payload["error"]
    text = reply.body[:200].decode("utf-8", "replace").strip()
    return f"http_{reply.status}", f"HTTP {reply.status}" + (f": {text}" if text else "")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough that the caller's own backoff is fine


def _json(reply: Reply) -> Any:
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        raise ServerError(f"malformed reply from the sidecar: not JSON: {reply.body[:200]!r}",
                          code="malformed_reply", status=reply.status) from exc


def _expect(status: int, *, lock_name: str | None = None) -> Callable[[Reply], None]:
    def interpret(reply: Reply) -> None:
        if reply.status != status:
            raise error_from(reply, lock_name=lock_name)
    return interpret


# -- cache -----------------------------------------------------------------------------------

def _cache_path(key: str) -> str:
    return "/v1/cache/" + segment(key)


def get(key: str) -> Call[bytes]:
    def interpret(reply: Reply) -> bytes:
        if reply.status == 200:
            return reply.body
        raise error_from(reply)
    return Call("GET", _cache_path(key), interpret)


def get_with_etag(key: str) -> Call[tuple[bytes, str]]:
    def interpret(reply: Reply) -> tuple[bytes, str]:
        if reply.status != 200:
            raise error_from(reply)
        etag = reply.headers.get("etag")
        if not etag:
            raise ServerError("malformed reply from the sidecar: no ETag on GET",
                              code="malformed_reply", status=reply.status)
        return reply.body, etag
    return Call("GET", _cache_path(key), interpret)


def put(key: str, value: bytes, *, ttl: Duration = 0) -> Call[None]:
    """``set``: named ``put`` here so this module never shadows the builtin."""
    return Call("PUT", _path(_cache_path(key), _ttl_query(ttl)), _expect(204), body=_value(value))


def set_if_absent(key: str, value: bytes, *, ttl: Duration = 0) -> Call[bool]:
    def interpret(reply: Reply) -> bool:
        if reply.status in (200, 201, 204):
            return True
        if reply.status == 409 and _error_fields(reply)[0] == "exists":
            return False
        raise error_from(reply)
    path = _path(_cache_path(key), "ifAbsent=true", _ttl_query(ttl))
    return Call("PUT", path, interpret, body=_value(value))


def quote_etag(etag: str) -> str:
    """ETags go back exactly as the sidecar sent them; a bare one gets its quotes."""
    etag = etag.strip()
    if etag.startswith('"') or etag.startswith('W/"'):
        return etag
    return f'"{etag}"'


def compare_and_set(key: str, value: bytes, *, etag: str, ttl: Duration = 0) -> Call[bool]:
    def interpret(reply: Reply) -> bool:
        if reply.status in (200, 204):
            return True
        code = _error_fields(reply)[0]
        if (reply.status, code) in ((412, "precondition_failed"), (404, "not_found")):
            return False  # changed or gone since the caller read it
        raise error_from(reply)
    headers = {"If-Match": quote_etag(etag)}
    return Call("PUT", _path(_cache_path(key), _ttl_query(ttl)), interpret,
                body=_value(value), headers=headers)


def delete(key: str) -> Call[None]:
    return Call("DELETE", _cache_path(key), _expect(204))


# -- locks -----------------------------------------------------------------------------------

def _lock_path(name: str) -> str:
    return "/v1/locks/" + segment(name, what="lock name")


def _lease(name: str, *, ok: int = 200) -> Callable[[Reply], models.Lease]:
    def interpret(reply: Reply) -> models.Lease:
        if reply.status != ok:
            raise error_from(reply, lock_name=name)
        return models.parse_lease(name, _json(reply))
    return interpret


def _json_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


_JSON = {"Content-Type": "application/json"}


def acquire(name: str, *, ttl: Duration = 0, wait: Duration = 0) -> Call[models.Lease]:
    payload: dict[str, Any] = {}
    ttl_seconds = seconds(ttl)
    wait_seconds = seconds(wait, field="wait")
    if ttl_seconds:
        payload["ttl"] = duration_text(ttl_seconds)
    if wait_seconds:
        payload["wait"] = duration_text(wait_seconds)
    return Call("POST", _lock_path(name), _lease(name), body=_json_body(payload),
                headers=_JSON, blocks_for=wait_seconds)


def refresh(name: str, *, token: str, ttl: Duration = 0) -> Call[models.Lease]:
    payload: dict[str, Any] = {"token": token}
    ttl_seconds = seconds(ttl)
    if ttl_seconds:
        payload["ttl"] = duration_text(ttl_seconds)
    return Call("POST", _lock_path(name) + "/refresh", _lease(name), body=_json_body(payload),
                headers=_JSON)


def release(name: str, *, token: str) -> Call[None]:
    return Call("DELETE", _lock_path(name), _expect(204, lock_name=name),
                body=_json_body({"token": token}), headers=_JSON)


# -- leader election -------------------------------------------------------------------------

def leader_path(election: str, *, watch: bool = False) -> str:
    path = "/v1/leader/" + segment(election, what="election name")
    return path + "?watch=true" if watch else path


def _status_or_none(reply: Reply) -> models.LeaderStatus | None:
    if reply.status >= 300:
        raise error_from(reply)
    if reply.status == 204 or not reply.body:
        return None
    return models.parse_leader_status(_json(reply))


def leader(election: str) -> Call[models.LeaderStatus]:
    def interpret(reply: Reply) -> models.LeaderStatus:
        if reply.status != 200:
            raise error_from(reply)
        return models.parse_leader_status(_json(reply))
    return Call("GET", leader_path(election), interpret)


def join(election: str) -> Call[models.LeaderStatus | None]:
    return Call("PUT", leader_path(election), _status_or_none, body=b"")


def resign(election: str) -> Call[models.LeaderStatus | None]:
    return Call("DELETE", leader_path(election), _status_or_none)


def parse_watch_line(line: bytes) -> models.LeaderStatus | None:
    """One NDJSON line of a watch stream; blank keep-alive lines give None."""
    line = line.strip()
    if not line:
        return None
    try:
        payload = json.loads(line)
    except ValueError as exc:
        raise ServerError(f"malformed watch line from the sidecar: {line[:200]!r}",
                          code="malformed_reply", status=200) from exc
    return models.parse_leader_status(payload)


def check_watch_reply(reply: Reply) -> None:
    """A watch that did not start (unknown election...) raises like any other call."""
    if reply.status != 200:
        raise error_from(reply)


# -- probes ----------------------------------------------------------------------------------

def _probe(reply: Reply) -> bool:
    if reply.status == 200:
        return True
    if reply.status == 503:
        return False
    raise error_from(reply)


def readiness(*, live: bool = False) -> Call[tuple[bool, str]]:
    """``/readyz`` (or ``/healthz``) with the sidecar's reason when it is not ready."""
    def interpret(reply: Reply) -> tuple[bool, str]:
        if reply.status == 200:
            return True, ""
        if reply.status == 503:
            return False, _error_fields(reply)[1]
        raise error_from(reply)
    return Call("GET", "/healthz" if live else "/readyz", interpret)


def health() -> Call[bool]:
    return Call("GET", "/healthz", _probe)


def ready() -> Call[bool]:
    return Call("GET", "/readyz", _probe)
