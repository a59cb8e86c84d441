"""The common cache requests answered straight from the socket's bytes, before aiohttp.

Why it exists: at one connection a 100-byte GET through aiohttp costs ~85 us of CPU here,
and a bare asyncio protocol answering the same request ~33 us (issue 11: the memory
GET was 1.29x, the PUT 1.59x of a minimal aiohttp app's CPU, against a target of 1.15x,
and ``fast_path`` had already taken podcache's own work down to a few microseconds).
aiohttp's cost per request is its machinery, not the parsing: a request object, a
payload stream, a response object, the handler task woken through a future, the
response's header dict. No library offers a leaner server that can hand a connection
over to aiohttp mid-stream, so this is written here, kept to a strict subset.

How: ``FastCacheRequestHandler`` is aiohttp's own per-connection protocol (so shutdown,
keep-alive, idle eviction and the connection limit see it as ever), with one more step
in ``data_received``. While a connection stays in *fast mode* each complete request in
the buffer is read here if it is exactly one of:

- ``GET`` or ``DELETE /v1/cache/<key> HTTP/1.1`` with no body;
- ``PUT /v1/cache/<key> HTTP/1.1`` with a ``Content-Length`` within
  ``limits.maxValueBytes`` and the whole body already received, with no query or one
  of ``ttl`` and ``ifAbsent`` (each at most once, as the client library sends them);
- ``POST /v1/locks/<name>`` (acquire), ``POST /v1/locks/<name>/refresh`` and
  ``DELETE /v1/locks/<name>`` (release) with a JSON body of at most 64 KiB, received;

with a key or name segment holding no ``/``, ``#``, no other query, not ``.``/``..``
(nor a percent-encoded dot in a lock name, as ``fast_locks`` decides), and
only well-formed header fields (token names, visible ASCII values, fewer than 100), one
``Host`` (HTTP/1.1 requires it, and aiohttp refuses a request without), none
of ``Transfer-Encoding``, ``Expect``, ``Upgrade``, ``If-Match``, ``If-None-Match``, and
``Connection`` at most ``keep-alive``. Those are answered with the same backend calls,
the same errors (``errors.response_for``), the same headers and the same metrics as
``fast_path``'s and ``fast_locks``'s (whose ``routes_*.serve_*`` they call), in order,
the responses of one read written together.

Anything else - another path or method, HTTP/1.0, a query, a body still arriving (the
408 case), a chunked body, a header aiohttp would refuse - and the connection leaves
fast mode for good: the bytes from that request on go to aiohttp's parser, which then
serves the connection exactly as before (``fast_path``, ``fast_locks``, the router).
A head not yet complete is kept until it is (up to aiohttp's own 8 KiB line limit);
aiohttp's keep-alive timer closes a connection that stays silent in between.

A request whose backend call suspends (Redis) runs in a Task; the connection reads on
but answers nothing more until that one is written, so replies keep their order.
The timer rules are ``fast_path``'s and ``fast_locks``'s: a cache call is bounded by the
backend within the request timeout (``CacheSlot.call_bound``), or the connection goes
to aiohttp, which arms a timer; a lock call that could outlast it (a blocking acquire on
Redis, a tight request timeout) runs under ``asyncio.timeout``, in its Task. Lock
acquires that may wait, on the memory backend too, start in a Task: the wait is an
``asyncio.timeout`` of its own.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from podcache import etags
from podcache.sidecar import errors, fast_locks, hand_driven, inputs, routes_locks
from podcache.sidecar.errors import ApiError
from podcache.sidecar.http_protocol import JsonErrorsRequestHandler
from podcache.sidecar.state import SidecarState

ROUTE_LABEL = "/v1/cache/{key}"
"""The ``route`` label of these requests in the HTTP metrics (``fast_path``'s)."""

MAX_HEAD_BYTES = 8190
"""A head longer than this goes to aiohttp, whose line limit answers it."""
_MAX_FIELDS = 100
_PREFIX = b"/v1/cache/"
_PREFIX_LEN = len(_PREFIX)
_MAX_WAITING = 256 * 1024
"""Bytes read while a request is in progress before reading pauses (pipelined input)."""

_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?[ \t]*"
)
"""One header line: a token name, a colon, a value of visible ASCII and inner spaces."""
_TARGET = re.compile(rb"[\x21-\x7e]+")
_PUT_QUERY = re.compile(
    rb"(?:ttl=[^&#]*|ifAbsent=[^&#]*)(?:&(?:ttl=[^&#]*|ifAbsent=[^&#]*))?"
)
"""What a PUT's query may be in fast mode: ``ttl`` and ``ifAbsent``, each at most once
(``_route`` refuses a repeat), as the client library sends them."""
_TAKEN_OVER = frozenset(
    (b"transfer-encoding", b"expect", b"upgrade", b"if-match", b"if-none-match")
)
"""Fields whose meaning is the full path's (or aiohttp's) to decide."""
_SERVER = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n".encode()
_STATUS_LINES = {status: f"HTTP/1.1 {status} {status.phrase}\r\n".encode() for status in HTTPStatus}
_GET_HEAD = b"HTTP/1.1 200 OK\r\nETag: "
_GET_TYPE = b"\r\nContent-Type: application/octet-stream\r\nContent-Length: "
_PUT_HEAD = b"HTTP/1.1 204 No Content\r\nETag: "
_CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nETag: "
_DELETED = b"HTTP/1.1 204 No Content"
_LEASE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "
)
_DATE = b"\r\nDate: "
_GATHER_BELOW = 16 * 1024
"""Smaller values are joined to their head (one buffer); larger ones written beside it."""

# Sentinels of ``_parse``.
_INCOMPLETE = 0
_UNSUPPORTED = 1


class _Clock:
    """The ``Date`` header's text, formatted once a second (as aiohttp does)."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = b""

    def date(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.text = formatdate(now, usegmt=True).encode()
        return self.text


_CLOCK = _Clock()


_CACHE, _ACQUIRE, _REFRESH, _RELEASE = 0, 1, 2, 3
_LOCKS = routes_locks.PREFIX.encode()
_LOCKS_LEN = len(_LOCKS)
_REFRESH_SUFFIX = routes_locks.REFRESH_SUFFIX.encode()
_ROUTES = {
    _CACHE: ROUTE_LABEL,
    _ACQUIRE: fast_locks.ROUTE_LABEL,
    _RELEASE: fast_locks.ROUTE_LABEL,
    _REFRESH: fast_locks.REFRESH_LABEL,
}
_LOCK_FIELDS = {
    _ACQUIRE: routes_locks.ACQUIRE_FIELDS,
    _REFRESH: routes_locks.REFRESH_FIELDS,
    _RELEASE: routes_locks.RELEASE_FIELDS,
}
MAX_LOCK_BODY = 64 * 1024
"""A lock request's JSON body over this goes to aiohttp (``inputs.json_object``'s limit)."""


class _Request:
    """One request read in fast mode."""

    __slots__ = ("body", "kind", "method", "query", "raw_name", "received")

    def __init__(
        self, method: bytes, kind: int, raw_name: bytes, body: bytes, query: bytes
    ) -> None:
        self.method = method
        self.kind = kind
        self.raw_name = raw_name
        """The key's or the lock's name as in the target (percent-encoded)."""
        self.query = query
        """A PUT's query (``ttl``, ``ifAbsent``), as in the target; else empty."""
        self.body = body
        self.received = time.monotonic()  # as routes_locks.acquire takes it


