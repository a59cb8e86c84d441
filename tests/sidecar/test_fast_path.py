"""The lean path for cache GET/PUT/DELETE (``podcache.sidecar.fast_path``), on both backends.

Aspects:
- the targets it takes answer as the routes always did: percent-encoded keys, ``%2F`` in a
  key, the ``ttl``/``ifAbsent`` query, If-Match, bad keys and bad query values;
- the targets it hands to the app still get the app's answers: a raw ``/`` in the key,
  dot segments, HEAD, ``Expect: 100-continue`` over the value limit;
- the request timer is kept where it can fire first: Redis paused with a request
  timeout shorter than the operation timeout answers within the request timeout, also
  for an If-Match PUT whose two calls would outlast it.
"""

from __future__ import annotations

import time

from tests.redis_server import RedisServer
from tests.sidecar.conftest import Api, StartSidecar, error_of


async def test_keys_and_queries_as_before(api: Api) -> None:
    response = await api.request("PUT", "/v1/cache/a%2Fb%20c?ttl=30s", data=b"one")
    assert response.status == 204
    response = await api.request("GET", "/v1/cache/a%2Fb%20c")
    assert response.status == 200
    assert await response.read() == b"one"
    etag = response.headers["ETag"]
    assert (await api.request("PUT", "/v1/cache/k?ifAbsent=true", data=b"x")).status == 201
    assert (await api.request("PUT", "/v1/cache/k?ifAbsent=true", data=b"y")).status == 409
    response = await api.request("PUT", "/v1/cache/a%2Fb%20c", data=b"two",
                                 headers={"If-Match": etag})
    assert response.status == 204
    response = await api.request("PUT", "/v1/cache/a%2Fb%20c", data=b"three",
                                 headers={"If-Match": etag})
    assert response.status == 412
    response = await api.request("PUT", "/v1/cache/k?ttl=soon", data=b"v")
    assert (response.status, await error_of(response)) == (400, "invalid_ttl")
    response = await api.request("GET", "/v1/cache/%ZZ")
    assert (response.status, await error_of(response)) == (400, "invalid_key")
    assert (await api.request("DELETE", "/v1/cache/k")).status == 204
    assert (await api.request("GET", "/v1/cache/k")).status == 404


async def test_what_the_app_still_answers(api: Api) -> None:
    response = await api.request("GET", "/v1/cache/a/b")
    assert (response.status, await error_of(response)) == (400, "invalid_key")
    response = await api.request("GET", "/v1/cache/..")
    assert response.status == 404
    assert (await api.request("PUT", "/v1/cache/h", data=b"v")).status == 204
    response = await api.request("HEAD", "/v1/cache/h")
    assert response.status == 200
    response = await api.request(
        "PUT", "/v1/cache/big", data=b"x" * 5000, headers={"Expect": "100-continue"}
    )
    assert (response.status, await error_of(response)) == (413, "too_large")


async def test_request_timeout_shorter_than_the_operation_timeout(
    start_sidecar: StartSidecar, redis_server: RedisServer
) -> None:
    _, api = await start_sidecar({
        "type": "redis",
        "config": {"url": redis_server.url, "keyPrefix": "fast:",
                   "timeouts": {"operation": "2s"}},
        "limits": {"requestTimeout": "300ms"},
    })
    assert (await api.request("PUT", "/v1/cache/k", data=b"v")).status == 204
    etag = (await api.request("GET", "/v1/cache/k")).headers["ETag"]
    redis_server.pause()
    try:
        for method, headers in (("GET", {}), ("PUT", {}), ("PUT", {"If-Match": etag})):
            started = time.monotonic()
            response = await api.request(method, "/v1/cache/k", data=b"w", headers=headers)
            elapsed = time.monotonic() - started
            assert response.status == 503, method
            assert elapsed < 1.0, f"{method} {headers}: {elapsed:.2f}s"
    finally:
        redis_server.resume()
