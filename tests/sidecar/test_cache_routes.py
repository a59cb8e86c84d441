"""The cache routes of DESIGN.md's socket table, on the memory backend and a real Redis.

Aspects:
- GET 200 with the value and a quoted strong ETag; 404 not_found for a missing key.
- PUT 204 (with the new value's ETag); ttl as a duration or seconds; expiry; default TTL.
- PUT ?ifAbsent=true: 201 when absent, 409 exists when present (value untouched);
  If-None-Match: * behaves the same.
- PUT with If-Match: 204 when the ETag matches, 412 precondition_failed when it does not,
  when the key is absent, or for a weak tag; If-Match: * needs an existing value.
- DELETE 204, also for an absent key.
- Keys: percent-decoded UTF-8 segments (%2F, spaces, non-ASCII, '+') stored as the decoded text.
- Values are raw bytes: empty and binary values round-trip.
"""

from __future__ import annotations

import asyncio
import re

import xxhash

from tests.sidecar.conftest import Api, error_of

ETAG = re.compile(r'^"[0-9a-f]{32}"$')


async def test_put_then_get_returns_value_and_etag(api: Api) -> None:
    put = await api.request("PUT", "/v1/cache/greeting", data=b"hello")
    assert put.status == 204
    got = await api.request("GET", "/v1/cache/greeting")
    assert got.status == 200
    assert await got.read() == b"hello"
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert ETAG.match(got.headers["ETag"])
    assert got.headers["ETag"] == put.headers["ETag"]
    assert got.headers["ETag"] == f'"{xxhash.xxh3_128_hexdigest(b"hello")}"'


async def test_get_missing_key_is_404_not_found(api: Api) -> None:
    response = await api.request("GET", "/v1/cache/absent")
    assert response.status == 404
    assert await error_of(response) == "not_found"


async def test_overwrite_changes_value_and_etag(api: Api) -> None:
    first = await api.request("PUT", "/v1/cache/k", data=b"one")
    second = await api.request("PUT", "/v1/cache/k", data=b"two")
    assert first.headers["ETag"] != second.headers["ETag"]
    assert await (await api.request("GET", "/v1/cache/k")).read() == b"two"


async def test_empty_and_binary_values_round_trip(api: Api) -> None:
    binary = bytes(range(256)) * 4
    assert (await api.request("PUT", "/v1/cache/empty", data=b"")).status == 204
    assert (await api.request("PUT", "/v1/cache/bin", data=binary)).status == 204
    assert await (await api.request("GET", "/v1/cache/empty")).read() == b""
    assert await (await api.request("GET", "/v1/cache/bin")).read() == binary


async def test_ttl_as_duration_expires(api: Api) -> None:
    assert (await api.request("PUT", "/v1/cache/short?ttl=200ms", data=b"v")).status == 204
    assert (await api.request("GET", "/v1/cache/short")).status == 200
    await asyncio.sleep(0.35)
    assert (await api.request("GET", "/v1/cache/short")).status == 404


async def test_ttl_as_seconds_expires(api: Api) -> None:
    assert (await api.request("PUT", "/v1/cache/secs?ttl=0.2", data=b"v")).status == 204
    await asyncio.sleep(0.35)
    assert (await api.request("GET", "/v1/cache/secs")).status == 404


async def test_ttl_zero_and_absent_use_the_default_ttl(api: Api) -> None:
    # The default is 5m: both must still be there after longer than a short TTL.
    assert (await api.request("PUT", "/v1/cache/d0?ttl=0", data=b"v")).status == 204
    assert (await api.request("PUT", "/v1/cache/dn", data=b"v")).status == 204
    await asyncio.sleep(0.3)
    assert (await api.request("GET", "/v1/cache/d0")).status == 200
    assert (await api.request("GET", "/v1/cache/dn")).status == 200


async def test_if_absent_creates_once(api: Api) -> None:
    created = await api.request("PUT", "/v1/cache/once?ifAbsent=true", data=b"first")
    assert created.status == 201
    assert ETAG.match(created.headers["ETag"])
    again = await api.request("PUT", "/v1/cache/once?ifAbsent=true", data=b"second")
    assert again.status == 409
    assert await error_of(again) == "exists"
    assert await (await api.request("GET", "/v1/cache/once")).read() == b"first"


async def test_if_none_match_star_is_if_absent(api: Api) -> None:
    headers = {"If-None-Match": "*"}
    assert (await api.request("PUT", "/v1/cache/inm", data=b"a", headers=headers)).status == 201
    conflict = await api.request("PUT", "/v1/cache/inm", data=b"b", headers=headers)
    assert conflict.status == 409
    assert await (await api.request("GET", "/v1/cache/inm")).read() == b"a"


async def test_if_absent_false_is_a_plain_put(api: Api) -> None:
    await api.request("PUT", "/v1/cache/f", data=b"a")
    assert (await api.request("PUT", "/v1/cache/f?ifAbsent=false", data=b"b")).status == 204
    assert await (await api.request("GET", "/v1/cache/f")).read() == b"b"


async def test_if_match_compare_and_set(api: Api) -> None:
    await api.request("PUT", "/v1/cache/cas", data=b"v1")
    etag = (await api.request("GET", "/v1/cache/cas")).headers["ETag"]
    swapped = await api.request("PUT", "/v1/cache/cas", data=b"v2", headers={"If-Match": etag})
    assert swapped.status == 204
    stale = await api.request("PUT", "/v1/cache/cas", data=b"v3", headers={"If-Match": etag})
    assert stale.status == 412
    assert await error_of(stale) == "precondition_failed"
    assert await (await api.request("GET", "/v1/cache/cas")).read() == b"v2"


async def test_if_match_list_and_star(api: Api) -> None:
    await api.request("PUT", "/v1/cache/list", data=b"v1")
    etag = (await api.request("GET", "/v1/cache/list")).headers["ETag"]
    listed = await api.request(
        "PUT", "/v1/cache/list", data=b"v2", headers={"If-Match": f'"0000", {etag}'}
    )
    assert listed.status == 204
    star = await api.request("PUT", "/v1/cache/list", data=b"v3", headers={"If-Match": "*"})
    assert star.status == 204
    assert await (await api.request("GET", "/v1/cache/list")).read() == b"v3"


async def test_if_match_on_absent_key_or_weak_tag_is_412(api: Api) -> None:
    absent = await api.request("PUT", "/v1/cache/nokey", data=b"v", headers={"If-Match": "*"})
    assert absent.status == 412
    assert (await api.request("GET", "/v1/cache/nokey")).status == 404
    await api.request("PUT", "/v1/cache/weak", data=b"v1")
    etag = (await api.request("GET", "/v1/cache/weak")).headers["ETag"]
    weak = await api.request("PUT", "/v1/cache/weak", data=b"v2", headers={"If-Match": f"W/{etag}"})
    assert weak.status == 412
    assert await (await api.request("GET", "/v1/cache/weak")).read() == b"v1"


async def test_concurrent_compare_and_set_has_one_winner(api: Api) -> None:
    await api.request("PUT", "/v1/cache/race", data=b"start")
    etag = (await api.request("GET", "/v1/cache/race")).headers["ETag"]
    results = await asyncio.gather(
        *(
            api.request("PUT", "/v1/cache/race", data=f"w{i}".encode(), headers={"If-Match": etag})
            for i in range(8)
        )
    )
    statuses = sorted(response.status for response in results)
    assert statuses.count(204) == 1
    assert statuses.count(412) == 7


async def test_delete_then_get_is_404_and_delete_absent_is_204(api: Api) -> None:
    await api.request("PUT", "/v1/cache/gone", data=b"v")
    assert (await api.request("DELETE", "/v1/cache/gone")).status == 204
    assert (await api.request("GET", "/v1/cache/gone")).status == 404
    assert (await api.request("DELETE", "/v1/cache/gone")).status == 204
    assert (await api.request("DELETE", "/v1/cache/never-there")).status == 204


async def test_keys_are_percent_decoded_utf8(api: Api) -> None:
    cases = {
        "/v1/cache/a%2Fb": "a/b",
        "/v1/cache/sp%20ace": "sp ace",
        "/v1/cache/caf%C3%A9": "café",
        "/v1/cache/a+b": "a+b",
        "/v1/cache/pct%25": "pct%",
    }
    for index, path in enumerate(cases):
        assert (await api.request("PUT", path, data=str(index).encode())).status == 204, path
    for index, path in enumerate(cases):
        got = await api.request("GET", path)
        assert got.status == 200, path
        assert await got.read() == str(index).encode()
    # The same key spelled differently (%2f vs %2F) is the same key.
    assert await (await api.request("GET", "/v1/cache/a%2fb")).read() == b"0"


async def test_key_at_the_byte_limit_is_accepted(api: Api) -> None:
    key = "é" * 32  # 64 bytes once encoded, the limit of this sidecar
    path = "/v1/cache/" + "%C3%A9" * 32
    assert (await api.request("PUT", path, data=b"max")).status == 204
    assert await (await api.request("GET", path)).read() == b"max"
    assert len(key.encode()) == 64


async def test_value_at_the_size_limit_is_accepted(api: Api) -> None:
    value = b"x" * 4096
    assert (await api.request("PUT", "/v1/cache/big", data=value)).status == 204
    assert await (await api.request("GET", "/v1/cache/big")).read() == value
