"""The aiohttp Application: routes (plus the JSON 404/405 catch-all) and the resources' lifetimes.

Resources live and die with the app through ``cleanup_ctx``: the elections of the
config are joined at start-up; at cleanup (after in-flight requests have finished)
the elections are resigned, then the leases taken through the sidecar released, then
the backend stopped, in that order. ``on_shutdown`` runs earlier, before aiohttp
waits for in-flight requests, and ends the watch streams so they do not hold the
grace period.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from podcache.sidecar import errors, routes_cache, routes_health, routes_leader, routes_locks
from podcache.sidecar.state import STATE, SidecarState


def build_app(state: SidecarState) -> web.Application:
    app = web.Application()  # no middleware: each handler is wrapped by errors.api_handler
    app[STATE] = state
    routes_cache.add_routes(app)
    routes_locks.add_routes(app)
    routes_leader.add_routes(app)
    routes_health.add_routes(app)
    errors.add_catch_all(app)
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_end_streams)
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.cache.start()
    await state.elections.start(state.cache, state.config.elections)
    yield
    try:
        await state.elections.stop()
    finally:
        await state.slot.close()


async def _end_streams(app: web.Application) -> None:
    state = app[STATE]
    state.shutting_down.set()
    state.elections.close_watchers()
