"""Every failure becomes one JSON error ``{"error": code, "message": text}``, here and only here.

Handlers raise: the library's errors (``podcache.errors``) or ``ApiError`` for what
only the HTTP layer knows (a precondition, an unknown election). ``api_handler``
wraps every route's handler and maps them to DESIGN.md's status codes. It also
enforces the per-request timeout, counts the request in the HTTP metrics and keeps
the backend slot's in-flight count (needed to retire a swapped backend).

A wrapper per route rather than an aiohttp middleware: with any middleware aiohttp
runs a chain of two extra coroutines (ours and its own ``current_app`` fixer) on
every request, about 3 us of a ~30 us memory GET. Requests that match no route (404)
or no method (405) reach ``no_route``, registered last as a catch-all, so they are
answered as JSON too.

Bad input must never produce a 5xx: anything unexpected is logged with its traceback
and answered 500 ``internal`` so a bug is visible, but the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from podcache import errors
from podcache.sidecar import state as state_mod

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"
"""Retry-After on 503: a Redis failover or restart usually takes seconds."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STREAM_ROUTES = "/v1/leader/"
"""Route templates under this prefix may answer a watch stream (``?watch``)."""


class ApiError(Exception):
    """An HTTP-level failure with its status and machine-readable code."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": code, "message": message}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


# Most specific first: LockNotAcquired and NotOwner are LockErrors.
_LIBRARY_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (errors.CacheMiss, 404, "not_found"),
    (errors.InvalidKey, 400, "invalid_key"),
    (errors.InvalidTTL, 400, "invalid_ttl"),
    (errors.InvalidValue, 400, "invalid_value"),
    (errors.ValueTooLarge, 413, "too_large"),
    (errors.LockNotAcquired, 409, "locked"),
    (errors.NotOwner, 409, "not_owner"),
    (errors.LockLost, 409, "not_owner"),
    (errors.ConfigError, 400, "invalid_request"),
    (errors.BackendUnavailable, 503, "backend_unavailable"),
    (errors.TooManyWaiters, 429, "too_many_waiters"),
)

HTTP_CODES: dict[int, str] = {
    400: "invalid_request",
    404: "no_route",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    431: "invalid_request",
    501: "not_implemented",
}
"""The code of an HTTP-level failure: aiohttp's exceptions and the parser's rejections."""


def response_for(exc: BaseException) -> web.Response:
    """The JSON error response for ``exc`` (which may be any exception)."""
    if isinstance(exc, ApiError):
        response = error_response(exc.status, exc.code, exc.message, headers=exc.headers)
    elif isinstance(exc, web.HTTPException):
        code = HTTP_CODES.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(exc.status, code, exc.reason, headers=headers)
    else:
        for kind, status, code in _LIBRARY_ERRORS:
            if isinstance(exc, kind):
                retry = status in (429, 503)
                headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry else None
                response = error_response(status, code, str(exc) or code, headers=headers)
                break
        else:
            logger.error("unexpected error serving a request", exc_info=exc)
            response = error_response(500, "internal", f"internal error: {type(exc).__name__}")
    if response.status in (408, 413):
        # The client may still be sending: answer, drain briefly (aiohttp's lingering), close.
        response.force_close()
    return response


def api_handler(handler: Handler, *, route: str | None = None) -> Handler:
    """``handler`` answering every failure as JSON, bounded by the request timeout, counted.

    ``route`` is the metrics label; by default the matched route's template. The
    logic is inlined here (not a helper coroutine): a frame less on every request.
    """
    fixed_route = route

    async def serve(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        state = request.app[state_mod.STATE]
        route = fixed_route
        if route is None:
            route = request.match_info.route.resource.canonical  # type: ignore[union-attr]
        method = request.method
        if method == "GET" and route.startswith(_STREAM_ROUTES) and "watch" in request.query:
            # A watch stays open as long as the client wants: no timeout, and it does not
            # hold the backend slot (it reads elections, not the cache).
            try:
                response = await handler(request)
            except Exception as exc:
                response = response_for(exc)
        else:
            slot = state.slot
            slot.inflight += 1
            timeout = state.config.limits.request_timeout
            try:
                if slot.never_blocks and request.content.is_eof():
                    # Memory backend, body already in: nothing can stall (a lock wait is capped
                    # below the timeout), so skip the timer and its cost on the hot path.
                    response = await handler(request)
                else:
                    async with asyncio.timeout(timeout):
                        response = await handler(request)
            except TimeoutError:
                response = timed_out(request, timeout)
            except Exception as exc:
                response = response_for(exc)
            finally:
                slot.leave()
        state.metrics.observe_request(route, method, response.status, time.perf_counter() - started)
        return response

    serve.__name__ = serve.__qualname__ = getattr(handler, "__name__", "handler")
    serve.__doc__ = handler.__doc__
    return serve


async def _no_route(request: web.Request) -> web.StreamResponse:
    """404, or 405 naming the allowed methods when another route has this path."""
    catch_all = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not catch_all:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def add_catch_all(app: web.Application) -> None:
    """Route what no other route takes to a JSON 404/405 (call after every other route)."""
    app.router.add_route("*", "/{path:.*}", api_handler(_no_route, route="unmatched"))


def timed_out(request: web.Request, timeout: float) -> web.Response:
    if not request.content.is_eof():
        # Still waiting for the body: the client is slow, not the backend.
        response = error_response(
            408, "request_timeout", f"the request body did not arrive within {timeout:g}s"
        )
        response.force_close()
        return response
    return backend_timed_out(timeout)


def backend_timed_out(timeout: float) -> web.Response:
    """The 503 of a request whose body was in, the backend too slow for the timeout."""
    return error_response(
        503,
        "backend_unavailable",
        f"the backend did not answer within the {timeout:g}s request timeout",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )
