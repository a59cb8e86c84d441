"""``/v1/cache/{key}``: GET, PUT (plain, ``ifAbsent``, ``If-Match``) and DELETE of raw values.

The ETag is a strong hash of the value (``podcache.etags``: xxh3-128, kept by the
memory backend with large values), so a client can compare-and-set with
``If-Match`` without the sidecar keeping versions: the sidecar reads the current
value, checks its hash, and writes with the backend's atomic ``set_if_match``
against exactly that value, so a concurrent writer in between makes it a 412.

Everything that can be checked before the body is read (key, ttl, flags) is
checked first: a bad request is refused without reading its body.

The ``serve_*`` functions do the work; the router's handlers here and the lean path
(``fast_path``, which answers most of these requests before aiohttp's router) both
call them, so the two cannot drift apart.
"""

from __future__ import annotations

from aiohttp import web

from podcache import etags
from podcache.cache import Cache
from podcache.errors import CacheMiss
from podcache.sidecar import inputs
from podcache.sidecar.errors import ApiError, api_handler, error_response
from podcache.sidecar.state import STATE, SidecarState

PREFIX = "/v1/cache/"
ROUTE = PREFIX + r"{key:[\s\S]*}"  # any text, newlines and raw '/' too: segment() judges it


etag_of = etags.etag_of  # the name other modules and tests import from here

OCTET_STREAM = "application/octet-stream"


def _key(request: web.Request, state: SidecarState) -> str:
    limit = state.config.limits.max_key_bytes
    return inputs.segment(request, PREFIX, what="key", max_bytes=limit)


async def get_value(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return await serve_get(state, _key(request, state))


async def serve_get(state: SidecarState, key: str) -> web.Response:
    value, etag = await state.slot.cache.get_with_etag(key)
    return web.Response(body=value, content_type=OCTET_STREAM, headers={"ETag": etag})


async def put_value(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return await serve_put(state, request, _key(request, state))


async def serve_put(
    state: SidecarState, request: web.Request, key: str, *, has_query: bool = True
) -> web.Response:
    """PUT of ``key``; ``has_query=False`` (no ``?`` in the target) skips parsing the query."""
    if has_query:
        ttl = inputs.ttl_query(request, state.default_ttl)
        if_absent = inputs.flag(request, "ifAbsent")
    else:
        ttl, if_absent = state.default_ttl, False
    # An empty header states no condition (some clients send "If-Match:" with nothing).
    if_match = request.headers.get("If-Match", "").strip() or None
    if_none_match = request.headers.get("If-None-Match", "").strip() or None
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise ApiError(
                400,
                "invalid_request",
                "If-None-Match on PUT supports only '*' (the same as ifAbsent=true)",
            )
        if_absent = True
    if if_absent and if_match is not None:
        raise ApiError(400, "invalid_request", "ifAbsent and If-Match cannot be combined")
    limits = state.config.limits
    # Held until the value is stored (then the backend counts it) or dropped.
    with state.bodies.claim(limits.max_inflight_bytes) as claim:
        value = await inputs.body(request, limit=limits.max_value_bytes, claim=claim)
        return await _store(
            state, key=key, value=value, ttl=ttl, if_absent=if_absent, if_match=if_match
        )


async def _store(
    state: SidecarState,
    *,
    key: str,
    value: bytes,
    ttl: float,
    if_absent: bool,
    if_match: str | None,
) -> web.Response:
    cache = state.cache
    etag = etag_of(value)
    if if_absent:
        if not await cache.set_nx(key, value, ttl):
            raise ApiError(409, "exists", f"key {key!r} already exists")
        return web.Response(status=201, headers={"ETag": etag})
    if if_match is not None:
        await _compare_and_set(cache, key=key, value=value, if_match=if_match, ttl=ttl)
    else:
        await cache.set(key, value, ttl)
    return web.Response(status=204, headers={"ETag": etag})


async def delete_value(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return await serve_delete(state, _key(request, state))


async def serve_delete(state: SidecarState, key: str) -> web.Response:
    await state.slot.cache.delete(key)
    return web.Response(status=204)


def _parse_if_match(header: str) -> set[str] | None:
    """The listed entity tags (quoted), or None for ``*`` (any current value)."""
    tags: set[str] = set()
    for item in header.split(","):
        tag = item.strip()
        if tag == "*":
            return None
        if tag.startswith("W/"):
            continue  # weak tags never match If-Match's strong comparison (RFC 9110)
        if tag and not tag.startswith('"'):
            tag = f'"{tag}"'  # tolerate a client that dropped the quotes
        if tag:
            tags.add(tag)
    return tags


async def _compare_and_set(
    cache: Cache, *, key: str, value: bytes, if_match: str, ttl: float
) -> None:
    tags = _parse_if_match(if_match)
    try:
        current, current_tag = await cache.get_with_etag(key)
    except CacheMiss:
        raise ApiError(412, "precondition_failed", f"key {key!r} does not exist") from None
    if tags is not None and current_tag not in tags:
        raise ApiError(
            412,
            "precondition_failed",
            f"key {key!r} has ETag {current_tag}, not {if_match.strip()}",
        )
    if not await cache.set_if_match(key, value, current, ttl):
        raise ApiError(412, "precondition_failed", f"key {key!r} changed concurrently")


async def expect_continue(request: web.Request) -> web.Response | None:
    """``Expect: 100-continue``: refuse an oversized value before the client sends it.

    curl asks this for bodies over 1 MiB; aiohttp's default handler would say
    "continue" and let the whole upload arrive only to answer 413.
    """
    limit = request.app[STATE].config.limits.max_value_bytes
    length = request.content_length
    if length is not None and length > limit:
        response = error_response(
            413, "too_large", f"the value is {length} bytes, the limit is {limit}"
        )
        response.force_close()
        return response
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, "invalid_request", "only 'Expect: 100-continue' is supported")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response size
    return None


def add_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, api_handler(get_value))
    app.router.add_put(ROUTE, api_handler(put_value), expect_handler=expect_continue)
    app.router.add_delete(ROUTE, api_handler(delete_value))