def _route(method: bytes, target: bytes) -> tuple[int, bytes, bytes] | None:
    """What ``target`` asks for, the raw name in it and a PUT's query; None: aiohttp's."""
    query = b""
    if target.startswith(_PREFIX):
        if method not in (b"GET", b"PUT", b"DELETE"):
            return None
        kind, raw = _CACHE, target[_PREFIX_LEN:]
        if method == b"PUT" and b"?" in raw:
            raw, _, query = raw.partition(b"?")
            if not _PUT_QUERY.fullmatch(query) or (b"&" in query and (
                query.partition(b"=")[0] == query.partition(b"&")[2].partition(b"=")[0]
            )):
                return None  # another parameter, a repeated one, a fragment: aiohttp's
    elif target.startswith(_LOCKS):
        raw = target[_LOCKS_LEN:]
        if method == b"POST":
            kind = _ACQUIRE
            if raw.endswith(_REFRESH_SUFFIX):
                kind, raw = _REFRESH, raw[:-len(_REFRESH_SUFFIX)]
        elif method == b"DELETE":
            kind = _RELEASE
        else:
            return None
        if b"%2" in raw and b"%2e" in raw.lower():
            return None  # a percent-encoded dot: the router's path normalisation decides
    else:
        return None
    if (
        b"?" in raw or b"/" in raw or b"#" in raw or raw in (b".", b"..")
        or _TARGET.fullmatch(target) is None
    ):
        return None
    return kind, raw, query


def _parse(buffer: bytes, start: int, max_value: int) -> _Request | int | tuple[_Request, int]:
    """The request at ``buffer[start:]`` and where the next begins; else ``_INCOMPLETE``
    (wait for more bytes) or ``_UNSUPPORTED`` (aiohttp's to serve)."""
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        return _INCOMPLETE if len(buffer) - start <= MAX_HEAD_BYTES else _UNSUPPORTED
    if end - start > MAX_HEAD_BYTES:
        return _UNSUPPORTED
    lines = buffer[start:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or len(lines) > _MAX_FIELDS:
        return _UNSUPPORTED
    method = parts[0]
    routed = _route(method, parts[1])
    if routed is None:
        return _UNSUPPORTED
    kind, raw_name, query = routed
    length = -1
    hosts = 0
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return _UNSUPPORTED  # obs-fold, a control byte, non-ASCII: aiohttp judges
        name = field.group(1).lower()
        if name == b"content-length":
            value = field.group(2) or b""
            if length >= 0 or not value.isdigit() or len(value) > 18:
                return _UNSUPPORTED
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name in _TAKEN_OVER or (
            name == b"connection" and (field.group(2) or b"").lower() != b"keep-alive"
        ):
            return _UNSUPPORTED
    if hosts != 1:
        return _UNSUPPORTED  # HTTP/1.1 requires exactly one; aiohttp answers 400
    body_start = end + 4
    if kind != _CACHE:
        length = max(length, 0)  # no Content-Length and no Transfer-Encoding: no body
        if length > MAX_LOCK_BODY:
            return _UNSUPPORTED
    elif method == b"PUT":
        if length < 0 or length > max_value:
            return _UNSUPPORTED  # no length (chunked) or too large: aiohttp's
    elif length > 0:
        return _UNSUPPORTED
    else:
        length = 0
    stop = body_start + length
    if stop > len(buffer):
        return _UNSUPPORTED  # the body is still arriving: aiohttp's, with its 408 timer
    return _Request(method, kind, raw_name, buffer[body_start:stop], query), stop


def _may_wait(body: bytes) -> bool:
    """Whether an acquire's JSON may hold a ``wait`` (also spelt with ``\\u`` escapes)."""
    return b"wait" in body or b"\\u" in body


def _serialized(response: web.Response) -> bytes:
    """An error response as aiohttp would write it (status, headers, length, date)."""
    body = response.body or b""
    assert isinstance(body, bytes)
    lines = [_STATUS_LINES[HTTPStatus(response.status)]]
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "date", "server", "connection"):
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if response.status != 204:  # a 204 carries no Content-Length (RFC 9110), as aiohttp's
        lines.append(b"Content-Length: %d\r\n" % len(body))
    if response.keep_alive is False:  # force_close(); None: the default, kept alive
        lines.append(b"Connection: close\r\n")
    lines.append(b"Date: " + _CLOCK.date() + _SERVER + body)
    return b"".join(lines)


_METHODS = {b"GET": "GET", b"PUT": "PUT", b"DELETE": "DELETE", b"POST": "POST"}

Answer = tuple[int, bytes | list[bytes], bool]
"""A response: its status, its bytes (head and value apart for large values), and
whether the connection closes after it."""


async def _answer(state: SidecarState, request: _Request) -> Answer:
    """``fast_path``'s or ``fast_locks``'s work for one request, its response as bytes."""
    if request.kind != _CACHE:
        return await _lock_answer(state, request)
    limits = state.config.limits
    key = inputs.decode_segment(
        request.raw_name.decode("ascii"), what="key", max_bytes=limits.max_key_bytes
    )
    method = request.method
    if method == b"GET":
        value, etag = await state.slot.cache.get_with_etag(key)
        head = b"".join((
            _GET_HEAD, etag.encode(), _GET_TYPE, b"%d" % len(value), _DATE, _CLOCK.date(),
            _SERVER,
        ))
        if len(value) < _GATHER_BELOW:
            return 200, head + value, False
        return 200, [head, value], False
    if method == b"DELETE":
        await state.slot.cache.delete(key)
        return 204, b"".join((_DELETED, _DATE, _CLOCK.date(), _SERVER)), False
    value = request.body
    ttl, if_absent = _put_options(request.query, state.default_ttl)
    # As routes_cache.serve_put without a condition header: the body held against
    # limits.maxInflightBytes until stored.
    with state.bodies.claim(limits.max_inflight_bytes) as claim:
        claim.take(len(value))
        etag = etags.etag_of(value)
        if if_absent:
            if not await state.cache.set_nx(key, value, ttl):
                raise ApiError(409, "exists", f"key {key!r} already exists")
            return 201, b"".join((_CREATED, etag.encode(), _DATE, _CLOCK.date(), _SERVER)), False
        await state.cache.set(key, value, ttl)
    return 204, b"".join((_PUT_HEAD, etag.encode(), _DATE, _CLOCK.date(), _SERVER)), False


def _put_options(query: bytes, default_ttl: float) -> tuple[float, bool]:
    """The TTL and ``ifAbsent`` of a PUT's query, by ``inputs``' rules for each."""
    if not query:
        return default_ttl, False
    values: dict[str, str] = {}
    for item in query.split(b"&"):
        name, _, raw = item.partition(b"=")
        # As aiohttp's query parsing: '+' is a space, then percent-decoding.
        values[name.decode()] = unquote(raw.decode().replace("+", " "))
    return (
        inputs.ttl_of(values.get("ttl"), default_ttl),
        inputs.flag_of("ifAbsent", values.get("ifAbsent")),
    )


async def _lock_answer(state: SidecarState, request: _Request) -> Answer:
    """Acquire, refresh or release as ``fast_locks`` does, with its timer rule."""
    limits = state.config.limits
    name = inputs.decode_segment(
        request.raw_name.decode("ascii"), what="lock name", max_bytes=limits.max_key_bytes
    )
    kind = request.kind
    if kind == _ACQUIRE:
        payload = _ACQUIRE_BODIES.parsed(request.body)
    else:  # these carry a token: each body is new
        payload = inputs.json_object_of(request.body, allowed=_LOCK_FIELDS[kind])
    slot = state.slot
    timeout = limits.request_timeout
    waits = kind == _ACQUIRE and "wait" in payload
    if slot.never_blocks or (not waits and slot.lock_call_bound <= timeout):
        body = await _lock_work(state, request, name, payload)
    else:  # only ever in a Task (a Redis slot's requests start in one)
        try:
            async with asyncio.timeout(timeout):
                body = await _lock_work(state, request, name, payload)
        except TimeoutError:
            response = errors.backend_timed_out(timeout)
            return response.status, _serialized(response), response.keep_alive is False
    # The bytes ``_serialized`` makes of ``routes_locks``' responses, without building them.
    date = _CLOCK.date()
    if body is None:
        return 204, b"".join((_DELETED, _DATE, date, _SERVER)), False
    return 200, b"".join((_LEASE_HEAD, b"%d" % len(body), _DATE, date, _SERVER, body)), False


async def _lock_work(
    state: SidecarState, request: _Request, name: str, payload: dict[str, Any]
) -> bytes | None:
    """The lease's JSON (acquire, refresh), or None (release): ``routes_locks``' work."""
    kind = request.kind
    if kind == _ACQUIRE:
        lease, waited = await routes_locks.acquire_lease(
            state, name, payload, received=request.received
        )
        return routes_locks.lease_body(lease, waited=waited)
    if kind == _REFRESH:
        return routes_locks.lease_body(await routes_locks.refresh_lease(state, name, payload))
    await routes_locks.release_lock(state, name, payload)
    return None


class _RepeatedBodies:
    """Parsed acquire bodies by their bytes. An app sends the same few (``{"ttl": "10s"}``)
    with every acquire, and parsing JSON on each was a measurable part of a lock request's
    cost (issue 11): each distinct body is parsed and checked once. Bounded: small bodies
    only, and forgotten all at once when full."""

    MAX_BODY = 256
    MAX_ENTRIES = 256

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self.known: dict[bytes, dict[str, Any]] = {}

    def parsed(self, body: bytes) -> dict[str, Any]:
        """``inputs.json_object_of(body)`` (its errors too), a copy of its own each time."""
        payload = self.known.get(body)
        if payload is None:
            payload = inputs.json_object_of(body, allowed=self.allowed)
            if len(body) <= self.MAX_BODY:
                if len(self.known) >= self.MAX_ENTRIES:
                    self.known.clear()
                self.known[body] = payload
        return dict(payload)


_ACQUIRE_BODIES = _RepeatedBodies(routes_locks.ACQUIRE_FIELDS)


def _error(exc: BaseException) -> Answer:
    response = errors.response_for(exc)
    return response.status, _serialized(response), response.keep_alive is False


