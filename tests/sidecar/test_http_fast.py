"""Cache requests answered from the socket's bytes (``podcache.sidecar.http_fast``).

Aspects, on raw connections so that the bytes on the wire are what is checked:
- fast mode answers as aiohttp answers: the same status lines, header names and bodies
  as the same requests on a connection aiohttp serves;
- a connection stays in fast mode for plain cache requests and leaves it at the first
  other request, whose bytes (and everything after) aiohttp then serves, in order,
  also when that request comes in the middle of one write;
- a head split over many writes, a body arriving after its head (aiohttp's, then the
  408 when it never ends), a request without ``Host``, a control byte in a field:
  each answered as aiohttp answers it;
- on Redis a request suspends in a Task: pipelined requests behind it are answered in
  order, a client gone mid-request leaves the sidecar serving, the keep-alive timer does
  not close a connection whose request is in progress, and a graceful shutdown lets
  the request in progress answer;
- a client that stops reading backs up the writes: reading pauses, and every answer
  arrives in order once it reads again;
- lock acquire, refresh and release answer as aiohttp's path does, errors included
  (held, not the owner, a bad ttl, bad JSON, a wait spelt with a JSON escape);
- the parser (hypothesis): any bytes give a request, "incomplete" or "aiohttp's", never
  an exception; a generated pipeline parses back into exactly its requests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podcache.sidecar import http_fast
from podcache.sidecar.errors import ApiError
from podcache.sidecar.http_fast import FastCacheRequestHandler
from podcache.sidecar.runtime import Sidecar
from tests.redis_server import RedisServer
from tests.sidecar.conftest import StartSidecar

LIMITS = {"maxValueBytes": 4 * 1024 * 1024, "requestTimeout": "2s"}


def _request(method: str, key: str, body: bytes | None = None, **headers: str) -> bytes:
    lines = [f"{method} /v1/cache/{key} HTTP/1.1", "Host: localhost"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Response:
    def __init__(self, status_line: str, headers: dict[str, str], body: bytes) -> None:
        self.status_line = status_line
        self.status = int(status_line.split(" ")[1])
        self.headers = headers
        self.body = body


async def _read(reader: asyncio.StreamReader, count: int = 1) -> list[Response]:
    responses = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *fields = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        responses.append(Response(status_line, headers, body))
    return responses


def _path(sidecar: Sidecar) -> str:
    assert sidecar.state is not None
    return str(sidecar.state.config.socket)


async def _connect(sidecar: Sidecar) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(_path(sidecar), limit=2**24)


def _handlers(sidecar: Sidecar) -> list[FastCacheRequestHandler]:
    runner = sidecar._runner
    assert runner is not None
    assert runner.server is not None
    found = [h for h in runner.server.connections if isinstance(h, FastCacheRequestHandler)]
    assert found, "the sidecar's connections are not served by http_fast"
    return found


def _shape(response: Response) -> tuple[str, list[str], bytes]:
    return response.status_line, sorted(set(response.headers) - {"date"}), response.body


async def _start(start_sidecar: StartSidecar, backend_config: dict[str, Any]) -> Sidecar:
    sidecar, _ = await start_sidecar({**backend_config, "limits": LIMITS})
    return sidecar


async def test_fast_mode_answers_as_aiohttp_does(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    sidecar = await _start(start_sidecar, backend_config)

    def requests(p: str) -> list[bytes]:
        return [
            _request("PUT", p + "k", b"value"),
            _request("GET", p + "k"),
            _request("GET", p + "absent"),
            _request("GET", p + "%ff"),  # not UTF-8: a 400 naming the key
            _request("PUT", p + "big", b"x" * 70_000),
            _request("PUT", p + "t?ttl=30s", b"timed"),
            _request("PUT", p + "t?ifAbsent=true&ttl=1m", b"again"),  # 409 exists
            _request("PUT", p + "n?ttl=5m&ifAbsent=1", b"new"),  # 201
            _request("PUT", p + "n?ttl=soon", b"bad"),  # 400 invalid_ttl
            _request("PUT", p + "n?ifAbsent=maybe", b"bad"),  # 400 invalid_request
            _request("PUT", p + "n?ttl=1s&ttl=2s", b"repeated"),  # aiohttp's (the first ttl)
            _request("PUT", p + "n?other=1", b"other"),  # aiohttp's (an unknown parameter)
            _request("PUT", p + "n?ttl=%33%30s", b"encoded"),
            _request("GET", p + "big"),
            _request("DELETE", p + "k"),
            _request("GET", p + "k"),
        ]

    fast_reader, fast_writer = await _connect(sidecar)
    slow_reader, slow_writer = await _connect(sidecar)
    slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")  # leaves fast mode
    assert (await _read(slow_reader))[0].status == 200
    statuses: list[int] = []
    try:
        for request, twin in zip(requests("f-"), requests("s-"), strict=True):
            fast_writer.write(request)
            (fast,) = await _read(fast_reader)
            slow_writer.write(twin)
            (slow,) = await _read(slow_reader)
            fast.body = fast.body.replace(b"f-", b"s-")  # the key in error messages
            assert _shape(fast) == _shape(slow), request[:40]
            statuses.append(fast.status)
            assert fast.headers.get("etag") == slow.headers.get("etag")
        assert statuses[5:13] == [204, 409, 201, 400, 400, 204, 204, 204]
        modes = {h._fast for h in _handlers(sidecar)}
        assert modes == {False}  # the repeated ttl handed the fast one to aiohttp
    finally:
        fast_writer.close()
        slow_writer.close()


async def test_a_pipeline_leaves_fast_mode_at_the_first_other_request(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    sidecar = await _start(start_sidecar, backend_config)
    reader, writer = await _connect(sidecar)
    puts = [_request("PUT", f"p{i}", f"v{i}".encode()) for i in range(20)]
    gets = [_request("GET", f"p{i}") for i in range(20)]
    writer.write(b"".join(puts + gets[:10]))
    responses = await _read(reader, 30)
    assert [r.status for r in responses] == [204] * 20 + [200] * 10
    assert [r.body for r in responses[20:]] == [f"v{i}".encode() for i in range(10)]
    assert all(h._fast for h in _handlers(sidecar))
    # One write: cache GETs, a request fast mode does not take (a query), more GETs.
    writer.write(b"".join([*gets[10:15], _request("GET", "p3?x=1"), *gets[15:]]))
    responses = await _read(reader, 11)
    assert [r.body for r in responses] == (
        [f"v{i}".encode() for i in range(10, 15)] + [b"v3"]
        + [f"v{i}".encode() for i in range(15, 20)]
    )
    assert not any(h._fast for h in _handlers(sidecar))
    writer.close()


async def test_heads_split_and_bodies_late(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    sidecar = await _start(start_sidecar, backend_config)
    reader, writer = await _connect(sidecar)
    for byte in _request("PUT", "split", b"abc"):
        writer.write(bytes([byte]))
        await writer.drain()
    assert (await _read(reader))[0].status == 204
    writer.write(_request("GET", "split"))
    assert (await _read(reader))[0].body == b"abc"
    # The head now, the body later: aiohttp's from here on, and it reads the body.
    request = _request("PUT", "late", b"late body")
    writer.write(request[:-4])
    await asyncio.sleep(0.2)
    writer.write(request[-4:] + _request("GET", "late"))
    responses = await _read(reader, 2)
    assert [r.status for r in responses] == [204, 200]
    assert responses[1].body == b"late body"
    writer.close()


async def test_a_body_that_never_ends_gets_408(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar({"type": "memory", "limits": {"requestTimeout": "300ms"}})
    reader, writer = await _connect(sidecar)
    writer.write(_request("PUT", "never", b"0123456789")[:-5])
    (response,) = await _read(reader)
    assert response.status == 408
    writer.close()


async def test_requests_aiohttp_refuses_are_refused_the_same(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar({"type": "memory"})
    for bad in (
        b"GET /v1/cache/k HTTP/1.1\r\n\r\n",  # no Host
        b"GET /v1/cache/k HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /v1/cache/k HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ):
        reader, writer = await _connect(sidecar)
        writer.write(bad)
        (response,) = await _read(reader)
        assert response.status == 400, bad
        writer.close()
    reader, writer = await _connect(sidecar)  # and the sidecar serves on
    writer.write(_request("PUT", "after", b"ok") + _request("GET", "after"))
    assert [r.body for r in await _read(reader, 2)] == [b"", b"ok"]
    writer.close()


async def test_redis_suspended_requests_keep_order_and_survive_clients(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    config = {"type": "redis", "config": {"url": redis_server.url, "keyPrefix": "fast-http:"}}
    sidecar = await _start(start_sidecar, config)
    reader, writer = await _connect(sidecar)
    writer.write(b"".join(_request("PUT", f"r{i}", b"%d" % i) for i in range(50)))
    assert [r.status for r in await _read(reader, 50)] == [204] * 50
    # A client that leaves while its request waits on a paused Redis.
    _, gone_writer = await _connect(sidecar)
    redis_server.pause()
    try:
        gone_writer.write(_request("GET", "r1"))
        await gone_writer.drain()
        await asyncio.sleep(0.1)
        gone_writer.close()
        writer.write(b"".join(_request("GET", f"r{i}") for i in range(50)))
        await asyncio.sleep(0.1)
    finally:
        redis_server.resume()
    responses = await _read(reader, 50)
    assert [r.body for r in responses] == [b"%d" % i for i in range(50)]
    writer.close()


async def test_the_keep_alive_timer_spares_a_request_in_progress(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    config = {"type": "redis", "config": {"url": redis_server.url, "keyPrefix": "fast-ka:"}}
    sidecar = await _start(start_sidecar, config)
    reader, writer = await _connect(sidecar)
    writer.write(_request("PUT", "ka", b"alive"))
    assert (await _read(reader))[0].status == 204
    redis_server.pause()
    try:
        writer.write(_request("GET", "ka"))
        await writer.drain()
        await asyncio.sleep(0.1)
        (handler,) = _handlers(sidecar)
        assert handler._request_in_progress
        handler._next_keepalive_close_time = 0.0  # as if the connection had idled 75 s
        handler._process_keepalive()
    finally:
        redis_server.resume()
    (response,) = await _read(reader)
    assert (response.status, response.body) == (200, b"alive")
    writer.close()


async def test_a_graceful_shutdown_answers_the_request_in_progress(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    config = {"type": "redis", "config": {"url": redis_server.url, "keyPrefix": "fast-stop:",
                                          "timeouts": {"operation": "1500ms"}}}
    sidecar = await _start(start_sidecar, config)
    reader, writer = await _connect(sidecar)
    writer.write(_request("PUT", "s", b"kept"))
    assert (await _read(reader))[0].status == 204
    redis_server.pause()
    try:
        writer.write(_request("GET", "s"))
        await writer.drain()
        await asyncio.sleep(0.1)
        assert any(h._request_in_progress for h in _handlers(sidecar))
        stopping = asyncio.create_task(sidecar.shutdown())
        await asyncio.sleep(0.3)
    finally:
        redis_server.resume()
    (response,) = await _read(reader)
    assert (response.status, response.body) == (200, b"kept")
    await stopping
    writer.close()


async def test_a_client_that_stops_reading_gets_everything_in_order(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    sidecar = await _start(start_sidecar, backend_config)
    value = b"z" * 256 * 1024
    # Stored from another connection: a body this large arrives in several reads, and
    # its connection goes to aiohttp, whose bounded pipeline queue (3.14.4+) then loses
    # the requests behind the 32nd after a PUT with a body (seen here, also in a bare
    # aiohttp app; not podcache's). This connection stays in fast mode.
    put_reader, put_writer = await _connect(sidecar)
    put_writer.write(_request("PUT", "large", value))
    assert (await _read(put_reader))[0].status == 204
    put_writer.close()
    reader, writer = await _connect(sidecar)
    count = 40  # 10 MiB of answers: far more than the socket buffers hold
    writer.write(b"".join(_request("GET", "large") for _ in range(count)))
    await writer.drain()
    await asyncio.sleep(0.5)  # the sidecar's writes back up meanwhile
    responses = await _read(reader, count)
    assert all(r.status == 200 and r.body == value for r in responses)
    assert all(h._fast for h in _handlers(sidecar))
    writer.write(_request("GET", "large"))
    assert (await _read(reader))[0].body == value
    writer.close()


def _lock(method: str, path: str, body: bytes = b"") -> bytes:
    return (
        f"{method} /v1/locks/{path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_locks_in_fast_mode_answer_as_aiohttp_does(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    sidecar = await _start(start_sidecar, backend_config)
    fast_reader, fast_writer = await _connect(sidecar)
    slow_reader, slow_writer = await _connect(sidecar)
    slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await _read(slow_reader))[0].status == 200
    for reader, writer, name in ((fast_reader, fast_writer, "f"), (slow_reader, slow_writer, "s")):
        writer.write(_lock("POST", name, b'{"ttl": "10s"}'))
        (acquired,) = await _read(reader)
        assert acquired.status == 200
        token = acquired.body.split(b'"token": ')[1].split(b",")[0]
        writer.write(
            _lock("POST", name, b'{"ttl": "10s"}')  # held: 409
            + _lock("POST", f"{name}/refresh", b'{"token": ' + token + b"}")
            + _lock("POST", f"{name}/refresh", b'{"token": "other"}')  # 409 not_owner
            + _lock("POST", name, b'{"ttl": "soon"}')  # 400 invalid_ttl
            + _lock("POST", name, b"{not json")  # 400 invalid_request
            + _lock("POST", name, b'{"\\u0077ait": "100ms"}')  # an escaped wait: waits, 409
            + _lock("DELETE", name, b'{"token": ' + token + b"}")
            + _lock("DELETE", name, b'{"token": ' + token + b"}")  # released: 409
        )
        answers = [acquired, *await _read(reader, 8)]
        if name == "f":
            fast = answers
        else:
            slow = answers
    assert [r.status for r in fast] == [200, 409, 200, 409, 400, 400, 409, 204, 409]
    assert [_shape(r)[:2] for r in fast] == [_shape(r)[:2] for r in slow]
    assert [r.headers.get("content-type") for r in fast] == [
        r.headers.get("content-type") for r in slow
    ]
    assert [r.body.replace(b"'f'", b"'s'") for r in fast[3:]] == [r.body for r in slow[3:]]
    handlers = _handlers(sidecar)
    assert sorted(h._fast for h in handlers) == [False, True]
    fast_writer.close()
    slow_writer.close()


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=5000))
@settings(max_examples=400, deadline=None)
def test_the_parser_takes_any_bytes_without_raising(data: bytes, max_value: int) -> None:
    parsed = http_fast._parse(data, 0, max_value)
    if isinstance(parsed, tuple):
        request, stop = parsed
        assert 0 < stop <= len(data)
        assert data[:stop].endswith(request.body)
    else:
        assert parsed in (http_fast._INCOMPLETE, http_fast._UNSUPPORTED)


_KEYS = st.text(alphabet="abcXYZ019-_.~%", min_size=1, max_size=20).filter(
    lambda key: key not in (".", "..")
)


@given(st.lists(st.tuples(st.sampled_from(["GET", "PUT", "DELETE"]), _KEYS,
                          st.binary(max_size=50)), min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_a_pipeline_parses_back_into_its_requests(
    requests: list[tuple[str, str, bytes]]
) -> None:
    wire = b"".join(
        _request(method, key, body if method == "PUT" else None) for method, key, body in requests
    )
    start = 0
    for method, key, body in requests:
        parsed = http_fast._parse(wire, start, 4096)
        assert isinstance(parsed, tuple)
        request, start = parsed
        assert (request.method, request.raw_name) == (method.encode(), key.encode())
        assert request.body == (body if method == "PUT" else b"")
    assert start == len(wire)
    assert http_fast._parse(wire + b"GET /v1/cache/k HTTP/1.1\r\nHo", start, 4096) == (
        http_fast._INCOMPLETE
    )


def test_repeated_acquire_bodies_are_parsed_once_and_checked_as_ever() -> None:
    bodies = http_fast._RepeatedBodies(frozenset({"ttl", "wait"}))
    first = bodies.parsed(b'{"ttl": "10s"}')
    assert first == {"ttl": "10s"}
    first["ttl"] = "changed by a caller"
    assert bodies.parsed(b'{"ttl": "10s"}') == {"ttl": "10s"}  # each caller gets its own copy
    assert list(bodies.known) == [b'{"ttl": "10s"}']
    for bad in (b'{"ttl": "10s", "owner": 1}', b"[1]", b"{not json"):
        for _ in range(2):  # refused every time, never remembered
            with pytest.raises(ApiError) as refused:
                bodies.parsed(bad)
            assert refused.value.status == 400
    assert list(bodies.known) == [b'{"ttl": "10s"}']
    big = b'{"ttl": "' + b"1" * 300 + b's"}'
    assert bodies.parsed(big) == {"ttl": "1" * 300 + "s"}
    assert big not in bodies.known  # large bodies are not kept
    for i in range(bodies.MAX_ENTRIES + 5):
        bodies.parsed(b'{"ttl": %d}' % i)
    assert len(bodies.known) <= bodies.MAX_ENTRIES
