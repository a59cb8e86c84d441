"""``/v1/locks/{name}``: acquire, refresh and release distributed locks with fencing tokens.

Bodies are JSON with durations as strings ("10s") or seconds. A missing ttl means
``locks.defaultTTL``; above ``locks.maxTTL`` is a 400, so one client cannot wedge a
lock for an hour. A blocking acquire's ``wait`` is cut to leave the request time to
answer before the request timeout. Every lease handed out is noted in the slot's
``LeaseBook`` so the sidecar can release it at shutdown; it never refreshes one.

The ``serve_*`` functions do the work once the name and body are parsed; the router's
handlers here and the lean path (``fast_locks``, which answers most lock requests
before aiohttp's router) both call them, so the two cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii as encode_string  # json.dumps's own, in C
from typing import TYPE_CHECKING, Any

from aiohttp import web

from podcache.errors import InvalidTTL, LockNotAcquired, NotOwner
from podcache.sidecar import inputs
from podcache.sidecar.errors import api_handler
from podcache.sidecar.state import STATE, SidecarState

if TYPE_CHECKING:  # the lock service is imported on first use (podcache.cache)
    from podcache.locks.base import Lease

PREFIX = "/v1/locks/"
ROUTE = PREFIX + "{name:[^/]*}"
REFRESH_SUFFIX = "/refresh"
REFRESH_ROUTE = ROUTE + REFRESH_SUFFIX

ACQUIRE_FIELDS = frozenset({"ttl", "wait"})
REFRESH_FIELDS = frozenset({"token", "ttl"})
RELEASE_FIELDS = frozenset({"token"})
JSON = "application/json"


def _name(request: web.Request, *, suffix: str = "") -> str:
    limit = request.app[STATE].config.limits.max_key_bytes
    return inputs.segment(request, PREFIX, what="lock name", max_bytes=limit, suffix=suffix)


def _ttl(payload: dict[str, Any], state: SidecarState) -> float:
    settings = state.config.locks
    raw = payload.get("ttl")
    ttl = inputs.duration(raw, field="ttl") if raw is not None else 0.0
    ttl = ttl or settings.default_ttl
    if ttl > settings.max_ttl:
        raise InvalidTTL(
            f"ttl: {ttl:g}s exceeds the maximum of {settings.max_ttl:g}s (locks.maxTTL)"
        )
    return ttl


def _wait(payload: dict[str, Any], state: SidecarState) -> float:
    raw = payload.get("wait")
    if raw is None:
        return 0.0
    wait = inputs.duration(raw, field="wait")
    timeout = state.config.limits.request_timeout
    # Keep a margin (at most 1 s) to answer 409 before the request timeout answers 503.
    return min(wait, max(0.0, timeout - min(1.0, timeout / 4)))


_LEASE_JSON = '{"token": %s, "fence": %d, "ttl_ms": %d, "waited_ms": %d}'
"""A lease as ``json.dumps`` writes it (same keys, order and separators), without its
generic encoder: the fields are a string and three ints."""


def lease_body(lease: Lease, *, waited: float = 0.0) -> bytes:
    """The JSON of a lease: ``{"token", "fence", "ttl_ms", "waited_ms"}``."""
    return (_LEASE_JSON % (
        encode_string(lease.token),  # the client's text on a refresh: escaped as json.dumps does
        int(lease.fence),
        round(float(lease.ttl) * 1000),
        # Rounded down: the client adds it to its send time, which must never overshoot.
        int(waited * 1000),
    )).encode()


def lease_response(lease: Lease, *, waited: float = 0.0) -> web.Response:
    # The same Content-Type as web.json_response ("application/json; charset=utf-8").
    return web.Response(
        body=lease_body(lease, waited=waited), content_type=JSON, charset="utf-8"
    )


async def acquire(request: web.Request) -> web.Response:
    # Taken after the client sent: the client's deadline (its send time + waited + ttl)
    # then never lies past the lease's real end.
    received = time.monotonic()
    state = request.app[STATE]
    name = _name(request)
    payload = await inputs.json_object(request, allowed=ACQUIRE_FIELDS)
    return await serve_acquire(state, name, payload, received=received)


async def serve_acquire(
    state: SidecarState, name: str, payload: dict[str, Any], *, received: float
) -> web.Response:
    """Acquire ``name`` as the parsed body asks; ``received`` is when the request came in."""
    lease, waited = await acquire_lease(state, name, payload, received=received)
    return lease_response(lease, waited=waited)


async def acquire_lease(
    state: SidecarState, name: str, payload: dict[str, Any], *, received: float
) -> tuple[Lease, float]:
    """``serve_acquire``'s work: the lease and the seconds waited for it (``http_fast``
    writes its answer's bytes itself)."""
    ttl = _ttl(payload, state)
    wait = _wait(payload, state)
    slot = state.slot
    lease = await slot.cache.locks.acquire(name, ttl=ttl, wait=wait)
    if lease is None:
        raise LockNotAcquired(f"lock {name!r} is held by someone else", lock_name=name)
    slot.leases.held(name, lease)
    return lease, max(0.0, lease.acquired_at - received)


async def refresh(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = _name(request, suffix=REFRESH_SUFFIX)
    payload = await inputs.json_object(request, allowed=REFRESH_FIELDS)
    return await serve_refresh(state, name, payload, query=lambda: request.query)


async def serve_refresh(
    state: SidecarState,
    name: str,
    payload: dict[str, Any],
    *,
    query: Callable[[], Mapping[str, str]] = dict,
) -> web.Response:
    """Refresh ``name`` as the parsed body asks (the token may also come in the query)."""
    return lease_response(await refresh_lease(state, name, payload, query=query))


async def refresh_lease(
    state: SidecarState,
    name: str,
    payload: dict[str, Any],
    *,
    query: Callable[[], Mapping[str, str]] = dict,
) -> Lease:
    """``serve_refresh``'s work: the refreshed lease."""
    token = inputs.token_field(payload, query)
    ttl = _ttl(payload, state)
    slot = state.slot
    lease = await slot.cache.locks.refresh(name, token, ttl=ttl)
    if lease is None:
        slot.leases.discard(name, token)
        raise NotOwner(
            f"lock {name!r} is not held with this token (expired or taken over)", lock_name=name
        )
    slot.leases.held(name, lease)
    return lease


async def release(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = _name(request)
    payload = await inputs.json_object(request, allowed=RELEASE_FIELDS)
    return await serve_release(state, name, payload, query=lambda: request.query)


async def serve_release(
    state: SidecarState,
    name: str,
    payload: dict[str, Any],
    *,
    query: Callable[[], Mapping[str, str]] = dict,
) -> web.Response:
    """Release ``name`` as the parsed body asks (the token may also come in the query)."""
    await release_lock(state, name, payload, query=query)
    return web.Response(status=204)


async def release_lock(
    state: SidecarState,
    name: str,
    payload: dict[str, Any],
    *,
    query: Callable[[], Mapping[str, str]] = dict,
) -> None:
    """``serve_release``'s work; ``NotOwner`` when the token does not hold the lock."""
    token = inputs.token_field(payload, query)
    slot = state.slot
    released = await slot.cache.locks.release(name, token)
    slot.leases.discard(name, token)
    if not released:
        raise NotOwner(
            f"lock {name!r} is not held with this token (expired or taken over)", lock_name=name
        )


def add_routes(app: web.Application) -> None:
    app.router.add_post(ROUTE, api_handler(acquire))
    app.router.add_post(REFRESH_ROUTE, api_handler(refresh))
    app.router.add_delete(ROUTE, api_handler(release))