class FastCacheRequestHandler(JsonErrorsRequestHandler):
    """aiohttp's protocol with the fast mode of the module docstring in front of it."""

    __slots__ = ("_fast", "_fast_held", "_fast_state", "_fast_tail", "_fast_task")

    def __init__(self, state: SidecarState, server: web.Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._fast_state = state
        self._fast = True
        """Still in fast mode (else aiohttp serves every byte from here on)."""
        self._fast_tail = b""
        """Bytes read and not yet served: a partial head, or input behind a request."""
        self._fast_task: asyncio.Task[None] | None = None
        """The request whose backend call suspended, while it runs."""
        self._fast_held = False
        """Reading paused by fast mode (writes backed up, or input piling up)."""

    # -- the protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._fast:
            super().data_received(data)
            return
        if self._force_close or self._close:
            return
        if self._fast_tail:
            data = self._fast_tail + data
            self._fast_tail = b""
        if self._fast_task is not None or self._paused:  # answer in order, when writable
            self._fast_tail = data
            if len(data) > _MAX_WAITING:
                self._hold()
            return
        self._serve(data)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._fast and self._fast_task is None:
            self._continue()

    def _process_keepalive(self) -> None:
        # aiohttp counts a connection idle while its own task waits for a message, which
        # it always does in fast mode: a request in progress here is not idle.
        if self._fast_task is not None:
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        super()._process_keepalive()

    def connection_lost(self, exc: BaseException | None) -> None:
        task = self._fast_task
        super().connection_lost(exc)
        if task is not None:
            task.cancel()

    # -- fast mode --------------------------------------------------------------------------

    def _serve(self, buffer: bytes) -> None:
        """Answer the complete requests at the head of ``buffer``, in order."""
        state = self._fast_state
        limits = state.config.limits
        if state.slot.call_bound > limits.request_timeout:
            self._leave_fast_mode(buffer)  # each request then needs a timer: aiohttp's
            return
        max_value = limits.max_value_bytes
        observe = state.metrics.observe_request
        out: list[bytes] = []
        start, size = 0, len(buffer)
        while start < size:
            parsed = _parse(buffer, start, max_value)
            if type(parsed) is int:
                self._write(out)
                if parsed == _INCOMPLETE:
                    self._fast_tail = buffer[start:]
                else:
                    self._leave_fast_mode(buffer[start:])
                return
            assert isinstance(parsed, tuple)
            request, start = parsed
            started = time.perf_counter()
            slot = state.slot
            slot.inflight += 1
            work = _answer(state, request)
            if not slot.never_blocks or (request.kind == _ACQUIRE and _may_wait(request.body)):
                # In a Task from the start: Redis calls and a lock's wait use asyncio.timeout.
                self._write(out)
                self._fast_tail = buffer[start:]
                self._start(work, None, request, started, slot)
                return
            try:
                yielded = work.send(None)
            except StopIteration as stop:
                answer: Answer = stop.value
            except Exception as exc:
                answer = _error(exc)
            else:  # suspended after all: a Task takes it from here
                self._write(out)
                self._fast_tail = buffer[start:]
                self._start(work, (yielded,), request, started, slot)
                return
            slot.leave()
            status, payload, closing = answer
            observe(_ROUTES[request.kind], _METHODS[request.method], status,
                    time.perf_counter() - started)
            if isinstance(payload, bytes):
                out.append(payload)
            else:
                out.extend(payload)
            if closing:
                self._write(out)
                self.force_close()
                return
            if self._paused:
                break  # the client is not reading: the rest waits for resume_writing
        self._write(out)
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        if start < size:
            self._fast_tail = buffer[start:]
            self._hold()

    def _start(
        self,
        work: Coroutine[Any, Any, Answer],
        yielded: tuple[Any] | None,
        request: _Request,
        started: float,
        slot: Any,
    ) -> None:
        self._request_in_progress = True  # for shutdown and idle eviction, as aiohttp's
        coro = work if yielded is None else hand_driven.resumed(work, yielded[0])
        self._fast_task = self._loop.create_task(self._finish(coro, request, started, slot))

    async def _finish(
        self, work: Coroutine[Any, Any, Answer], request: _Request, started: float, slot: Any
    ) -> None:
        try:
            try:
                answer = await work
            except Exception as exc:
                answer = _error(exc)
        finally:
            slot.leave()
            self._fast_task = None
            self._request_in_progress = False
            waiter = self._handler_waiter  # a graceful shutdown waits for this request
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        status, payload, closing = answer
        self._fast_state.metrics.observe_request(
            _ROUTES[request.kind], _METHODS[request.method], status, time.perf_counter() - started
        )
        if self.transport is None:
            return
        self._write([payload] if isinstance(payload, bytes) else payload)
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        if closing:
            self.force_close()
        elif not self._force_close and not self._paused:
            self._continue()

    def _continue(self) -> None:
        """Serve what arrived while a request ran or writes were backed up."""
        self._release()
        data, self._fast_tail = self._fast_tail, b""
        if data and not (self._force_close or self._close):
            self._serve(data)

    def _write(self, out: list[bytes]) -> None:
        transport = self.transport
        if not out or transport is None:
            return
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)  # uvloop: one writev
        out.clear()

    def _hold(self) -> None:
        if not self._fast_held and self.transport is not None:
            self._fast_held = True
            self.transport.pause_reading()

    def _release(self) -> None:
        if self._fast_held:
            self._fast_held = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _leave_fast_mode(self, rest: bytes) -> None:
        """From here on aiohttp serves the connection, starting with ``rest``."""
        self._fast = False
        self._release()
        if rest:
            super().data_received(rest)


def factory(server: web.Server, state: SidecarState) -> Callable[[], FastCacheRequestHandler]:
    """A protocol factory like ``http_protocol.factory``'s, making fast-mode handlers."""
    kwargs = server._kwargs  # private: the options the runner gave the server

    def make() -> FastCacheRequestHandler:
        return FastCacheRequestHandler(state, server, loop=asyncio.get_running_loop(), **kwargs)

    return make
