"""``/healthz`` (the process serves) and ``/readyz`` (the backend answers), and ``/openapi.json``.

``/readyz`` pings the backend on every call rather than caching a verdict, so it
turns 200 again by itself as soon as Redis is back; it is 503 while shutting down
so traffic drains before the socket goes away.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from podcache.errors import BackendUnavailable
from podcache.sidecar import openapi
from podcache.sidecar.errors import RETRY_AFTER_SECONDS, api_handler, error_response
from podcache.sidecar.state import STATE

PING_TIMEOUT = 2.0
"""Seconds a readiness ping may take; kubelet's default probe timeout is 1 s, but a
probe must not be answered after the request timeout either."""


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.shutting_down.is_set():
        return error_response(
            503,
            "shutting_down",
            "the sidecar is shutting down",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    timeout = min(PING_TIMEOUT, state.config.limits.request_timeout)
    try:
        async with asyncio.timeout(timeout):
            await state.cache.ping()
    except (BackendUnavailable, TimeoutError, OSError) as exc:
        return error_response(
            503,
            "backend_unavailable",
            f"the backend does not answer: {exc}",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    return web.json_response({"status": "ready", "backend": state.config.backend.type})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(request.app[STATE].config))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", api_handler(healthz))
    app.router.add_get("/readyz", api_handler(readyz))
    app.router.add_get("/openapi.json", api_handler(openapi_document))
