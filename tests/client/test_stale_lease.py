"""A lease whose reply arrives after its deadline is never handed out (issue 10, item 4).

The deterministic repro, on a real Redis and two real sidecar processes: Redis is
kept busy with ``DEBUG SLEEP``; sidecar A forwards our acquire and is then paused
(SIGSTOP); Redis grants A the lock when it wakes; the lease runs out in Redis and
B takes the lock through sidecar B; A resumes (SIGCONT) and finally answers.

Aspects: ``Client.lock()`` (with and without ``wait``), ``AsyncClient.lock()`` and
the CLI's ``lock NAME -- CMD`` and ``lock NAME`` refuse that lease with
``LockLost`` / exit code 7 instead of handing it out (the command never runs);
``lost`` and ``check()`` consult the local deadline at the moment they are called.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import podcache
from podcache.client import locking, models
from tests.availability import unavailable
from tests.client.sidecars import SidecarProcess, redis_config
from tests.redis_server import RedisServer, RedisUnavailable

PODCACHE = str(Path(sys.executable).parent / "podcache")
TTL = 1.0
SLEEP = 1.5  # Redis is busy this long; A is paused halfway, after forwarding the acquire


@pytest.fixture(scope="module")
def busy_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own: DEBUG SLEEP would stall every other test's."""
    try:
        server = RedisServer(extra_args=("--enable-debug-command", "yes"))
        server.start()
    except RedisUnavailable as exc:
        unavailable("Redis", str(exc))
    yield server
    server.close()


@pytest.fixture(scope="module")
def two_sidecars(busy_redis: RedisServer) -> Iterator[tuple[SidecarProcess, SidecarProcess]]:
    config = redis_config(busy_redis.url, key_prefix="stale:", locks={"maxTTL": "1m"})
    # Long enough that neither sidecar answers 503 while Redis sleeps: the point is
    # a grant that arrives late, not a timeout.
    config["config"]["timeouts"] = {"operation": "8s"}
    sidecars = (SidecarProcess(config, pod_name="pod-a"), SidecarProcess(config, pod_name="pod-b"))
    try:
        for sidecar in sidecars:
            sidecar.start()
        yield sidecars
    finally:
        for sidecar in sidecars:
            sidecar.close()


