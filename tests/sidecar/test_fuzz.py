"""Schema-driven fuzzing of the socket API against its own /openapi.json (schemathesis).

Aspects:
- every documented operation, with generated valid and invalid inputs (paths, query,
  headers, bodies), never gets a 5xx and every answer conforms to the document:
  documented status, content type, headers and body schema.
- the server survives the whole run and still serves what was stored before it.

The sidecar runs in a background thread with its own event loop (schemathesis calls
are synchronous) and is also served on a loopback TCP port for the fuzzer; the Unix
socket serves the same Application. GET /v1/leader/{election} is left out of the fuzz
(a generated watch=true would stream forever) and is covered in test_leader_routes.
The request timeout is short so a generated blocking lock wait stays short.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import checks

from podcache import configfile
from podcache.sidecar import openapi
from podcache.sidecar.overrides import Overrides
from podcache.sidecar.runtime import Options, Sidecar

CONFIG: dict[str, Any] = {
    "type": "memory",
    "limits": {"maxValueBytes": 2048, "maxKeyBytes": 128, "requestTimeout": "1s"},
    "locks": {"defaultTTL": "2s", "maxTTL": "10s"},
}

# Valid input may still meet a lock held by an earlier example (409), a missing key
# (404) or an ETag that does not match (412).
SCHEMATHESIS = schemathesis.Config.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "412"]}}}
)
schema = schemathesis.openapi.from_dict(
    openapi.document(configfile.parse(CONFIG)), config=SCHEMATHESIS
)

# Rules JSON Schema cannot state: limits in UTF-8 bytes, a lock ttl below locks.maxTTL
# given as a duration string, leaseDuration > renewDeadline > retryPeriod. Where they
# apply, schema-valid input may rightly get a 400, so the data-acceptance checks stay
# off there; the server is also deliberately lenient (ifAbsent=1, " 5s"), so the
# negative-data check is off everywhere. ifAbsent=true with If-Match can never both
# hold and is a 400. Conformance and "no 5xx" checks all stay on.
EXACT_OPERATIONS = {"/v1/cache/{key}", "/healthz", "/readyz", "/openapi.json"}


class ServerThread:
    """A sidecar on its own loop in a thread, plus a TCP site on the same runner."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.base_url = ""
        self.session = requests.Session()  # keep-alive, like a real client
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-sidecar", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(15)
        if self._error is not None:
            raise self._error
        assert self.base_url, "the sidecar did not start"

    def _run(self) -> None:
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        overrides = Overrides(socket=self.socket_path, metrics_port=0)
        sidecar = Sidecar(
            Options(overrides=overrides), config=overrides.apply(configfile.parse(CONFIG))
        )
        try:
            await sidecar.start()
            assert sidecar.runner is not None
            site = web.TCPSite(sidecar.runner, "127.0.0.1", 0)
            await site.start()
            self.base_url = f"http://127.0.0.1:{site.port}"
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await sidecar.shutdown()

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    directory = Path(tempfile.mkdtemp(prefix="pcf-", dir="/tmp"))  # short: socket path limit
    thread = ServerThread(str(directory / "f.sock"))
    thread.start()
    stored = requests.put(f"{thread.base_url}/v1/cache/sentinel-key", data=b"kept", timeout=5)
    assert stored.status_code == 204
    yield thread
    kept = requests.get(f"{thread.base_url}/v1/cache/sentinel-key", timeout=5)
    assert kept.status_code == 200, "the fuzz run lost or broke stored data"
    assert kept.content == b"kept"
    thread.stop()
    shutil.rmtree(directory, ignore_errors=True)


@schema.exclude(path="/v1/leader/{election}", method="GET").parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_answers_conform_to_the_document(case: Any, server: ServerThread) -> None:
    excluded = [checks.negative_data_rejection]
    contradictory = bool((case.query or {}).get("ifAbsent")) and "If-Match" in (case.headers or {})
    if case.operation.path not in EXACT_OPERATIONS or contradictory:
        excluded.append(checks.positive_data_acceptance)
    case.call_and_validate(
        base_url=server.base_url, session=server.session, timeout=10, excluded_checks=excluded
    )
