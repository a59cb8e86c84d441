"""The ``podcache`` command (the installed console script) against a real sidecar, via subprocess.

Aspects: get prints raw bytes and exits 1 on a miss; set from an argument or stdin,
with ``--ttl`` and ``--if-absent``; delete; ``lock NAME -- CMD`` runs the command
with the lease in its environment, returns its exit code and releases the lock;
``lock NAME`` prints the lease as JSON and ``unlock`` releases it; a held lock exits
3; a lock lost while its command runs stops the command (exit 7); leader
status/join/resign/watch; health exits 0 when ready and 4 when the
sidecar is unreachable; bad input exits 6 with a message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import podcache
from podcache import cli
from tests.client.conftest import ELECTION, steal
from tests.client.sidecars import SidecarProcess, wait_for

PODCACHE = str(Path(sys.executable).parent / "podcache")


def run(
    sidecar: SidecarProcess | None, *args: str, stdin: bytes = b"",
    socket_path: str | None = None, timeout: float = 20.0,
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env["PODCACHE_SOCKET"] = socket_path or (sidecar.socket_path if sidecar else "")
    return subprocess.run([PODCACHE, *args], input=stdin, capture_output=True, env=env,
                          timeout=timeout, check=False)


def test_set_get_delete(sidecar: SidecarProcess, key: str) -> None:
    assert run(sidecar, "set", key, "hello world").returncode == 0
    got = run(sidecar, "get", key)
    assert (got.returncode, got.stdout) == (0, b"hello world")
    assert run(sidecar, "delete", key).returncode == 0
    missing = run(sidecar, "get", key)
    assert missing.returncode == cli.EXIT_NEGATIVE
    assert b"not found" in missing.stderr
    assert missing.stdout == b""


def test_set_from_stdin_with_ttl_and_binary(sidecar: SidecarProcess, key: str,
                                            client: podcache.Client) -> None:
    value = bytes(range(256))
    assert run(sidecar, "set", key + "/odd key?", "-", "--ttl", "1m", stdin=value).returncode == 0
    assert run(sidecar, "get", key + "/odd key?").stdout == value
    assert client.get(key + "/odd key?") == value


def test_set_if_absent(sidecar: SidecarProcess, key: str) -> None:
    assert run(sidecar, "set", key, "one", "--if-absent").returncode == 0
    second = run(sidecar, "set", key, "two", "--if-absent")
    assert second.returncode == cli.EXIT_NEGATIVE
    assert b"already exists" in second.stderr
    assert run(sidecar, "get", key).stdout == b"one"


def test_bad_input_is_refused_with_a_message(sidecar: SidecarProcess, key: str) -> None:
    bad_ttl = run(sidecar, "set", key, "v", "--ttl", "soon")
    assert bad_ttl.returncode == cli.EXIT_REFUSED
    assert b"invalid duration" in bad_ttl.stderr
    too_long = run(sidecar, "get", "k" * 2000)
    assert too_long.returncode == cli.EXIT_REFUSED
    assert b"limit" in too_long.stderr
    usage = run(sidecar, "frobnicate")
    assert usage.returncode == cli.EXIT_USAGE


def test_lock_runs_a_command_with_the_lease(sidecar: SidecarProcess, key: str,
                                            client: podcache.Client) -> None:
    script = 'echo "$PODCACHE_LOCK_NAME $PODCACHE_LOCK_FENCE $PODCACHE_LOCK_TOKEN"; exit 3'
    result = run(sidecar, "lock", key, "--ttl", "5s", "--", "sh", "-c", script)
    assert result.returncode == 3  # the command's own code
    name, fence, token = result.stdout.decode().split()
    assert name == key
    assert int(fence) >= 1
    assert token
    lease = client.acquire_lock(key, ttl=5)  # released when the command ended
    assert lease.fence > int(fence)
    client.release_lock(key, token=lease.token)


def test_lock_held_elsewhere_exits_3(sidecar: SidecarProcess, key: str,
                                     client: podcache.Client) -> None:
    lease = client.acquire_lock(key, ttl=5)
    result = run(sidecar, "lock", key, "--", "true")
    assert result.returncode == cli.EXIT_LOCKED
    assert key.encode() in result.stderr
    client.release_lock(key, token=lease.token)


def test_lock_without_command_prints_the_lease(sidecar: SidecarProcess, key: str,
                                               client: podcache.Client) -> None:
    result = run(sidecar, "lock", key, "--ttl", "30s")
    assert result.returncode == 0
    lease = json.loads(result.stdout)
    assert lease["name"] == key
    assert lease["ttl_ms"] == 30000
    with pytest.raises(podcache.LockNotAcquired):
        client.acquire_lock(key)
    assert run(sidecar, "unlock", key, lease["token"]).returncode == 0
    assert run(sidecar, "unlock", key, lease["token"]).returncode == cli.EXIT_LOCKED  # not owner


def test_leader_commands(sidecar: SidecarProcess, key: str) -> None:
    status = run(sidecar, "leader", "status", ELECTION)
    assert status.returncode == 0
    assert json.loads(status.stdout)["holder"] in (sidecar.pod_name, None)
    assert run(sidecar, "leader", "join", key).returncode == 0
    watch = subprocess.Popen([PODCACHE, "leader", "watch", key], stdout=subprocess.PIPE,
                             env=dict(os.environ, PODCACHE_SOCKET=sidecar.socket_path))
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert set(first) == {"leader", "holder", "term"}
        assert run(sidecar, "leader", "resign", key).returncode == 0
        assert watch.wait(timeout=10) == 0  # the stream ends with the election
    finally:
        watch.kill()
        watch.wait()
    unknown = run(sidecar, "leader", "status", key)
    assert unknown.returncode == cli.EXIT_REFUSED
    assert b"has not joined" in unknown.stderr


def test_health(sidecar: SidecarProcess) -> None:
    ready = run(sidecar, "health")
    assert (ready.returncode, ready.stdout.strip()) == (0, b"ready")
    assert run(sidecar, "health", "--live", "-q").returncode == 0


def test_unreachable_sidecar(tmp_path: Path) -> None:
    result = run(None, "health", socket_path=str(tmp_path / "none.sock"))
    assert result.returncode == cli.EXIT_UNREACHABLE
    assert b"none.sock" in result.stderr
    assert run(None, "get", "k", socket_path=str(tmp_path / "none.sock")).returncode == \
        cli.EXIT_UNREACHABLE


def test_socket_flag_wins_over_env(sidecar: SidecarProcess, tmp_path: Path) -> None:
    result = run(None, "--socket", sidecar.socket_path, "health",
                 socket_path=str(tmp_path / "none.sock"))
    assert result.returncode == 0


def test_lost_lock_stops_the_command(redis_sidecar: SidecarProcess, raw_redis: redis.Redis,
                                     key: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    script = f'echo "$PODCACHE_LOCK_TOKEN" > {token_file}; exec sleep 30'
    locked = subprocess.Popen([PODCACHE, "lock", key, "--ttl", "600ms", "--", "sh", "-c", script],
                              stderr=subprocess.PIPE,
                              env=dict(os.environ, PODCACHE_SOCKET=redis_sidecar.socket_path))
    try:
        token = wait_for(lambda: token_file.exists() and token_file.read_text().strip(),
                         timeout=10.0, message="the command started")
        assert steal(raw_redis, token) == 1
        assert locked.wait(timeout=5.0) == cli.EXIT_LOCK_LOST
        assert locked.stderr is not None
        assert b"refused" in locked.stderr.read()
    finally:
        locked.kill()
        locked.wait()
