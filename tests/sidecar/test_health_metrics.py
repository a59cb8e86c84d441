"""Probes, the OpenAPI document and the metrics listener.

Aspects:
- /healthz 200; /readyz 200 with a backend that answers.
- /openapi.json is an OpenAPI 3 document whose paths and methods are exactly the routes
  the server has, with the configured limits in it.
- /metrics on TCP: the seed's cache metrics, lock and election metrics and the HTTP
  server metrics (route templates, never raw keys), all under the configured namespace,
  in one registry per instance (two sidecars in one process do not collide).
- the cache itself is not served on the metrics port.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from podcache.sidecar.runtime import Sidecar
from tests.sidecar.conftest import Api, StartSidecar, free_port, wait_until


async def scrape(sidecar: Sidecar, path: str = "/metrics") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.metrics_port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_healthz_and_readyz(api: Api) -> None:
    status, body = await api.json("GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, body = await api.json("GET", "/readyz")
    assert status == 200
    assert body["status"] == "ready"


async def test_openapi_document_matches_the_routes(start_sidecar: StartSidecar) -> None:
    sidecar, api = await start_sidecar({"limits": {"maxValueBytes": 1234, "maxKeyBytes": 99}})
    status, document = await api.json("GET", "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert sidecar._runner is not None
    served = set()
    for route in sidecar._runner.app.router.routes():
        if route.method in ("HEAD", "*"):  # "*": the catch-all answering JSON 404/405
            continue
        path = route.resource.canonical if route.resource is not None else ""
        served.add((path, route.method))
    assert documented == served
    key = document["paths"]["/v1/cache/{key}"]["parameters"][0]
    assert key["schema"]["maxLength"] == 24  # characters that always fit in 99 bytes
    assert "99 bytes" in key["description"]
    assert "1234" in document["paths"]["/v1/cache/{key}"]["put"]["requestBody"]["description"]


async def test_metrics_cover_cache_locks_elections_and_http(
    start_sidecar: StartSidecar, backend_config: dict[str, Any]
) -> None:
    election = f"e-{uuid.uuid4().hex[:6]}"
    config = {
        **backend_config,
        "metrics": {"namespace": "shop"},
        "elections": [
            {"name": election, "leaseDuration": "2s", "renewDeadline": "1s", "retryPeriod": "100ms"}
        ],
    }
    sidecar, api = await start_sidecar(config, metrics_port=free_port())
    await api.request("PUT", "/v1/cache/secret-key-name", data=b"v")
    await api.request("GET", "/v1/cache/secret-key-name")
    await api.request("GET", "/v1/cache/absent")
    await api.request("POST", "/v1/locks/job", json={"ttl": "5s"})

    async def leader_seen() -> str | None:
        _, text = await scrape(sidecar)
        return text if f'shop_leader_is_leader{{election="{election}"}} 1.0' in text else None

    text = await wait_until(leader_seen, message="election metric")
    for line in [
        'shop_cache_requests_total{operation="get",status="hit"} 1.0',
        'shop_cache_requests_total{operation="get",status="miss"} 1.0',
        'shop_cache_requests_total{operation="set",status="ok"} 1.0',
        "shop_cache_hits_total 1.0",
        "shop_cache_misses_total 1.0",
        'shop_http_requests_total{method="PUT",route="/v1/cache/{key}",status="204"} 1.0',
        'shop_http_requests_total{method="GET",route="/v1/cache/{key}",status="404"} 1.0',
        'shop_http_requests_total{method="POST",route="/v1/locks/{name}",status="200"} 1.0',
        'shop_sidecar_config_reload_total{result="error"} 0.0',
        "shop_sidecar_elections_joined 1.0",
        "shop_http_connections 1.0",
    ]:
        assert line in text, line
    for name in [
        "shop_cache_operation_duration_seconds_bucket",
        "shop_cache_items",
        "shop_http_request_duration_seconds_bucket",
        "shop_lock_acquisitions_total",
    ]:
        assert name in text, name
    assert "secret-key-name" not in text  # raw keys never become label values
    assert "lab_" not in text


async def test_metrics_port_does_not_serve_the_cache(start_sidecar: StartSidecar) -> None:
    sidecar, _ = await start_sidecar(metrics_port=free_port())
    status, _ = await scrape(sidecar, "/v1/cache/anything")
    assert status == 404
    status, _ = await scrape(sidecar, "/healthz")
    assert status == 200


async def test_two_instances_have_separate_registries(start_sidecar: StartSidecar) -> None:
    first, api_a = await start_sidecar(name="a", metrics_port=free_port())
    second, _ = await start_sidecar(name="b", metrics_port=free_port())
    await api_a.request("PUT", "/v1/cache/k", data=b"v")
    _, text_a = await scrape(first)
    _, text_b = await scrape(second)
    line = 'lab_cache_requests_total{operation="set",status="ok"}'
    assert f"{line} 1.0" in text_a
    assert f"{line} 0.0" in text_b


@pytest.mark.parametrize("port", [0])
async def test_metrics_port_zero_turns_the_listener_off(
    start_sidecar: StartSidecar, port: int
) -> None:
    sidecar, api = await start_sidecar(metrics_port=port)
    assert sidecar.metrics_port == 0
    assert (await api.request("GET", "/healthz")).status == 200
