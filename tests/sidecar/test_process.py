"""The sidecar as a process: command line, environment, start-up, signals, exit codes.

Aspects:
- --help lists every flag and its environment variable; exit 0.
- no arguments: the embedded default (memory backend, ./podcache.sock off-pod); the
  metrics port from PODCACHE_METRICS_PORT; the socket and config from PODCACHE_SOCKET /
  PODCACHE_CONFIG; --log-format json writes one JSON object per line.
- start-up to a socket that answers is measured and printed (target: under 1 s).
- SIGTERM: an in-flight request still gets its answer, locks taken through the sidecar
  are released, elections resigned, the socket file removed, exit code 0.
- a second sidecar on a live socket exits 1 naming the problem; an invalid config exits 2
  naming the field; the first sidecar keeps serving.
- the Redis password comes from PODCACHE_REDIS_PASSWORD or PODCACHE_REDIS_PASSWORD_FILE.
- start-up errors name what failed and the flag that sets it: a socket in a directory the
  sidecar may not write (EACCES) or where no socket can be made (/proc) names the path and
  --socket, a metrics port in use names the port and --metrics-port (exit 1, no socket
  file left behind); a Redis that does not answer at start is a WARNING naming its URL
  without the password, and the sidecar serves anyway.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from podcache import configfile
from podcache.sidecar.overrides import Overrides
from tests.redis_server import RedisServer
from tests.sidecar.conftest import Api, SidecarProcess, StartSidecar, free_port, wait_until

Spawn = Callable[..., SidecarProcess]


def test_help_lists_flags_and_environment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podcache.sidecar.main", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    for text in [
        "--config",
        "--socket",
        "--metrics-port",
        "--log-level",
        "--log-format",
        "PODCACHE_CONFIG",
        "PODCACHE_SOCKET",
        "PODCACHE_METRICS_PORT",
        "PODCACHE_LOG_LEVEL",
    ]:
        assert text in result.stdout, text


def test_no_arguments_runs_the_embedded_default(spawn_sidecar: Spawn) -> None:
    assert not Path("/var/run/podcache").exists(), "this test expects to run off-pod"
    port = free_port()
    process = spawn_sidecar(None, flags=False, env={"PODCACHE_METRICS_PORT": str(port)})
    ready_after = process.wait_socket()
    print(f"\nstart-up (no arguments) to socket ready: {ready_after * 1000:.0f} ms")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert "lab_cache_requests_total" in response.read().decode()
    assert process.terminate() == 0, process.log()
    assert not Path(process.socket_path).exists(), process.log()


def test_environment_variables_and_json_logs(spawn_sidecar: Spawn, short_tmp: Path) -> None:
    config_path = short_tmp / "c.yaml"
    config_path.write_text("type: memory\nlogLevel: info\n")
    socket_path = str(short_tmp / "env.sock")
    env = {
        "PODCACHE_CONFIG": str(config_path),
        "PODCACHE_SOCKET": socket_path,
        "PODCACHE_METRICS_PORT": "0",
        "PODCACHE_LOG_LEVEL": "debug",
        "POD_NAME": "pod-env",
    }
    process = spawn_sidecar(
        None, flags=False, env=env, socket_path=socket_path, extra_args=("--log-format", "json")
    )
    process.wait_socket()
    assert process.terminate() == 0, process.log()
    records = [json.loads(line) for line in process.log_lines() if line.strip()]
    assert records
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(record["level"] == "debug" for record in records)  # PODCACHE_LOG_LEVEL won
    assert any("pod-env" in record["message"] for record in records)  # POD_NAME is the identity


async def test_sigterm_finishes_in_flight_releases_locks_and_removes_socket(
    spawn_sidecar: Spawn, redis_url: str
) -> None:
    prefix = f"term-{uuid.uuid4().hex[:6]}:"
    election = f"e-{uuid.uuid4().hex[:6]}"
    config = {
        "type": "redis",
        "config": {"url": redis_url, "keyPrefix": prefix},
        "elections": [
            {
                "name": election,
                "leaseDuration": "10s",
                "renewDeadline": "5s",
                "retryPeriod": "100ms",
            }
        ],
        "shutdownGracePeriod": "5s",
    }
    process = spawn_sidecar(config, env={"POD_NAME": "pod-term"})
    ready_after = await asyncio.to_thread(process.wait_socket)
    print(f"\nstart-up (redis, one election) to socket ready: {ready_after * 1000:.0f} ms")
    api = Api(process.socket_path)
    try:

        async def leads() -> bool:
            status, state = await api.json("GET", f"/v1/leader/{election}")
            return status == 200 and state["leader"]

        await wait_until(leads, message="leader")
        status, lease = await api.json("POST", "/v1/locks/held", json={"ttl": "1m"})
        assert status == 200
        # In flight at SIGTERM: a blocking acquire that will time out after 1 s.
        in_flight = asyncio.create_task(api.json("POST", "/v1/locks/held", json={"wait": "1s"}))
        await asyncio.sleep(0.2)
        process.process.send_signal(signal.SIGTERM)
        status, _ = await asyncio.wait_for(in_flight, 10)
        assert status == 409  # answered, not cut off
    finally:
        await api.close()
    assert await asyncio.to_thread(process.process.wait, 15) == 0
    assert not Path(process.socket_path).exists()  # noqa: ASYNC240  # the process is gone
    with redis.Redis.from_url(redis_url) as raw:
        leftovers = [key.decode() for key in raw.scan_iter(f"{prefix}*")]
        values = {key: raw.get(key) for key in leftovers if raw.type(key) == b"string"}
    assert lease["token"].encode() not in values.values(), "the lock was not released"
    assert not any(value and b"pod-term" in value for value in values.values()), values


async def test_live_socket_and_invalid_config_exit_with_clear_errors(
    spawn_sidecar: Spawn, short_tmp: Path
) -> None:
    first = spawn_sidecar({"type": "memory"})
    await asyncio.to_thread(first.wait_socket)
    second_dir = short_tmp / "second"
    second_dir.mkdir()
    second = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "podcache.sidecar.main",
            "--socket",
            first.socket_path,
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=second_dir,
    )
    assert second.returncode == 1
    assert "already serving" in second.stderr
    assert first.socket_path in second.stderr
    bad = short_tmp / "bad.yaml"
    bad.write_text("type: memory\nlimits: {maxValueBytes: lots}\n")
    third = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "podcache.sidecar.main",
            "--config",
            str(bad),
            "--socket",
            str(short_tmp / "x.sock"),
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert third.returncode == 2
    assert "limits.maxValueBytes" in third.stderr
    api = Api(first.socket_path)
    try:
        assert (await api.request("GET", "/healthz")).status == 200
    finally:
        await api.close()
    assert first.terminate() == 0


@pytest.fixture
def protected_redis(redis_server: RedisServer) -> RedisServer:
    """A Redis that wants a password (set after start: the fixture's probe pings without one)."""
    with redis.Redis(port=redis_server.port) as raw:
        raw.config_set("requirepass", "s3cret")
    return redis_server


@pytest.mark.parametrize("source", ["env", "file", "none"])
async def test_redis_password_from_the_environment(
    start_sidecar: StartSidecar,
    protected_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    short_tmp: Path,
    source: str,
) -> None:
    if source == "env":
        monkeypatch.setenv("PODCACHE_REDIS_PASSWORD", "s3cret")
    elif source == "file":
        secret = short_tmp / "password"
        secret.write_text("s3cret\n")
        monkeypatch.setenv("PODCACHE_REDIS_PASSWORD_FILE", str(secret))
    _, api = await start_sidecar({"type": "redis", "config": {"url": protected_redis.url}})
    expected = (503, 503) if source == "none" else (204, 200)  # no password: not ready, no 500
    put = await api.request("PUT", "/v1/cache/k", data=b"v")
    ready = await api.request("GET", "/readyz")
    assert (put.status, ready.status) == expected


def test_password_from_the_environment_only_when_the_config_has_none() -> None:
    environ = {"PODCACHE_REDIS_PASSWORD": "from-secret"}
    plain = configfile.parse({"type": "redis", "config": {"url": "redis://r:6379/0"}})
    given = configfile.parse(
        {"type": "redis", "config": {"url": "redis://r:6379/0", "password": "own"}}
    )
    memory = configfile.parse({"type": "memory"})
    overrides = Overrides(socket="/tmp/x.sock")
    assert overrides.apply(plain, environ=environ).backend.settings.password == "from-secret"
    assert overrides.apply(given, environ=environ).backend.settings.password == "own"
    assert overrides.apply(memory, environ=environ).backend.type == "memory"


def test_sigint_shuts_down_like_sigterm(spawn_sidecar: Spawn) -> None:
    process = spawn_sidecar({"type": "memory"})
    process.wait_socket()
    process.process.send_signal(signal.SIGINT)
    assert process.process.wait(timeout=15) == 0, process.log()
    assert not Path(process.socket_path).exists()
    assert "SIGINT received" in process.log()


PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
"""What lets root write into any directory (linux/prctl.h, linux/capability.h)."""


def _without_dac_override() -> None:
    """``preexec_fn``: the child, even as root, obeys directory permissions after exec.

    Dropping the capability from the bounding set, not changing user: the interpreter
    may live where only root can reach it (e.g. pyenv under /root).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


def _run_sidecar(
    *args: str, cwd: Path, obey_permissions: bool = False
) -> subprocess.CompletedProcess[str]:
    """``podcache-sidecar`` that is expected to fail at start."""
    as_root = obey_permissions and os.geteuid() == 0
    try:
        return subprocess.run(
            [sys.executable, "-m", "podcache.sidecar.main", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=cwd,
            preexec_fn=_without_dac_override if as_root else None,
        )
    except subprocess.SubprocessError as exc:  # the preexec_fn failed: no CAP_SETPCAP
        if not as_root:
            raise
        pytest.skip(f"root cannot give up CAP_DAC_OVERRIDE here: {exc}")


@pytest.mark.parametrize("where", ["in it", "below it"])
def test_socket_in_an_unwritable_directory_names_the_path_and_the_flag(
    short_tmp: Path, where: str
) -> None:
    locked = short_tmp / "locked"
    locked.mkdir(mode=0o555)
    # Directly in it, bind() is refused; below it, creating the missing directory is.
    socket_path = locked / ("s.sock" if where == "in it" else "sub/s.sock")
    result = _run_sidecar(
        "--socket",
        str(socket_path),
        "--metrics-port",
        "0",
        cwd=short_tmp,
        obey_permissions=True,
    )
    assert result.returncode == 1, result.stderr
    assert str(socket_path) in result.stderr
    assert "Permission denied" in result.stderr
    assert "--socket" in result.stderr
    assert "Traceback" not in result.stderr


def test_socket_where_no_socket_can_be_made_names_the_path_and_the_flag(short_tmp: Path) -> None:
    socket_path = f"/proc/podcache-{uuid.uuid4().hex[:8]}.sock"
    result = _run_sidecar("--socket", socket_path, "--metrics-port", "0", cwd=short_tmp)
    assert result.returncode == 1, result.stderr
    assert socket_path in result.stderr
    assert "--socket" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_port_in_use_names_the_port_and_suggests_the_flag(short_tmp: Path) -> None:
    socket_path = short_tmp / "m.sock"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_sidecar(
            "--socket", str(socket_path), "--metrics-port", str(port), cwd=short_tmp
        )
    assert result.returncode == 1, result.stderr
    assert f"port {port}" in result.stderr
    assert "--metrics-port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not socket_path.exists(), "the socket bound before the metrics port was left behind"


async def test_unreachable_redis_at_start_is_a_warning_naming_the_url(
    spawn_sidecar: Spawn,
) -> None:
    port = free_port()  # nothing listens there
    config = {"type": "redis", "config": {"url": f"redis://127.0.0.1:{port}/0",
                                          "password": "s3cret", "keyPrefix": "x:"}}
    process = spawn_sidecar(config)
    await asyncio.to_thread(process.wait_socket)  # it serves anyway

    async def warned() -> list[str]:
        return [line for line in process.log_lines() if " WARNING " in line]

    (warning,) = await wait_until(warned, message="a start-up warning")
    assert f"redis://127.0.0.1:{port}/0" in warning
    assert "config.url" in warning
    api = Api(process.socket_path)
    try:
        assert (await api.request("GET", "/readyz")).status == 503
    finally:
        await api.close()
    assert process.terminate() == 0, process.log()
    assert "s3cret" not in process.log()
