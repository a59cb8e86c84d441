"""``/v1/locks/{name}``: acquire, refresh and release distributed locks with fencing tokens.

Bodies are JSON with durations as strings ("10s") or seconds. A missing ttl means
``locks.defaultTTL``; above ``locks.maxTTL`` is a 400, so one client cannot wedge a
lock for an hour. A blocking acquire's ``wait`` is cut to leave the request time to
answer before the request timeout. Every lease handed out is noted in the slot's
``LeaseBook`` so the sidecar can release it at shutdown; it never refreshes one.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from podcache.errors import InvalidTTL, LockNotAcquired, NotOwner
from podcache.sidecar import inputs
from podcache.sidecar.errors import api_handler
from podcache.sidecar.state import STATE, SidecarState

PREFIX = "/v1/locks/"
ROUTE = PREFIX + "{name:[^/]*}"
REFRESH_SUFFIX = "/refresh"
REFRESH_ROUTE = ROUTE + REFRESH_SUFFIX

_ACQUIRE_FIELDS = frozenset({"ttl", "wait"})
_REFRESH_FIELDS = frozenset({"token", "ttl"})
_RELEASE_FIELDS = frozenset({"token"})


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


def _lease_json(lease: Any, *, waited: float = 0.0) -> dict[str, Any]:
    return {
        "token": lease.token,
        "fence": int(lease.fence),
        "ttl_ms": round(float(lease.ttl) * 1000),
        # Rounded down: the client adds it to its send time, which must never overshoot.
        "waited_ms": int(waited * 1000),
    }


async def acquire(request: web.Request) -> web.Response:
    # Taken after the client sent: the client's deadline (its send time + waited + ttl)
    # then never lies past the lease's real end.
    received = time.monotonic()
    state = request.app[STATE]
    name = _name(request)
    payload = await inputs.json_object(request, allowed=_ACQUIRE_FIELDS)
    ttl = _ttl(payload, state)
    wait = _wait(payload, state)
    slot = state.slot
    lease = await slot.cache.locks.acquire(name, ttl=ttl, wait=wait)
    if lease is None:
        raise LockNotAcquired(f"lock {name!r} is held by someone else", lock_name=name)
    slot.leases.held(name, lease)
    return web.json_response(_lease_json(lease, waited=max(0.0, lease.acquired_at - received)))


async def refresh(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = _name(request, suffix=REFRESH_SUFFIX)
    payload = await inputs.json_object(request, allowed=_REFRESH_FIELDS)
    token = inputs.token_field(payload, request)
    ttl = _ttl(payload, state)
    slot = state.slot
    lease = await slot.cache.locks.refresh(name, token, ttl=ttl)
    if lease is None:
        slot.leases.discard(name, token)
        raise NotOwner(
            f"lock {name!r} is not held with this token (expired or taken over)", lock_name=name
        )
    slot.leases.held(name, lease)
    return web.json_response(_lease_json(lease))


async def release(request: web.Request) -> web.Response:
    name = _name(request)
    payload = await inputs.json_object(request, allowed=_RELEASE_FIELDS)
    token = inputs.token_field(payload, request)
    slot = request.app[STATE].slot
    released = await slot.cache.locks.release(name, token)
    slot.leases.discard(name, token)
    if not released:
        raise NotOwner(
            f"lock {name!r} is not held with this token (expired or taken over)", lock_name=name
        )
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post(ROUTE, api_handler(acquire))
    app.router.add_post(REFRESH_ROUTE, api_handler(refresh))
    app.router.add_delete(ROUTE, api_handler(release))
