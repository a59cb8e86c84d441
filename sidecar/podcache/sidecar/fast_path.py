"""The lean path for GET, PUT and DELETE of ``/v1/cache/{key}``, ahead of aiohttp's router.

Why it exists: these three requests are nearly all of a sidecar's traffic, and for a
100-byte value aiohttp's generic dispatch cost more than the cache itself (issue 11:
the memory backend's GET used 1.6x the CPU of a bare aiohttp app). Per request the
router matched a regex per route, built and froze a ``MatchInfo``, and ``api_handler``
looked up the app state, the route's template and armed an ``asyncio.timeout``. Here
the decision is a ``startswith`` on the raw request target, the state and the metrics
label are bound once, and the per-request timer is left out where it cannot fire
first (see below). What is done is the same work: the handlers are ``routes_cache``'s
``serve_*``, errors go through ``errors.response_for``, the HTTP metrics count the
request under the same route label, and the backend slot's in-flight count is kept.

The timer: every backend call is bounded by the backend itself (``CacheSlot.call_bound``:
the Redis operation timeout, 0 for memory). A request whose body is already in and
whose N backend calls fit the request timeout (N * call_bound <= timeout) would
always see the backend's own 503 before the request timer fired, so it runs without
one. Otherwise (a body still arriving: the 408 case; an If-Match PUT with a long
operation timeout) it runs under ``asyncio.timeout`` exactly like ``api_handler``.

What falls back to the app (and so behaves exactly as before): any other path or
method, HEAD, an ``Expect`` header (the 100-continue check is the route's), a target
in absolute form, and a key part holding ``/``, ``#`` or being ``.``/``..`` (the
router's path normalisation decides those).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_request import BaseRequest

from podcache.sidecar import errors, inputs, routes_cache
from podcache.sidecar.state import STATE

ROUTE_LABEL = "/v1/cache/{key}"
"""The ``route`` label of these requests in the HTTP metrics: the router's template."""

_PREFIX = routes_cache.PREFIX
_PREFIX_LEN = len(_PREFIX)
_METHODS = frozenset({"GET", "PUT", "DELETE"})
_DOT_SEGMENTS = frozenset({".", ".."})

RequestHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def handler(app: web.Application, fallback: RequestHandler) -> RequestHandler:
    """A request handler for the server: the lean path for cache requests, else ``fallback``."""
    state = app[STATE]

    async def handle(request: BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        method = request.method
        if not target.startswith(_PREFIX) or method not in _METHODS:
            return await fallback(request)
        raw = target[_PREFIX_LEN:]
        cut = raw.find("?")
        has_query = cut >= 0
        if has_query:
            raw = raw[:cut]
        if "/" in raw or "#" in raw or raw in _DOT_SEGMENTS or "Expect" in request.headers:
            return await fallback(request)
        assert isinstance(request, web.Request)  # the runner's request factory makes these
        started = time.perf_counter()
        slot = state.slot
        slot.inflight += 1
        limits = state.config.limits
        timeout = limits.request_timeout
        try:
            key = inputs.decode_segment(raw, what="key", max_bytes=limits.max_key_bytes)
            calls = 1
            if method == "GET":
                work = routes_cache.serve_get(state, key)
            elif method == "DELETE":
                work = routes_cache.serve_delete(state, key)
            else:
                work = routes_cache.serve_put(state, request, key, has_query=has_query)
                if "If-Match" in request.headers:
                    calls = 2  # read, then compare-and-set
            if calls * slot.call_bound <= timeout and request.content.is_eof():
                response = await work
            else:
                async with asyncio.timeout(timeout):
                    response = await work
        except TimeoutError:
            response = errors.timed_out(request, timeout)
        except Exception as exc:
            response = errors.response_for(exc)
        finally:
            slot.leave()
        state.metrics.observe_request(ROUTE_LABEL, method, response.status,
                                      time.perf_counter() - started)
        return response

    return handle

