"""Sidecar benchmark: what the Unix-socket sidecar costs next to its floors (issue 3).

In one run, at 1 and 32 concurrent keep-alive connections, it prints ops/s, p50,
p99 and the server process's CPU time per operation (utime+stime from
/proc/<pid>/stat, sampled when the measured phase starts and ends) for:

- the sidecar on the memory backend, GET and SET over its socket, next to a
  minimal aiohttp app on a Unix socket returning a fixed value (its own process,
  same event loop flavour: the floor for Python HTTP over a Unix socket);
- the sidecar on the Redis backend, GET and SET over its socket, next to redis-py
  calling the same Redis directly;

plus the sidecar's idle RSS (VmRSS) and the time from process start to a ready
socket, then the issues' targets with PASS/MISS. It prints figures and asserts
nothing.

Issue 11 additions: ``--baseline-src DIR`` runs sidecars from another source tree
(e.g. ``git worktree add /tmp/before <commit>``) as extra cases of the same run, so
before and after are measured side by side, interleaved; the redis-server's own CPU
per operation (``redis CPU us/op``); the CPU the rest of the machine used during each
trial (``others``, in cores: a trial above ``--max-others`` is repeated, up to
``--retries`` times, and the figure kept is the quietest); ``--large-size`` adds GETs
of that many bytes at 1 connection; and ``redis-benchmark`` against the same Redis as
the physical anchor. ``--near-cache`` adds a Redis sidecar with the near cache (issue 13):
its GETs of the one hot key are served from the copy after the first.

The load generator is a separate process (this file with ``--loadgen``): a tight
asyncio HTTP/1.1 client over raw Unix-socket connections, so its CPU never counts
as the server's. On a 2-core machine the server and the generator each get about
one core; other work on the machine skews the figures, so compare within a run.

Every case runs ``--trials`` times, interleaved, and the report shows each figure's
median: single runs on a shared 2-core machine vary by tens of percent. The
"loadgen CPU" column is the generator's own CPU share during the measured phase:
near 100% would mean the generator, not the server, limits the throughput.

Run: ``.venv/bin/python bench/bench_sidecar.py`` (about 4 min on a quiet machine;
``--duration`` per case, ``--trials``). Issue 11's before/after run (about 12 min, more
when busy trials are repeated)::

    git worktree add /tmp/before <commit>
    flock /tmp/podcache-bench.lock .venv/bin/python bench/bench_sidecar.py \
        --baseline-src /tmp/before --large-size 1048576 --max-others 0.5 --retries 1

On a shared machine, wrap every run in ``flock /tmp/podcache-bench.lock`` so that no
two benchmarks overlap.
Redis: ``--redis-url``, else a ``redis-server`` from PATH on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import http_frames  # bench/, this script's folder

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KEY = "bench-key"
IDLE_SETTLE = 1.0  # seconds after ready before reading the idle RSS: start-up garbage settles

TARGET_CPU_RATIO = 1.3
TARGET_THROUGHPUT_RATIO = 0.6
TARGET_ADDED_P50_MS = 0.15
TARGET_IDLE_RSS_MIB = 60.0
TARGET_READY_S = 1.0
LOCK_FLOOR = "lock floor"
"""The case of ``lock_floor.py``: a lock cycle's I/O and Redis scripts, no podcache logic."""


# -- /proc ---------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used (the busy fields of /proc/stat's cpu line)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def redis_pid(url: str) -> int | None:
    """The redis-server's pid when it runs on this machine (its INFO says), else None."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return pid if Path(f"/proc/{pid}").exists() else None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- server processes ------------------------------------------------------------------------

def _http_ready(path: str, request: bytes) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(request)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_ready(process: subprocess.Popen[bytes], path: str, *, url: str = "/readyz",
               timeout: float = 20.0) -> float:
    """Seconds from now until ``url`` answers 200 on ``path`` (call right after spawning)."""
    request = f"GET {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        if _http_ready(path, request):
            return time.monotonic() - started
        time.sleep(0.002)
    raise RuntimeError(f"server on {path} not ready within {timeout}s")


def start_sidecar(
    workdir: Path, name: str, config: str, *, source: str | None = None
) -> tuple[subprocess.Popen[bytes], str, float]:
    """A sidecar process; ``source`` is another tree's ``sidecar`` folder to run instead."""
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(config)
    socket_path = str(workdir / f"{name}.sock")
    env = dict(os.environ, POD_NAME=f"bench-{name}", PODCACHE_LOG_LEVEL="warning")
    if source is not None:
        env["PYTHONPATH"] = source
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "podcache.sidecar.main", "--config", str(config_path),
         "--socket", socket_path, "--metrics-port", "0"],
        stdout=subprocess.DEVNULL, stderr=(workdir / f"{name}.log").open("wb"), env=env)
    wait_ready(process, socket_path)
    return process, socket_path, time.monotonic() - started


