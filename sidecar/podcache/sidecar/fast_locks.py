"""The lean path for lock acquire, refresh and release (``/v1/locks/{name}``), ahead of the router.

Why it exists: a lock cycle through the socket (acquire + release) cost the sidecar
about 250 us of CPU beyond two Redis round trips (issue 11: 0.37x of redis-py's
``Lock`` at one connection), much of it generic dispatch: the router's regex per
route and its ``MatchInfo``, ``api_handler``'s app-state lookup and per-request timer.
Here the decision is a ``startswith`` on the raw request target, the state and the
metrics labels are bound once, and the timer is left out where it cannot fire first.

A module of its own rather than more of ``fast_path``: that one is about cache values
(keys, bodies of bytes, ETags); this one about leases (names, JSON bodies, waits).
``runtime`` chains them: cache requests are tested first and never pay for this.

What is done is the same work as the routes: the handlers are ``routes_locks``'s
``serve_*``, bodies are read by ``inputs.json_object``, errors go through
``errors.response_for``, the HTTP metrics count the request under the router's route
label, and the backend slot's in-flight count is kept.

The timer: the body of a lock request is small and nearly always in by the time the
request is handled; it is then parsed before any timer (parsing cannot suspend, so a
timer could not fire during it). Then the lock call runs without a timer when the
backend bounds it within the request timeout by itself: always on the memory backend
(its waits are capped below the timeout, as ``api_handler`` assumes), and on Redis
when the request does not wait and ``CacheSlot.lock_call_bound`` fits the timeout. Otherwise (a
body still arriving: the 408 case; a blocking acquire; a tight request timeout) it
runs under ``asyncio.timeout`` exactly like ``api_handler``.

What falls back to the app (and so behaves exactly as before): any other path or
method, a query string (``?token=``), an ``Expect`` header, a name part holding ``/``
or ``#``, being ``.``/``..`` or holding a percent-encoded dot (the router's path
normalisation decides those).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from podcache.sidecar import errors, inputs, routes_locks
from podcache.sidecar.state import STATE, SidecarState

ROUTE_LABEL = "/v1/locks/{name}"
"""The ``route`` label of acquire and release in the HTTP metrics: the router's template."""
REFRESH_LABEL = ROUTE_LABEL + routes_locks.REFRESH_SUFFIX
"""The label of refresh."""

_PREFIX = routes_locks.PREFIX
_PREFIX_LEN = len(_PREFIX)
_SUFFIX = routes_locks.REFRESH_SUFFIX
_SUFFIX_LEN = len(_SUFFIX)
_DOT_SEGMENTS = frozenset({".", ".."})

RequestHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def handler(app: web.Application, fallback: RequestHandler) -> RequestHandler:
    """A request handler for the server: the lean path for lock requests, else ``fallback``."""
    state = app[STATE]

    async def handle(request: BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        if not target.startswith(_PREFIX):
            return await fallback(request)
        method = request.method
        raw = target[_PREFIX_LEN:]
        refresh = False
        if method == "POST":
            if raw.endswith(_SUFFIX):
                raw = raw[:-_SUFFIX_LEN]
                refresh = True
        elif method != "DELETE":
            return await fallback(request)
        if (
            "?" in raw or "/" in raw or "#" in raw or raw in _DOT_SEGMENTS
            or ("%2" in raw and "%2e" in raw.lower()) or "Expect" in request.headers
        ):
            return await fallback(request)
        assert isinstance(request, web.Request)  # the runner's request factory makes these
        received = time.monotonic()  # as routes_locks.acquire takes it: before the body
        started = time.perf_counter()
        slot = state.slot
        slot.inflight += 1
        limits = state.config.limits
        timeout = limits.request_timeout
        try:
            name = inputs.decode_segment(raw, what="lock name", max_bytes=limits.max_key_bytes)
            if request.content.is_eof():
                # The body is in: parsing it cannot suspend, so no timer could fire here.
                payload = await _payload(request, method=method, refresh=refresh)
                work = _serve(state, request, name, payload, method=method, refresh=refresh,
                              received=received)
                waits = method == "POST" and not refresh and "wait" in payload
                if slot.never_blocks or (not waits and slot.lock_call_bound <= timeout):
                    response = await work
                else:
                    async with asyncio.timeout(timeout):
                        response = await work
            else:
                async with asyncio.timeout(timeout):
                    payload = await _payload(request, method=method, refresh=refresh)
                    response = await _serve(state, request, name, payload, method=method,
                                            refresh=refresh, received=received)
        except TimeoutError:
            response = errors.timed_out(request, timeout)
        except Exception as exc:
            response = errors.response_for(exc)
        finally:
            slot.leave()
        state.metrics.observe_request(REFRESH_LABEL if refresh else ROUTE_LABEL, method,
                                      response.status, time.perf_counter() - started)
        return response

    return handle


async def _payload(request: web.Request, *, method: str, refresh: bool) -> dict[str, Any]:
    if method == "DELETE":
        allowed = routes_locks.RELEASE_FIELDS
    elif refresh:
        allowed = routes_locks.REFRESH_FIELDS
    else:
        allowed = routes_locks.ACQUIRE_FIELDS
    return await inputs.json_object(request, allowed=allowed)


def _serve(
    state: SidecarState,
    request: web.Request,
    name: str,
    payload: dict[str, Any],
    *,
    method: str,
    refresh: bool,
    received: float,
) -> Awaitable[web.Response]:
    if method == "DELETE":
        return routes_locks.serve_release(state, name, payload, query=lambda: request.query)
    if refresh:
        return routes_locks.serve_refresh(state, name, payload, query=lambda: request.query)
    return routes_locks.serve_acquire(state, name, payload, received=received)
