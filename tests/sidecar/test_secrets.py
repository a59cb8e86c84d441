"""No credential ever reaches the sidecar's output (issue 10, items 8 and 9).

Real sidecar processes, a real password-protected ``redis-server``; every byte a
process writes (its whole log: stdout and stderr) is grepped for the secrets.

Aspects:
- credentials in the Redis URL (user info, ``?password=``, ``?username=``) are
  refused at start (exit 2, naming ``config.url``) and on reload (the old config
  keeps serving);
- a bad-scheme URL holding a password, a numeric (unquoted) password, a YAML syntax
  error on the password's line, a wrong password, an unreachable Redis: refused or
  warned about, each naming the field, none echoing the secret.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.availability import unavailable
from tests.redis_server import RedisServer, RedisUnavailable, free_port
from tests.sidecar.conftest import Api, SidecarProcess, wait_until
from tests.sidecar.test_reload import write

SECRET = "Sup3rS3cret"
NUMERIC_SECRET = 73197319  # YAML reads it as a number: the type error used to echo it
REDIS_PASSWORD = "R3disPassw0rd"
SECRETS = (SECRET, str(NUMERIC_SECRET), REDIS_PASSWORD)

Spawn = Callable[..., SidecarProcess]


@pytest.fixture
def protected_redis() -> Any:
    try:
        server = RedisServer()
        server.start()
    except RedisUnavailable as exc:
        unavailable("Redis", str(exc))
    # Set after start: the start-up probe's PING would meet NOAUTH.
    with redis.Redis(port=server.port) as admin:
        admin.config_set("requirepass", REDIS_PASSWORD)
    yield server
    server.close()


def bad_configs(port: int) -> list[str]:
    url = f"redis://127.0.0.1:{port}/0"
    return [
        f"type: redis\nconfig: {{url: 'redis://:{SECRET}@127.0.0.1:{port}/0'}}\n",
        f"type: redis\nconfig: {{url: '{url}?password={SECRET}'}}\n",
        f"type: redis\nconfig: {{url: '{url}?db=0&username=app&password={SECRET}'}}\n",
        f"type: redis\nconfig: {{url: 'unix:///tmp/r.sock?password={SECRET}'}}\n",
        f"type: redis\nconfig: {{url: 'http://app:{SECRET}@127.0.0.1:{port}/0'}}\n",
        f"type: redis\nconfig: {{url: 'redis:/app:{SECRET}@127.0.0.1:{port}/0'}}\n",
        f"type: redis\nconfig: {{url: '{url}', password: {NUMERIC_SECRET}}}\n",
        f"type: redis\nconfig: {{url: '{url}', password: '{SECRET}\n",  # unterminated quote
        f"type: redis\nconfig:\n  url: {url}\n  password: {SECRET}\n\tkeyPrefix: x\n",
        (
            "type: redis\nconfig: {sentinel: {masterName: m, addresses: ['127.0.0.1:1'], "
            f"password: {NUMERIC_SECRET}}}}}\n"
        ),
    ]


async def reloads(port: int, result: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(f'lab_sidecar_config_reload_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def assert_no_secret(process: SidecarProcess) -> None:
    output = process.log_path.read_text(errors="replace")
    for secret in SECRETS:
        assert secret not in output, f"{secret!r} leaked into the output:\n{output}"


@pytest.mark.redis
async def test_bad_configs_at_start_exit_2_without_echoing_a_secret(
    spawn_sidecar: Spawn, protected_redis: RedisServer, short_tmp: Path,
) -> None:
    for index, text in enumerate(bad_configs(protected_redis.port)):
        path = short_tmp / f"bad{index}.yaml"
        path.write_text(text)
        process = spawn_sidecar(None, extra_args=("--config", str(path)))
        code = await asyncio.to_thread(process.process.wait, 30)
        output = process.log_path.read_text(errors="replace")
        assert code == 2, output
        assert any(field in output for field in ("config.url", "config.password",
                                                 "config.sentinel.password", "file:")), output
        assert_no_secret(process)


@pytest.mark.redis
async def test_refused_reloads_and_failures_never_echo_a_secret(
    spawn_sidecar: Spawn, protected_redis: RedisServer,
) -> None:
    url = f"redis://127.0.0.1:{protected_redis.port}/0"
    good = {"type": "redis", "config": {"url": url, "keyPrefix": "secrets:"}}
    process = spawn_sidecar(good, env={"PODCACHE_REDIS_PASSWORD": REDIS_PASSWORD,
                                       "PODCACHE_LOG_LEVEL": "debug"})
    await asyncio.to_thread(process.wait_socket)
    api = Api(process.socket_path)
    try:
        assert (await api.request("PUT", "/v1/cache/k", data=b"v")).status == 204
        texts = bad_configs(protected_redis.port)
        for count, text in enumerate(texts, start=1):
            write(process.config_path, text)
            process.process.send_signal(signal.SIGHUP)

            async def refused(expected: int = count) -> bool:
                return await reloads(process.metrics_port, "error") >= expected

            await wait_until(refused, within=10, message=f"refusal of {text!r}")
            response = await api.request("GET", "/v1/cache/k")  # the old config still serves
            assert (response.status, await response.read()) == (200, b"v")
        # Valid files whose Redis refuses or is away: warned or refused, never echoed.
        wrong = {"type": "redis", "config": {"url": url, "keyPrefix": "secrets:",
                                             "password": SECRET}}
        away = {"type": "redis", "config": {"url": f"redis://127.0.0.1:{free_port()}/0",
                                            "keyPrefix": "secrets:", "password": SECRET,
                                            "timeouts": {"connect": "200ms"}}}
        for config in (wrong, away):
            before = (await reloads(process.metrics_port, "error")
                      + await reloads(process.metrics_port, "ok"))
            write(process.config_path, config)
            process.process.send_signal(signal.SIGHUP)

            async def handled(floor: float = before) -> bool:
                total = (await reloads(process.metrics_port, "error")
                         + await reloads(process.metrics_port, "ok"))
                return total > floor

            await wait_until(handled, within=10, message=f"reload of {config}")
            await (await api.request("GET", "/readyz")).read()
    finally:
        await api.close()
    assert process.terminate() == 0
    assert "config.url" in process.log_path.read_text()
    assert_no_secret(process)


@pytest.mark.redis
async def test_unreachable_redis_at_start_warns_without_the_password(
    spawn_sidecar: Spawn, short_tmp: Path,
) -> None:
    config = {"type": "redis", "config": {"url": f"redis://127.0.0.1:{free_port()}/0",
                                          "keyPrefix": "x:", "password": SECRET}}
    process = spawn_sidecar(config)
    await asyncio.to_thread(process.wait_socket)

    async def warned() -> bool:
        return any(" WARNING " in line for line in process.log_lines())

    await wait_until(warned, within=10, message="a start-up warning")
    assert process.terminate() == 0
    assert_no_secret(process)
