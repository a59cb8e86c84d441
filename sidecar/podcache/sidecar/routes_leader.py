"""``/v1/leader/{election}``: status, NDJSON watch, join (PUT) and resign (DELETE).

A watch answers 200 with ``application/x-ndjson``: the current state first, then one
line ``{"leader","holder","term"}`` per change. A blank line is sent after
``watch_heartbeat`` seconds without a change, so proxies and clients can tell a quiet
stream from a dead one (and a gone client is noticed). The stream ends when the
election is left or the sidecar shuts down, and its connection is closed then. Watches
are bounded by ``limits.maxWatchStreams`` and do not count in ``maxConnections``
(``podcache.sidecar.watches``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from podcache import configfile
from podcache.errors import ConfigError
from podcache.sidecar import inputs
from podcache.sidecar.elections import Election
from podcache.sidecar.errors import ApiError, api_handler
from podcache.sidecar.state import STATE

PREFIX = "/v1/leader/"
ROUTE = PREFIX + "{election:[^/]*}"
MAX_NAME_BYTES = 253  # configfile's election names: a DNS-label-like bound
_JOIN_FIELDS = frozenset({"leaseDuration", "renewDeadline", "retryPeriod"})


def _name(request: web.Request) -> str:
    return inputs.segment(request, PREFIX, what="election name", max_bytes=MAX_NAME_BYTES)


def _joined(request: web.Request, name: str) -> Election:
    election = request.app[STATE].elections.get(name)
    if election is None:
        raise ApiError(404, "unknown_election", f"this sidecar has not joined election {name!r}")
    return election


async def status(request: web.Request) -> web.StreamResponse:
    name = _name(request)
    watch = inputs.flag(request, "watch")
    election = _joined(request, name)
    if watch:
        return await _watch(request, election)
    return web.json_response(dataclasses.asdict(election.state))


async def _watch(request: web.Request, election: Election) -> web.StreamResponse:
    state = request.app[STATE]
    with state.watches.admit(request, limit=state.config.limits.max_watch_streams):
        return await _stream(request, election, heartbeat=state.watch_heartbeat)


async def _stream(
    request: web.Request, election: Election, *, heartbeat: float
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"}
    )
    # The connection left the connection limit for this watch: close it afterwards
    # rather than let it serve further requests uncounted.
    response.force_close()
    # Every write, the headers and the end of the stream included, may find the client
    # gone (aiohttp raises ConnectionError or RuntimeError): that ends the watch quietly.
    try:
        await response.prepare(request)
        async for state in election.changes(heartbeat=heartbeat):
            # None is a heartbeat: a blank line keeps idle proxies and clients from timing out
            body = b"" if state is None else json.dumps(dataclasses.asdict(state)).encode()
            line = body + b"\n"
            await response.write(line)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # nothing left to finish
    return response


async def join(request: web.Request) -> web.Response:
    name = _name(request)
    payload = await inputs.json_object(request, allowed=_JOIN_FIELDS)
    raw: dict[str, Any] = {"name": name, **payload}
    try:
        settings = configfile.parse({"elections": [raw]}).elections[0]
    except ConfigError as exc:
        field = exc.field.removeprefix("elections[0].")
        raise ApiError(400, "invalid_request", f"{field}: {exc.reason}") from exc
    election = await request.app[STATE].elections.join(settings)
    return web.json_response(dataclasses.asdict(election.state))


async def resign(request: web.Request) -> web.Response:
    name = _name(request)
    if not await request.app[STATE].elections.leave(name):
        raise ApiError(404, "unknown_election", f"this sidecar has not joined election {name!r}")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, api_handler(status))
    app.router.add_put(ROUTE, api_handler(join))
    app.router.add_delete(ROUTE, api_handler(resign))
