"""Request parsing the routes share: path segments, durations, flags, bounded bodies, JSON.

Path segments are decoded here from the raw (still percent-encoded) path rather than
taken from aiohttp's ``match_info``: aiohttp leaves invalid escapes (``%ZZ``) and
invalid UTF-8 (``%FF``) as literal text, which would silently store a different key
than the client meant. Here both are a 400.

Bodies are read chunk by chunk against the size limit, so an oversized upload (by
``Content-Length`` or while streaming a chunked body) is refused with 413 having
held at most one limit's worth of bytes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import aiohttp
from aiohttp import web

from podcache import durations
from podcache.errors import InvalidKey, InvalidTTL, ValueTooLarge
from podcache.sidecar import bodies
from podcache.sidecar.errors import ApiError

MAX_CACHE_TTL = 10 * 365 * 86400.0
"""Seconds; a longer cache TTL is cut to this."""
_NUMBER = r"([0-9]+([.][0-9]*)?|[.][0-9]+)"
DURATION_PATTERN = rf"^[+]?({_NUMBER}|({_NUMBER}(ns|us|µs|ms|s|m|h))+)$"
"""What ``podcache.durations`` accepts, as a regular expression (for the OpenAPI document)."""

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


def segment(
    request: web.Request, prefix: str, *, what: str, max_bytes: int, suffix: str = ""
) -> str:
    """The percent-decoded UTF-8 path segment after ``prefix`` (and before ``suffix``).

    Raises ``InvalidKey`` (400 ``invalid_key``) naming ``what`` for an empty, overlong,
    non-UTF-8 or badly escaped segment, or one holding a raw ``/``.
    """
    raw = request.rel_url.raw_path
    start = raw.find(prefix)
    if start < 0:  # the router matched, so this is a normalised path (e.g. via "..")
        raise InvalidKey(f"{what}: cannot locate it in the path {raw!r}")
    raw = raw[start + len(prefix) :]
    if suffix:
        if not raw.endswith(suffix):
            raise InvalidKey(f"{what}: the path must end with {suffix!r}")
        raw = raw[: -len(suffix)]
    return decode_segment(raw, what=what, max_bytes=max_bytes)


def decode_segment(raw: str, *, what: str, max_bytes: int) -> str:
    """``segment``'s checks and decoding of the raw text of one segment (the fast path's too)."""
    if "/" in raw:
        raise InvalidKey(f"{what} contains '/': percent-encode it as %2F")
    if "%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise InvalidKey(f"{what} has an invalid percent-escape: {raw!r}")
        try:
            text = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidKey(f"{what} is not valid UTF-8 once percent-decoded: {raw!r}") from exc
    else:
        text = raw
    if not text:
        raise InvalidKey(f"{what} must not be empty")
    size = len(text.encode("utf-8")) if not text.isascii() else len(text)
    if size > max_bytes:
        raise InvalidKey(f"{what} is {size} bytes, the limit is {max_bytes}")
    return text


def ttl_query(request: web.Request, default: float) -> float:
    """The ``ttl`` query parameter in seconds (Go duration or seconds).

    Absent, empty or 0 means ``default``; longer than ``MAX_CACHE_TTL`` is cut to it
    (ten years is "forever" for a cache, and Redis refuses expiry times near 2^63 ms).
    """
    return ttl_of(request.query.get("ttl"), default)


def ttl_of(raw: str | None, default: float) -> float:
    """``ttl_query``'s rules for the parameter's text (None: absent)."""
    if not raw:
        return default
    seconds = duration(raw, field="ttl")
    return min(seconds, MAX_CACHE_TTL) or default


def duration(value: Any, *, field: str) -> float:
    """A duration (``"10s"`` or seconds), else ``InvalidTTL`` (400) naming ``field``."""
    try:
        return durations.parse_duration(value, field=field)
    except ValueError as exc:
        raise InvalidTTL(str(exc)) from exc


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter (true/false/1/0/yes/no); anything else is a 400."""
    return flag_of(name, request.query.get(name))


def flag_of(name: str, raw: str | None) -> bool:
    """``flag``'s rules for the parameter's text (None: absent)."""
    if raw is None:
        return False
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ApiError(400, "invalid_request", f"{name} must be true or false, got {raw!r}")


async def body(request: web.Request, *, limit: int, claim: bodies.Claim | None = None) -> bytes:
    """The whole request body, refused with 413 as soon as it exceeds ``limit`` bytes.

    With ``claim``, the body's memory is taken from the global budget first (503 when
    it does not fit; see ``bodies``).
    """
    length = request.content_length
    if length is not None and length > limit:
        raise ValueTooLarge(f"the value is {length} bytes, the limit is {limit}")
    try:
        if length is not None:
            # Fast path: the size is known and allowed, read it in one go.
            if claim is not None:
                claim.take(length)
            return await request.content.readexactly(length) if length else b""
        return await _read_chunked(request, limit=limit, claim=claim)
    except asyncio.IncompleteReadError as exc:
        raise ApiError(
            400, "invalid_request", f"the body ended after {len(exc.partial)} of {length} bytes"
        ) from exc
    except (ConnectionError, aiohttp.ClientPayloadError) as exc:
        raise ApiError(400, "invalid_request", f"the body could not be read: {exc}") from exc


async def _read_chunked(request: web.Request, *, limit: int, claim: bodies.Claim | None) -> bytes:
    stream = request.content
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ValueTooLarge(f"the value exceeds the limit of {limit} bytes")
        if claim is not None:
            claim.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def json_object(
    request: web.Request, *, allowed: frozenset[str], limit: int = 64 * 1024
) -> dict[str, Any]:
    """The JSON object body (empty body = ``{}``); unknown fields and non-objects are a 400."""
    return json_object_of(await body(request, limit=limit), allowed=allowed)


def json_object_of(raw: bytes, *, allowed: frozenset[str]) -> dict[str, Any]:
    """``json_object``'s checks of a body already read."""
    if not raw.strip():
        return {}
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_request", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ApiError(
            400, "invalid_request", f"the body must be a JSON object, got {type(payload).__name__}"
        )
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise ApiError(
            400,
            "invalid_request",
            f"unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})",
        )
    return payload


def token_field(payload: dict[str, Any], query: Callable[[], Mapping[str, str]]) -> str:
    """The lock token from the body, else from ``?token=``; a 400 when missing or not a string.

    ``query`` gives the request's query: it is parsed only when the body has no token
    (most requests carry it there)."""
    token = payload["token"] if "token" in payload else query().get("token")
    if not isinstance(token, str) or not token:
        raise ApiError(400, "invalid_request", "a non-empty string 'token' is required")
    return token