def start_minimal_app(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    socket_path = str(workdir / "minimal.sock")
    process = subprocess.Popen([sys.executable, __file__, "--minimal-app", socket_path],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_ready(process, socket_path, url="/healthz")
    return process, socket_path


def start_lock_floor(workdir: Path, url: str) -> tuple[subprocess.Popen[bytes], str]:
    """``lock_floor.py``: a lock cycle's I/O and Redis scripts with none of podcache's logic."""
    socket_path = str(workdir / "lock-floor.sock")
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("lock_floor.py")), socket_path, url],
        stdout=subprocess.DEVNULL, stderr=(workdir / "lock-floor.log").open("wb"))
    wait_ready(process, socket_path, url="/healthz")
    return process, socket_path


def minimal_app(socket_path: str) -> None:
    """The floor: aiohttp on a Unix socket, a fixed value for GET, 204 for PUT."""
    from aiohttp import web

    value = b"v" * 100

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=value, content_type="application/octet-stream")

    async def put(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/cache/{key}", get)
    app.router.add_put("/v1/cache/{key}", put)
    _use_uvloop()
    web.run_app(app, path=socket_path, access_log=None, print=None)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    """``--redis-url`` when given, else REDIS_URL or a redis-server of its own."""
    if given:
        yield given
        return
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import find_redis

    with find_redis() as url:
        yield url


# -- load generator (its own process) --------------------------------------------------------

def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight, minimal parsing."""

    def __init__(self) -> None:
        self.keep_body = False
        self.body = b""
        self.transport: Any = None  # uvloop's transports do not subclass asyncio.Transport
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        message = http_frames.complete(self.buffer)
        if message is None:
            return
        head, start, total = message
        self.body = bytes(self.buffer[start:total]) if self.keep_body else b""
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def _http_load(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    value = b"v" * spec["value_size"]
    if spec["op"] == "get":
        request = f"GET /v1/cache/{KEY} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
        expected = 200
    else:
        request = (f"PUT /v1/cache/{KEY} HTTP/1.1\r\nHost: localhost\r\n"
                   f"Content-Length: {len(value)}\r\n\r\n").encode() + value
        expected = 204
    connections = []
    for _ in range(spec["concurrency"]):
        _, protocol = await loop.create_unix_connection(_HttpConnection, spec["socket"])
        connections.append(protocol)
    errors = 0

    async def call(connection: _HttpConnection) -> None:
        nonlocal errors
        if await connection.request(request) != expected:
            errors += 1

    async def lock_cycle(connection: _HttpConnection, name: str) -> None:
        """Acquire + release of a lock of this connection's own (no contention)."""
        nonlocal errors
        body = b'{"ttl": "10s"}'
        acquire = (f"POST /v1/locks/{name} HTTP/1.1\r\nHost: localhost\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        if await connection.request(acquire) != 200:
            errors += 1
            return
        token = json.loads(connection.body)["token"]
        body = json.dumps({"token": token}).encode()
        release = (f"DELETE /v1/locks/{name} HTTP/1.1\r\nHost: localhost\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        if await connection.request(release) != 204:
            errors += 1

    if spec["op"] == "lock":
        for connection in connections:
            connection.keep_body = True
        calls = [lambda c=c, i=i: lock_cycle(c, f"bench-lock-{i}")
                 for i, c in enumerate(connections)]
    else:
        calls = [lambda c=c: call(c) for c in connections]
    result = await _drive(calls, spec)
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()
    result["errors"] = errors
    return result


async def _redis_load(spec: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(spec["redis_url"], max_connections=spec["concurrency"])
    value = b"v" * spec["value_size"]
    key = "bench-direct"
    await client.set(key, value)

    async def get() -> None:
        await client.get(key)

    async def put() -> None:
        await client.set(key, value)

    async def lock_cycle(name: str) -> None:
        lock = client.lock(name, timeout=10)  # redis-py's Lock: SET NX PX, Lua release
        await lock.acquire(blocking=False)
        await lock.release()

    if spec["op"] == "lock":
        locks = [lambda i=i: lock_cycle(f"bench-direct-lock-{i}")
                 for i in range(spec["concurrency"])]
        result = await _drive(locks, spec)
        await client.aclose()
        result["errors"] = 0
        return result
    call = get if spec["op"] == "get" else put
    result = await _drive([call] * spec["concurrency"], spec)
    await client.aclose()
    result["errors"] = 0
    return result


async def _drive(calls: list[Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Run one worker per call: a warm-up, then the measured phase bracketed by START/END."""
    latencies: list[float] = []

    async def worker(call: Any, until: float, record: bool) -> None:
        clock = time.perf_counter
        while True:
            started = clock()
            if started >= until:
                return
            await call()
            if record:
                latencies.append(clock() - started)

    warm_until = time.perf_counter() + spec["warmup"]
    await asyncio.gather(*(worker(call, warm_until, False) for call in calls))
    print("START", flush=True)
    began = time.perf_counter()
    cpu_began = time.process_time()
    await asyncio.gather(*(worker(call, began + spec["duration"], True) for call in calls))
    elapsed = time.perf_counter() - began
    client_cpu = time.process_time() - cpu_began
    print("END", flush=True)
    latencies.sort()
    count = len(latencies)
    return {"ops": count, "elapsed": elapsed, "client_cpu": client_cpu,
            "p50": latencies[count // 2] if count else float("nan"),
            "p99": latencies[min(count - 1, int(count * 0.99))] if count else float("nan")}


def loadgen(spec: dict[str, Any]) -> None:
    _use_uvloop()
    runner = _redis_load if spec["kind"] == "redis" else _http_load
    print(json.dumps(asyncio.run(runner(spec))), flush=True)


def run_case(spec: dict[str, Any], *, server_pid: int | None,
             redis_server_pid: int | None = None) -> dict[str, Any]:
    """Spawn the load generator; sample the CPU of the server, of Redis and of the whole
    machine at its START and END lines."""
    process = subprocess.Popen([sys.executable, __file__, "--loadgen", json.dumps(spec)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    pids = {"server": server_pid, "redis": redis_server_pid, "loadgen": process.pid}
    start: dict[str, float] = {}
    end: dict[str, float] = {}

    def sample() -> dict[str, float]:
        taken = {name: cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
        taken["machine"] = machine_busy_seconds()
        return taken

    result: dict[str, Any] = {}
    for line in process.stdout:
        line = line.strip()
        if line == "START":
            start = sample()
        elif line == "END":
            end = sample()
        elif line.startswith("{"):
            result = json.loads(line)
    if process.wait() != 0 or not result:
        raise RuntimeError(f"load generator failed for {spec}")
    ops = result["ops"]
    result["ops_per_s"] = ops / result["elapsed"]
    # Near 1 s of CPU per second means the generator itself limits the throughput.
    result["client_cpu_share"] = result["client_cpu"] / result["elapsed"]
    used = {name: end[name] - start[name] for name in start}
    result["cpu_us_per_op"] = (used["server"] / ops * 1e6
                               if server_pid is not None and ops else None)
    result["redis_us_per_op"] = used["redis"] / ops * 1e6 if "redis" in used and ops else None
    ours = sum(used[name] for name in ("server", "redis", "loadgen") if name in used)
    # What everything else on the machine used meanwhile, in cores (other engineers' work).
    result["others_cores"] = max(0.0, used["machine"] - ours) / result["elapsed"]
    return result


def run_quietest(spec: dict[str, Any], *, server_pid: int | None, redis_server_pid: int | None,
                 max_others: float, retries: int) -> dict[str, Any]:
    """``run_case``, repeated while the rest of the machine was busier than ``max_others``
    cores (at most ``retries`` more times); the quietest run is kept."""
    runs = [run_case(spec, server_pid=server_pid, redis_server_pid=redis_server_pid)]
    while runs[-1]["others_cores"] > max_others and len(runs) <= retries:
        runs.append(run_case(spec, server_pid=server_pid, redis_server_pid=redis_server_pid))
    best = min(runs, key=lambda run: run["others_cores"])
    best["repeats"] = len(runs) - 1
    return best


def redis_benchmark(url: str, *, clients: int, value_size: int) -> float | None:
    """GET ops/s of ``redis-benchmark`` against ``url`` (None when it is not installed)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    import redis

    options = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    where = (["-s", options["path"]] if "path" in options
             else ["-h", options.get("host", "127.0.0.1"), "-p", str(options.get("port", 6379))])
    output = subprocess.run(
        [binary, *where, "-t", "get", "-c", str(clients), "-n", "100000", "-d", str(value_size),
         "-q"], capture_output=True, text=True, check=False).stdout
    for part in output.replace("\r", "\n").split("\n"):
        if part.startswith("GET:") and "requests per second" in part:  # not a progress line
            return float(part.split()[1])
    return None


# -- the run ---------------------------------------------------------------------------------

def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the trials (errors summed)."""
    merged: dict[str, Any] = {"errors": sum(result["errors"] for result in results),
                              "repeats": sum(result.get("repeats", 0) for result in results)}
    for name in ("ops_per_s", "p50", "p99", "cpu_us_per_op", "client_cpu_share",
                 "redis_us_per_op", "others_cores"):
        values = [result[name] for result in results]
        merged[name] = None if values[0] is None else statistics.median(values)
    return merged


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds per case")
    parser.add_argument("--trials", type=int, default=3,
                        help="interleaved trials of every case; the report shows medians")
    parser.add_argument("--concurrency", default="1,32", help="connection counts, comma-separated")
    parser.add_argument("--value-size", type=int, default=100, help="value bytes")
    parser.add_argument("--redis-url", default=None, help="default: a redis-server on a free port")
    parser.add_argument("--baseline-src", default=None,
                        help="another tree's root: its sidecar runs as 'before:' cases")
    parser.add_argument("--large-size", type=int, default=0,
                        help="also GET values of this many bytes at 1 connection (0: not)")
    parser.add_argument("--max-others", type=float, default=0.25,
                        help="cores the rest of the machine may use before a trial is repeated")
    parser.add_argument("--retries", type=int, default=2, help="repeats of a busy trial")
    parser.add_argument("--ops", default="set,get,lock",
                        help="which cases of --value-size to run (set, get, lock; comma-"
                             "separated, may be empty): a shorter A/B run of one figure")
    parser.add_argument("--near-cache", action="store_true",
                        help="also a Redis sidecar with the near cache (issue 13's targets)")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--minimal-app", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen(json.loads(args.loadgen))
        return
    if args.minimal_app:
        minimal_app(args.minimal_app)
        return

    levels = [int(level) for level in args.concurrency.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="pc-bench-", dir="/tmp"))
    processes: list[subprocess.Popen[bytes]] = []
    rows: list[tuple[str, str, int, dict[str, Any]]] = []
    try:
        with redis_url(args.redis_url) as url:
            memory, memory_socket, memory_ready = start_sidecar(
                workdir, "memory", "type: memory\nconfig: {defaultTTL: 5m}\n")
            processes.append(memory)
            time.sleep(IDLE_SETTLE)
            memory_rss = rss_mib(memory.pid)
            redis_sidecar, redis_socket, redis_ready = start_sidecar(
                workdir, "redis", f"type: redis\nconfig: {{url: '{url}', defaultTTL: 5m, "
                                  f"keyPrefix: 'bench:'}}\n")
            processes.append(redis_sidecar)
            time.sleep(IDLE_SETTLE)
            redis_rss = rss_mib(redis_sidecar.pid)
            minimal, minimal_socket = start_minimal_app(workdir)
            processes.append(minimal)
            redis_server_pid = redis_pid(url)

            base = {"value_size": args.value_size, "duration": args.duration,
                    "warmup": args.warmup}
            targets = [
                ("minimal aiohttp app", "http", minimal_socket, minimal.pid),
                ("sidecar memory", "http", memory_socket, memory.pid),
                ("sidecar redis", "http", redis_socket, redis_sidecar.pid),
                ("redis-py direct", "redis", None, None),
            ]
            if args.near_cache:
                near, near_socket, _ = start_sidecar(
                    workdir, "redis-near", f"type: redis\nconfig: {{url: '{url}', defaultTTL: "
                    f"5m, keyPrefix: 'bench-near:', nearCache: {{enabled: true}}}}\n")
                processes.append(near)
                targets.insert(3, ("sidecar redis+near", "http", near_socket, near.pid))
            if args.baseline_src:
                source = str(Path(args.baseline_src) / "sidecar")
                old_memory, old_memory_socket, _ = start_sidecar(
                    workdir, "before-memory", "type: memory\nconfig: {defaultTTL: 5m}\n",
                    source=source)
                processes.append(old_memory)
                old_redis, old_redis_socket, _ = start_sidecar(
                    workdir, "before-redis", f"type: redis\nconfig: {{url: '{url}', "
                    f"defaultTTL: 5m, keyPrefix: 'bench-before:'}}\n", source=source)
                processes.append(old_redis)
                targets[3:3] = [
                    ("before: sidecar memory", "http", old_memory_socket, old_memory.pid),
                    ("before: sidecar redis", "http", old_redis_socket, old_redis.pid),
                ]
            ops = {op.strip() for op in args.ops.split(",") if op.strip()}
            if "lock" in ops:
                floor, floor_socket = start_lock_floor(workdir, url)
                processes.append(floor)
                targets.append((LOCK_FLOOR, "http", floor_socket, floor.pid))
            # Trials are interleaved (every case once, then again) so a burst of other work
            # on the machine hits all cases alike instead of skewing one of them.
            trials: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
            cases = [(level, target, op, args.value_size) for level in levels
                     for target in targets for op in ("set", "get")  # set first: get finds it
                     if op in ops and target[0] != LOCK_FLOOR]
            # Lock acquire + release through the socket (Redis) next to redis-py's Lock.
            cases += [(level, target, "lock", args.value_size) for level in levels
                      for target in targets
                      if target[0].endswith(("sidecar redis", "direct", LOCK_FLOOR))
                      and "lock" in ops]
            if args.large_size:
                cases += [(1, target, op, args.large_size) for target in targets
                          if target[0] not in ("minimal aiohttp app", LOCK_FLOOR)
                          for op in ("set", "get")]
            for _ in range(args.trials):
                for level, (label, kind, path, pid), op, size in cases:
                    spec = dict(base, kind=kind, op=op, concurrency=level, socket=path,
                                redis_url=url, value_size=size)
                    name = op.upper() if size == args.value_size else f"{op.upper()} {_size(size)}"
                    trials.setdefault((label, name, level), []).append(run_quietest(
                        spec, server_pid=pid, redis_server_pid=redis_server_pid,
                        max_others=args.max_others, retries=args.retries))
            rows = [(label, op, level, _median_of(results))
                    for (label, op, level), results in trials.items()]
            anchor = {level: redis_benchmark(url, clients=level, value_size=args.value_size)
                      for level in levels if "get" in ops}
            idle_after_load = {"memory": rss_mib(memory.pid), "redis": rss_mib(redis_sidecar.pid)}
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)

    _report(rows, levels=levels, args=args, memory_rss=memory_rss, redis_rss=redis_rss,
            rss_after=idle_after_load, memory_ready=memory_ready, redis_ready=redis_ready)
    _report_issue_11(rows, levels=levels, args=args, anchor=anchor)
    if args.near_cache:
        _report_issue_13(rows, levels=levels)


def _report_issue_13(rows: list[tuple[str, str, int, dict[str, Any]]], *,
                     levels: list[int]) -> None:
    """Issue 13: a hot key through the near cache vs the memory backend and redis-py."""
    by_case = {(label, op, level): result for label, op, level, result in rows}
    print("\ntargets (issue 13, a hot key: one Redis GET, then the near cache)")
    for level in levels:
        near = by_case[("sidecar redis+near", "GET", level)]["ops_per_s"]
        for other, target in (("sidecar memory", 0.9), ("redis-py direct", 1.5)):
            base = by_case[(other, "GET", level)]["ops_per_s"]
            print(f"  near-cache GET vs {other}, {level:>2} conns: {near:.0f} / {base:.0f} ops/s"
                  f" = {near / base:.2f}x (>= {target}x)  {_verdict(near / base >= target)}")


_NOT_RUN = {name: math.nan for name in ("ops_per_s", "p50", "p99", "cpu_us_per_op",
                                         "redis_us_per_op")}


def _by_case(rows: list[tuple[str, str, int, dict[str, Any]]]
             ) -> collections.defaultdict[tuple[str, str, int], dict[str, Any]]:
    """Results by (label, op, conns); a case left out by ``--ops`` reads as nan figures."""
    by_case: collections.defaultdict[tuple[str, str, int], dict[str, Any]] = (
        collections.defaultdict(lambda: _NOT_RUN))
    for label, op, level, result in rows:
        by_case[(label, op, level)] = result
    return by_case


def _size(size: int) -> str:
    return f"{size // (1 << 20)}MiB" if size >= 1 << 20 else f"{size}B"


def _report(rows: list[tuple[str, str, int, dict[str, Any]]], *, levels: list[int],
            args: argparse.Namespace, memory_rss: float, redis_rss: float,
            rss_after: dict[str, float], memory_ready: float, redis_ready: float) -> None:
    print(f"\npodcache sidecar benchmark: value {args.value_size} B, {args.duration:g} s per case "
          f"after {args.warmup:g} s warm-up, medians of {args.trials} interleaved trials, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("others = cores the rest of the machine used meanwhile (median); repeats = trials "
          f"rerun because others > {args.max_others:g}")
    print(f"{'case':<24}{'op':<11}{'conns':>6}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'server CPU us/op':>18}{'redis CPU us/op':>17}{'loadgen CPU':>13}{'others':>8}"
          f"{'repeats':>8}{'errors':>7}")
    by_case = _by_case([])
    for label, op, level, result in rows:
        by_case[(label, op, level)] = result
        cpu = result["cpu_us_per_op"]
        redis_cpu = result["redis_us_per_op"]
        print(f"{label:<24}{op:<11}{level:>6}{result['ops_per_s']:>10.0f}"
              f"{result['p50'] * 1000:>9.3f}{result['p99'] * 1000:>9.3f}"
              f"{(f'{cpu:.1f}' if cpu is not None else '-'):>18}"
              f"{(f'{redis_cpu:.1f}' if redis_cpu is not None else '-'):>17}"
              f"{result['client_cpu_share']:>12.0%} {result['others_cores']:>7.2f}"
              f"{result['repeats']:>8}{result['errors']:>7}")

    print("\ntargets (issue 3)")
    for level in levels:
        sidecar = by_case[("sidecar memory", "GET", level)]["cpu_us_per_op"]
        floor = by_case[("minimal aiohttp app", "GET", level)]["cpu_us_per_op"]
        ratio = sidecar / floor
        print(f"  memory GET CPU/op vs minimal app, {level:>2} conns: {sidecar:.1f} / "
              f"{floor:.1f} us = {ratio:.2f}x (<= {TARGET_CPU_RATIO}x)  "
              f"{_verdict(ratio <= TARGET_CPU_RATIO)}")
    for level in levels:
        through = by_case[("sidecar redis", "GET", level)]
        direct = by_case[("redis-py direct", "GET", level)]
        ratio = through["ops_per_s"] / direct["ops_per_s"]
        print(f"  redis GET throughput vs redis-py, {level:>2} conns: {through['ops_per_s']:.0f} / "
              f"{direct['ops_per_s']:.0f} ops/s = {ratio:.2f}x (>= {TARGET_THROUGHPUT_RATIO}x)  "
              f"{_verdict(ratio >= TARGET_THROUGHPUT_RATIO)}")
    for level in levels:
        through = by_case[("sidecar redis", "GET", level)]
        direct = by_case[("redis-py direct", "GET", level)]
        added = (through["p50"] - direct["p50"]) * 1000
        print(f"  redis GET added p50, {level:>2} conns: {through['p50'] * 1000:.3f} - "
              f"{direct['p50'] * 1000:.3f} = {added:+.3f} ms (<= +{TARGET_ADDED_P50_MS} ms)  "
              f"{_verdict(added <= TARGET_ADDED_P50_MS)}")
    for name, rss in (("memory", memory_rss), ("redis", redis_rss)):
        print(f"  idle RSS, {name} sidecar: {rss:.1f} MiB (after the load: {rss_after[name]:.1f} "
              f"MiB) (<= {TARGET_IDLE_RSS_MIB:g} MiB)  {_verdict(rss <= TARGET_IDLE_RSS_MIB)}")
    for name, ready in (("memory", memory_ready), ("redis", redis_ready)):
        print(f"  start to ready socket, {name} sidecar: {ready:.2f} s (<= {TARGET_READY_S:g} s)  "
              f"{_verdict(ready <= TARGET_READY_S)}")


def _report_issue_11(rows: list[tuple[str, str, int, dict[str, Any]]], *, levels: list[int],
                     args: argparse.Namespace, anchor: dict[int, float | None]) -> None:
    """Issue 11's targets, and the same figures of the baseline when one ran."""
    by_case = _by_case(rows)
    prefixes = [""] + (["before: "] if args.baseline_src else [])

    def figure(name: str, value: float | None, target: str, ok: bool | None) -> None:
        shown = "-" if value is None else f"{value:.2f}x"
        verdict = "" if ok is None else _verdict(ok)
        print(f"  {name:<62}{shown:>8}  ({target})  {verdict}")

    print("\ntargets (issue 11), after" + (" / before (baseline)" if args.baseline_src else ""))
    for prefix in prefixes:
        tag = "before " if prefix else "after  "
        for level in levels:
            through = by_case[(f"{prefix}sidecar redis", "GET", level)]["ops_per_s"]
            direct = by_case[("redis-py direct", "GET", level)]["ops_per_s"]
            need = 1.0 if level > 1 else 0.5
            figure(f"{tag}redis GET via sidecar vs redis-py, {level} conns", through / direct,
                   f">= {need}", through / direct >= need)
        for op in ("GET", "SET"):
            for level in levels:
                sidecar = by_case[(f"{prefix}sidecar memory", op, level)]["cpu_us_per_op"]
                floor = by_case[("minimal aiohttp app", op, level)]["cpu_us_per_op"]
                figure(f"{tag}memory {op} CPU/op vs minimal aiohttp app, {level} conns",
                       sidecar / floor, "<= 1.15", sidecar / floor <= 1.15)
        if args.large_size:
            size = f"GET {_size(args.large_size)}"
            through = by_case[(f"{prefix}sidecar redis", size, 1)]["ops_per_s"]
            direct = by_case[("redis-py direct", size, 1)]["ops_per_s"]
            figure(f"{tag}{_size(args.large_size)} GET MB/s via sidecar vs redis-py, 1 conn",
                   through / direct, ">= 0.6", through / direct >= 0.6)
        for level in levels:
            through = by_case[(f"{prefix}sidecar redis", "LOCK", level)]["ops_per_s"]
            direct = by_case[("redis-py direct", "LOCK", level)]["ops_per_s"]
            figure(f"{tag}lock acquire+release via socket vs redis-py Lock, {level} conns",
                   through / direct, ">= 0.6", through / direct >= 0.6)
            floor = by_case.get((LOCK_FLOOR, "LOCK", level), {}).get("ops_per_s")
            if floor:
                figure(f"{tag}  the same vs the lock floor (I/O and scripts only), {level} conns",
                       through / floor, "the share of the floor reached", None)
        level = max(levels)
        redis_cpu = by_case[(f"{prefix}sidecar redis", "GET", level)]["redis_us_per_op"]
        if redis_cpu is not None:
            print(f"  {tag}redis-server CPU per GET via sidecar, {level} conns: "
                  f"{redis_cpu:.1f} us (<= 3 us)  {_verdict(redis_cpu <= 3)}")
    for level in levels:
        floor = by_case.get((LOCK_FLOOR, "LOCK", level), {}).get("ops_per_s")
        if floor:
            direct = by_case[("redis-py direct", "LOCK", level)]["ops_per_s"]
            print(f"  anchor: the lock floor, {level} conns: {floor:.0f} cycles/s, "
                  f"{floor / direct:.2f}x redis-py Lock (the most any Python process between "
                  "the app and Redis reaches here)")
    for level, ops in anchor.items():
        if ops is not None:
            direct = by_case[("redis-py direct", "GET", level)]["ops_per_s"]
            through = by_case[("sidecar redis", "GET", level)]["ops_per_s"]
            print(f"  anchor: redis-benchmark GET, {level} conns: {ops:.0f} ops/s (redis-py "
                  f"direct {direct / ops:.2f}x of it, sidecar redis {through / ops:.2f}x)")


if __name__ == "__main__":
    main()
