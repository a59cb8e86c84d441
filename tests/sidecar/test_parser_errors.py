"""Requests the HTTP parser itself refuses are answered in the documented JSON error shape.

Aspects:
- a request line over aiohttp's 8190-byte limit, a header line over it, bad chunked
  encoding, Content-Length together with Transfer-Encoding, a malformed request line:
  each gets a 4xx with ``Content-Type: application/json`` and ``{"error", "message"}``.
- the connection is closed after such an answer (the stream cannot be trusted), is not
  logged as a server error, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.sidecar.conftest import StartSidecar

REJECTED = [
    (b"GET /v1/cache/" + b"k" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "request line too long"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", "header too long"),
    (
        b"PUT /v1/cache/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
        "bad chunk size",
    ),
    (
        b"PUT /v1/cache/c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        "Content-Length with Transfer-Encoding",
    ),
    (b"GET\r\n\r\n", "malformed request line"),
]


async def _exchange(path: str, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(raw)
        await writer.drain()
        # read() ends only when the server closes the connection, as it must after these.
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("raw", "why"), REJECTED, ids=[why for _, why in REJECTED])
async def test_parser_rejections_are_json(
    start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture, raw: bytes, why: str
) -> None:
    sidecar, api = await start_sidecar({"type": "memory"})
    with caplog.at_level(logging.DEBUG):
        answer = await _exchange(sidecar.socket_path, raw)
    status, headers, body = _parse(answer)
    assert 400 <= status < 500, (why, answer[:200])
    assert headers["content-type"].startswith("application/json"), (why, headers)
    payload = json.loads(body[: int(headers["content-length"])])
    assert set(payload) == {"error", "message"}, payload
    assert payload["error"]
    assert payload["message"]
    # Bad input is not a server error: no ERROR record, no traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert (await api.request("GET", "/healthz")).status == 200
