"""Bad input of every kind gets its documented 4xx, loses nothing stored, and stops nothing.

Aspects:
- keys: bad percent-escapes, invalid UTF-8, empty, over the byte limit, a raw '/': 400 invalid_key.
- TTLs: unparsable, negative, above the maximum: 400 invalid_ttl; ifAbsent not a boolean: 400.
- ifAbsent together with If-Match, If-None-Match other than '*': 400 invalid_request.
- oversized values: by Content-Length and by a chunked stream with no length: 413 too_large,
  refused before the whole body was read, the old value intact.
- lock bodies: not JSON, not an object, unknown field, missing or wrong-typed token,
  bad ttl/wait, ttl above maxTTL: 400; a wrong token: 409 not_owner.
- unknown routes and methods: 404 no_route / 405 method_not_allowed, as JSON.
- after all of it, every value stored before is still there and the server still serves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.sidecar.conftest import Api, error_of

BAD_KEYS = [
    ("/v1/cache/%ZZ", "bad escape"),
    ("/v1/cache/abc%2", "truncated escape"),
    ("/v1/cache/%FF%FE", "not UTF-8"),
    ("/v1/cache/%C3", "truncated UTF-8"),
    ("/v1/cache/", "empty"),
    ("/v1/cache/" + "k" * 65, "one byte over the limit"),
    ("/v1/cache/" + "%C3%A9" * 33, "over the limit in bytes, not characters"),
    ("/v1/cache/a/b", "raw slash"),
]


@pytest.fixture
async def seeded(api: Api) -> AsyncIterator[Api]:
    """The api with a value stored first; the test fails if it is not intact at the end."""
    assert (await api.request("PUT", "/v1/cache/keep", data=b"precious")).status == 204
    assert (await api.request("PUT", "/v1/cache/k1", data=b"old")).status == 204
    yield api
    assert await (await api.request("GET", "/v1/cache/keep")).read() == b"precious"
    assert await (await api.request("GET", "/v1/cache/k1")).read() == b"old"
    assert (await api.request("GET", "/healthz")).status == 200


@pytest.mark.parametrize(("path", "why"), BAD_KEYS, ids=[why for _, why in BAD_KEYS])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_bad_keys_are_400_invalid_key(seeded: Api, method: str, path: str, why: str) -> None:
    response = await seeded.request(method, path, data=b"x" if method == "PUT" else None)
    assert response.status == 400, why
    assert await error_of(response) == "invalid_key"


@pytest.mark.parametrize(
    "ttl", ["abc", "-1", "-5s", "10x", "1e3", "nan", "inf", "5s5", "%20", "1s-"]
)
async def test_bad_ttl_is_400_invalid_ttl(seeded: Api, ttl: str) -> None:
    response = await seeded.request("PUT", f"/v1/cache/k1?ttl={ttl}", data=b"new")
    assert response.status == 400
    assert await error_of(response) == "invalid_ttl"


async def test_huge_ttl_is_cut_to_ten_years_not_refused(seeded: Api) -> None:
    response = await seeded.request("PUT", "/v1/cache/k2?ttl=99999999999999", data=b"v")
    assert response.status == 204
    assert await (await seeded.request("GET", "/v1/cache/k2")).read() == b"v"


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?ifAbsent=maybe", {}),
        ("?ifAbsent=true", {"If-Match": "*"}),
        ("", {"If-None-Match": '"abc"'}),
    ],
)
async def test_conflicting_or_bad_flags_are_400(
    seeded: Api, query: str, headers: dict[str, str]
) -> None:
    response = await seeded.request("PUT", f"/v1/cache/k1{query}", data=b"new", headers=headers)
    assert response.status == 400
    assert await error_of(response) == "invalid_request"


async def test_oversized_value_by_content_length_is_413(seeded: Api) -> None:
    response = await seeded.request("PUT", "/v1/cache/k1", data=b"x" * 4097)
    assert response.status == 413
    assert await error_of(response) == "too_large"


async def test_oversized_chunked_value_is_413_without_reading_it_all(seeded: Api) -> None:
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10_000):  # 10 MB if the server read it all
            sent += 1024
            yield b"y" * 1024
            await asyncio.sleep(0)

    response = await seeded.request("PUT", "/v1/cache/k1", data=stream())
    assert response.status == 413
    assert await error_of(response) == "too_large"
    assert "Content-Length" not in response.request_info.headers
    assert sent < 10_000 * 1024  # refused long before the end of the stream


async def test_chunked_value_within_the_limit_is_stored(seeded: Api) -> None:
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 1000

    assert (await seeded.request("PUT", "/v1/cache/chunked", data=stream())).status == 204
    assert await (await seeded.request("GET", "/v1/cache/chunked")).read() == b"z" * 4000


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe",
        b'{"ttl": "10s", "owner": "me"}',
        b'{"ttl": "ten seconds"}',
        b'{"ttl": -1}',
        b'{"ttl": true}',
        b'{"wait": "soon"}',
        b'{"ttl": "2m"}',
        b'{"ttl": [1]}',
    ],
)
async def test_bad_acquire_bodies_are_400(seeded: Api, body: bytes) -> None:
    response = await seeded.request("POST", "/v1/locks/job", data=body)
    assert response.status == 400, body
    assert await error_of(response) in ("invalid_request", "invalid_ttl")
    # Nothing was acquired by the bad request.
    status, lease = await seeded.json("POST", "/v1/locks/job", json={"ttl": "1s"})
    assert status == 200, lease
    await seeded.request("DELETE", "/v1/locks/job", json={"token": lease["token"]})


@pytest.mark.parametrize("body", [b"", b"{}", b'{"token": 5}', b'{"token": ""}', b"nope"])
async def test_release_and_refresh_without_a_valid_token_are_400(seeded: Api, body: bytes) -> None:
    _, lease = await seeded.json("POST", "/v1/locks/held", json={"ttl": "5s"})
    release = await seeded.request("DELETE", "/v1/locks/held", data=body)
    refresh = await seeded.request("POST", "/v1/locks/held/refresh", data=body)
    assert (release.status, refresh.status) == (400, 400)
    # The lock is still held by its owner.
    assert (await seeded.request("POST", "/v1/locks/held")).status == 409
    assert (
        await seeded.request("DELETE", "/v1/locks/held", json={"token": lease["token"]})
    ).status == 204


async def test_wrong_token_is_409_not_owner_and_lock_stays_held(seeded: Api) -> None:
    _, lease = await seeded.json("POST", "/v1/locks/mine", json={"ttl": "5s"})
    wrong = {"token": "not-the-token"}
    release = await seeded.request("DELETE", "/v1/locks/mine", json=wrong)
    refresh = await seeded.request("POST", "/v1/locks/mine/refresh", json=wrong)
    assert (release.status, refresh.status) == (409, 409)
    assert await error_of(release) == "not_owner"
    assert await error_of(refresh) == "not_owner"
    assert (await seeded.request("POST", "/v1/locks/mine")).status == 409
    assert (
        await seeded.request("DELETE", "/v1/locks/mine", json=lease)
    ).status == 400  # extra fields
    assert (
        await seeded.request("DELETE", "/v1/locks/mine", json={"token": lease["token"]})
    ).status == 204


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "no_route"),
        ("GET", "/v1/locks/x", 405, "method_not_allowed"),
        ("POST", "/v1/cache/x", 405, "method_not_allowed"),
        ("PATCH", "/v1/leader/x", 405, "method_not_allowed"),
        ("GET", "/v1/locks/a/b/c", 404, "no_route"),
    ],
)
async def test_unknown_routes_and_methods_are_json_errors(
    seeded: Api, method: str, path: str, status: int, code: str
) -> None:
    response = await seeded.request(method, path)
    assert response.status == status
    assert await error_of(response) == code


async def test_bad_lock_and_election_names_are_400(seeded: Api) -> None:
    for path in ("/v1/locks/%ZZ", "/v1/locks/" + "n" * 65, "/v1/leader/%FF"):
        response = await seeded.request("POST" if "locks" in path else "GET", path)
        assert response.status == 400, path
        assert await error_of(response) == "invalid_key"


async def test_garbage_on_the_socket_does_not_stop_the_server(seeded: Api) -> None:
    reader, writer = await asyncio.open_unix_connection(seeded.socket_path)
    writer.write(b"\x00\x01 NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    answer = await reader.read(100)
    writer.close()
    assert answer.split()[1] == b"400", answer
    # A request line with a huge header is refused too, and the server goes on.
    reader, writer = await asyncio.open_unix_connection(seeded.socket_path)
    writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    await writer.drain()
    answer = await reader.read(100)
    writer.close()
    assert answer.split()[1].startswith(b"4"), answer


async def test_truncated_body_is_400(seeded: Api) -> None:
    reader, writer = await asyncio.open_unix_connection(seeded.socket_path)
    writer.write(b"PUT /v1/cache/k1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
    await writer.drain()
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    # Answered 400 as JSON, or the connection just closed: never a 5xx; the old value stays.
    if answer:
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.split()[1] == b"400", answer
        assert json.loads(payload)["error"] == "invalid_request"


async def test_expect_continue_refuses_an_oversized_value_before_upload(seeded: Api) -> None:
    reader, writer = await asyncio.open_unix_connection(seeded.socket_path)
    writer.write(
        b"PUT /v1/cache/k1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.split()[1] == b"413"  # no "100 Continue": the body is never sent
    writer.close()
    # A value within the limit still gets its 100 Continue and is stored.
    reader, writer = await asyncio.open_unix_connection(seeded.socket_path)
    writer.write(
        b"PUT /v1/cache/k3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).split()[1] == b"100"
    writer.write(b"abc")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).split()[1] == b"204"
    writer.close()
    assert await (await seeded.request("GET", "/v1/cache/k3")).read() == b"abc"