def late_grant(busy_redis: RedisServer, sidecars: tuple[SidecarProcess, SidecarProcess],
               name: str, take: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``take`` (an acquire through sidecar A) into the repro; return its outcome
    (value or exception) and how long after B got the lock it came back."""
    a, b = sidecars
    outcome: list[Any] = []
    returned_at: list[float] = []

    def sleep_redis() -> None:
        with redis.Redis(port=busy_redis.port, socket_timeout=10) as raw:
            raw.execute_command("DEBUG", "SLEEP", str(SLEEP))

    def run_take() -> None:
        try:
            outcome.append(take())
        except BaseException as exc:
            outcome.append(exc)
        returned_at.append(time.monotonic())

    for sidecar in sidecars:
        # A pooled connection ready on each: a fresh one's handshake would wait out the
        # sleep in front of the acquire, and B could overtake A.
        with podcache.Client(sidecar.socket_path) as warm:
            warm.release_lock("warm-up", token=warm.acquire_lock("warm-up", ttl=5).token)
    sleeper = threading.Thread(target=sleep_redis)
    sleeper.start()
    time.sleep(0.1)  # DEBUG SLEEP is running: what comes next queues behind it
    taker = threading.Thread(target=run_take)
    taker.start()
    time.sleep(SLEEP / 2)  # A has long forwarded the acquire to Redis
    a.send(signal.SIGSTOP)
    try:
        with podcache.Client(b.socket_path, timeout=10) as client_b:
            asked_at = time.monotonic()
            lease_b = client_b.acquire_lock(name, ttl=5, wait=8)
            got_b_at = time.monotonic()
        # B waited for A's lease to run out in Redis: so Redis did grant it to A.
        assert got_b_at - asked_at >= TTL * 0.5, "A's acquire never reached Redis"
        time.sleep(0.2)
    finally:
        a.send(signal.SIGCONT)
    taker.join(timeout=20)
    sleeper.join(timeout=20)
    assert outcome, "the acquire through A never returned"
    with podcache.Client(b.socket_path) as client_b:
        client_b.release_lock(name, token=lease_b.token)
    return outcome[0], returned_at[0] - got_b_at


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("wait", [0, 3], ids=["no-wait", "wait"])
def test_sync_lock_refuses_a_lease_past_its_deadline(
    busy_redis: RedisServer, two_sidecars: tuple[SidecarProcess, SidecarProcess], wait: float,
) -> None:
    name = f"job-{uuid.uuid4().hex[:8]}"
    entered: list[bool] = []

    def take() -> None:
        with podcache.Client(two_sidecars[0].socket_path, timeout=10) as client, \
                client.lock(name, ttl=TTL, wait=wait) as held:
            entered.append(not held.lost)
            held.check()

    outcome, _ = late_grant(busy_redis, two_sidecars, name, take)
    assert isinstance(outcome, podcache.LockLost), f"handed out a stale lease: {outcome!r}"
    assert "before the reply arrived" in str(outcome)
    assert entered == []


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("wait", [0, 3], ids=["no-wait", "wait"])
def test_async_lock_refuses_a_lease_past_its_deadline(
    busy_redis: RedisServer, two_sidecars: tuple[SidecarProcess, SidecarProcess], wait: float,
) -> None:
    name = f"job-{uuid.uuid4().hex[:8]}"

    async def take() -> None:
        async with podcache.AsyncClient(two_sidecars[0].socket_path, timeout=10) as client, \
                client.lock(name, ttl=TTL, wait=wait) as held:
            held.check()

    outcome, _ = late_grant(busy_redis, two_sidecars, name, lambda: asyncio.run(take()))
    assert isinstance(outcome, podcache.LockLost), f"handed out a stale lease: {outcome!r}"


@pytest.mark.redis
@pytest.mark.slow
def test_cli_lock_never_runs_the_command_under_a_stale_lease(
    busy_redis: RedisServer, two_sidecars: tuple[SidecarProcess, SidecarProcess],
    tmp_path: Path,
) -> None:
    name = f"job-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "ran"
    env = dict(os.environ, PODCACHE_SOCKET=two_sidecars[0].socket_path)

    def take() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PODCACHE, "lock", name, "--ttl", "1s", "--", "touch", str(marker)],
                              capture_output=True, env=env, timeout=30, check=False)

    outcome, _ = late_grant(busy_redis, two_sidecars, name, take)
    assert isinstance(outcome, subprocess.CompletedProcess), outcome
    assert outcome.returncode == 7, outcome.stderr
    assert b"before the reply arrived" in outcome.stderr
    assert not marker.exists(), "the command ran under a lease that had already ended"


@pytest.mark.redis
@pytest.mark.slow
def test_cli_lock_never_prints_a_stale_lease(
    busy_redis: RedisServer, two_sidecars: tuple[SidecarProcess, SidecarProcess],
) -> None:
    name = f"job-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PODCACHE_SOCKET=two_sidecars[0].socket_path)

    def take() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PODCACHE, "lock", name, "--ttl", "1s", "--wait", "3s"],
                              capture_output=True, env=env, timeout=30, check=False)

    outcome, _ = late_grant(busy_redis, two_sidecars, name, take)
    assert isinstance(outcome, subprocess.CompletedProcess), outcome
    assert outcome.returncode == 7, outcome.stderr
    assert outcome.stdout == b""


def test_lost_and_check_consult_the_deadline_when_called() -> None:
    # No refresh thread runs here: only the clock can tell the lease is gone.
    held = podcache.Client("/nonexistent.sock").lock("job", ttl=1)
    held._state.granted(models.Lease(name="job", token="t", fence=1, ttl=1.0),
                        sent_at=time.monotonic() - 1.5)
    assert held.lost
    assert "deadline" in (held.lost_reason or "")
    with pytest.raises(podcache.LockLost):
        held.check()


def test_a_blocking_wait_counts_from_the_send_plus_the_reported_wait() -> None:
    state = locking.LeaseState("job")
    state.granted(models.Lease(name="job", token="t", fence=1, ttl=1.0, waited=2.0), sent_at=10.0)
    assert state.expires_at == pytest.approx(13.0)
    assert state.lost_at(12.9) is None
    assert state.lost_at(13.0) is not None
    assert state.lost_at(12.0) is not None  # once lost, a later answer cannot undo it
    assert models.parse_lease("job", {"token": "t", "fence": 1, "ttl_ms": 1000,
                                      "waited_ms": 2500}).waited == pytest.approx(2.5)
