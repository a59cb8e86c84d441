"""Chaos run: N sidecar processes on one Redis, locks and an election under faults.

Why: fences and leases are only worth what they guarantee when things break. This
run breaks the things that do break in a cluster — a sidecar frozen (SIGSTOP: a
stalled node, a long GC, a throttled container) for longer than every lease, Redis
killed and restarted empty, Redis frozen, every key flushed — while clients keep
contending for locks and the sidecars for leadership, and checks what must hold.

Everything is real and on loopback: one ``redis-server``, ``--sidecars`` processes of
``podcache-sidecar`` (tests/client/sidecars.py), client threads using
``podcache.Client`` over the Unix sockets. The clients' lock protects a fenced store
kept in this process: every read and write carries the holder's fence and the store
refuses a fence below the highest one that touched it (the textbook use of fences).
A holder reads the counter, pauses a little, writes counter + 1.

Printed, all of which must be 0:

- lost updates: increments the store accepted that are missing from its counter;
- fence regressions: a lease granted with a fence not greater than one already
  granted for that lock before its request was sent (or the same fence twice);
- stale leaders: a sidecar answering ``leader: true`` in a term lower than a term
  another sidecar had reported leading in before the question was asked (or two
  identities in one term). Conservative: a claim counts only when its whole
  request window lies after the newer term was seen.

And the failure windows per fault: how long lock rounds and leadership answers
failed around it (from the fault to the first successful lock round and the first
leader answer after it ended), plus writes refused by fence (stale holders the
fences stopped: expected, not errors).

    .venv/bin/python bench/bench_chaos.py [--sidecars 3] [--clients 6] [--duration 75] [--seed 1]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import itertools
import random
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.* when run as a script

import redis  # noqa: E402
from tests.client.sidecars import SidecarProcess, election, redis_config  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402

import podcache  # noqa: E402
from podcache.errors import PodcacheError  # noqa: E402

ELECTION = "chaos"
LOCKS = ("counter-a", "counter-b")
LOCK_TTL = 1.0
"""Seconds; every sidecar pause is longer, so a frozen holder's lease always lapses."""
PAUSE = (1.5, 3.0)
"""Range of a fault's length in seconds (sidecar or Redis frozen, Redis down)."""
QUIET = (2.0, 4.0)
"""Range of the healthy time between faults."""
STALLS = 0.01
"""Share of lock rounds whose holder stalls past its lease between read and write."""
SETTLE = 3.0
"""Seconds after a fault ends within which the failure window is looked for."""


class FencedStore:
    """A counter per lock that refuses any fence below the highest that touched it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.value = {name: 0 for name in LOCKS}
        self.highest = {name: 0 for name in LOCKS}
        self.accepted = dict.fromkeys(LOCKS, 0)
        self.refused = 0

    def read(self, name: str, fence: int) -> int | None:
        with self._guard:
            if fence < self.highest[name]:
                self.refused += 1
                return None
            self.highest[name] = fence
            return self.value[name]

    def write(self, name: str, fence: int, value: int) -> bool:
        with self._guard:
            if fence < self.highest[name]:
                self.refused += 1
                return False
            self.highest[name] = fence
            self.value[name] = value
            self.accepted[name] += 1
            return True


@dataclasses.dataclass
class Grants:
    """Fences granted per lock, with when their request was sent and their reply came."""

    guard: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    log: dict[str, list[tuple[float, float, int]]] = dataclasses.field(
        default_factory=lambda: {name: [] for name in LOCKS})

    def add(self, name: str, sent: float, received: float, fence: int) -> None:
        with self.guard:
            self.log[name].append((sent, received, fence))

    def regressions(self) -> int:
        found = 0
        for entries in self.log.values():
            fences = [fence for *_, fence in entries]
            found += len(fences) - len(set(fences))
            by_reply = sorted(entries, key=lambda item: item[1])
            replies = [received for _, received, _ in by_reply]
            best: list[int] = []
            for _, _, fence in by_reply:
                best.append(max(best[-1], fence) if best else fence)
            for sent, _, fence in entries:
                earlier = bisect.bisect_left(replies, sent)  # granted before this was sent
                if earlier and fence <= best[earlier - 1]:
                    found += 1
        return found


@dataclasses.dataclass
class Run:
    store: FencedStore = dataclasses.field(default_factory=FencedStore)
    grants: Grants = dataclasses.field(default_factory=Grants)
    rounds_ok: list[float] = dataclasses.field(default_factory=list)
    rounds_failed: int = 0
    claims: list[tuple[float, float, str, int]] = dataclasses.field(default_factory=list)
    """(sent, received, identity, term) of every leader: true answer."""
    faults: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    guard: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def client_loop(run: Run, sidecar: SidecarProcess, rng: random.Random) -> None:
    with podcache.Client(sidecar.socket_path, timeout=2.0) as client:
        while not run.stop.is_set():
            name = rng.choice(LOCKS)
            sent = time.monotonic()
            try:
                lease = client.acquire_lock(name, ttl=LOCK_TTL, wait=0.5)
            except PodcacheError:  # locked, 503 during a fault, a frozen sidecar's timeout
                with run.guard:
                    run.rounds_failed += 1
                time.sleep(0.02)
                continue
            run.grants.add(name, sent, time.monotonic(), lease.fence)
            value = run.store.read(name, lease.fence)
            # Now and then the holder itself stalls past its lease (an app's GC pause):
            # the fence must stop its late write.
            stall = rng.uniform(1.2, 1.6) if rng.random() < STALLS else rng.uniform(0, 0.01)
            time.sleep(stall)
            if value is not None and run.store.write(name, lease.fence, value + 1):
                with run.guard:
                    run.rounds_ok.append(time.monotonic())
            with contextlib.suppress(PodcacheError):
                client.release_lock(name, token=lease.token)


def leader_poller(run: Run, sidecar: SidecarProcess) -> None:
    with podcache.Client(sidecar.socket_path, timeout=0.5) as client:
        while not run.stop.is_set():
            sent = time.monotonic()
            try:
                status = client.leader(ELECTION)
            except PodcacheError:
                time.sleep(0.05)
                continue
            if status.leader:
                with run.guard:
                    run.claims.append((sent, time.monotonic(), sidecar.pod_name, status.term))
            time.sleep(0.01)


def stale_leaders(claims: list[tuple[float, float, str, int]]) -> list[float]:
    """When (reply received) each stale or overlapping leader claim was made."""
    found: list[float] = []
    first_by: dict[int, str] = {}
    for _, received, who, term in sorted(claims, key=lambda item: item[1]):
        if first_by.setdefault(term, who) != who:
            found.append(received)
    by_reply = sorted(claims, key=lambda item: item[1])
    replies = [received for _, received, _, _ in by_reply]
    best: list[int] = []
    for *_, term in by_reply:
        best.append(max(best[-1], term) if best else term)
    for sent, received, _, term in claims:
        earlier = bisect.bisect_left(replies, sent)
        if earlier and term < best[earlier - 1]:
            found.append(received)
    return sorted(found)


def inject_faults(run: Run, server: RedisServer, sidecars: list[SidecarProcess],
                  rng: random.Random, *, until: float) -> None:
    kinds = ["pause sidecar", "pause leader's sidecar", "kill + empty restart Redis",
             "pause Redis", "FLUSHALL"]
    index = 0
    while time.monotonic() + PAUSE[1] + 1 < until:
        time.sleep(rng.uniform(*QUIET))
        kind = kinds[index % len(kinds)]
        index += 1
        length = rng.uniform(*PAUSE)
        start = time.monotonic()
        if kind.startswith("pause") and "sidecar" in kind:
            victim = rng.choice(sidecars)
            if kind == "pause leader's sidecar":
                with run.guard:
                    recent = [who for _, received, who, _ in run.claims if received > start - 1]
                if recent:
                    victim = next(s for s in sidecars if s.pod_name == recent[-1])
            victim.send(signal.SIGSTOP)
            time.sleep(length)
            victim.send(signal.SIGCONT)
            kind = f"{kind} ({victim.pod_name})"
        elif kind.startswith("kill"):
            server.stop()
            time.sleep(length)
            server.start()
        elif kind == "pause Redis":
            server.pause()
            time.sleep(length)
            server.resume()
        else:
            with redis.Redis.from_url(server.url) as connection:
                connection.flushall()
        run.faults.append((kind, start, time.monotonic()))


def longest_gap(times: list[float], start: float, end: float) -> float | None:
    """The longest stretch without a success from ``start`` until the first success after
    ``end`` (None: no success after it at all)."""
    after = bisect.bisect_left(times, end)
    if after == len(times):
        return None
    points = [start, *times[bisect.bisect_right(times, start):after + 1]]
    return max(b - a for a, b in itertools.pairwise(points))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sidecars", type=int, default=3)
    parser.add_argument("--clients", type=int, default=6, help="lock clients, spread over sidecars")
    parser.add_argument("--duration", type=float, default=75.0, help="seconds of load")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    server = RedisServer()
    server.start()
    config = redis_config(server.url, key_prefix="chaos:",
                          locks={"defaultTTL": "1s", "maxTTL": "10s"},
                          elections=[election(ELECTION, lease="2s", renew="1500ms",
                                              retry="200ms")])
    config["config"]["timeouts"] = {"connect": "300ms", "operation": "500ms"}
    sidecars = [SidecarProcess(config, pod_name=f"pod-{i}", metrics_port=free_port())
                for i in range(args.sidecars)]
    run = Run()
    threads: list[threading.Thread] = []
    try:
        for sidecar in sidecars:
            sidecar.start()
        for i in range(args.clients):
            sidecar = sidecars[i % len(sidecars)]
            threads.append(threading.Thread(target=client_loop, daemon=True,
                                            args=(run, sidecar, random.Random(rng.random()))))
        threads += [threading.Thread(target=leader_poller, args=(run, s), daemon=True)
                    for s in sidecars]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        inject_faults(run, server, sidecars, rng, until=started + args.duration)
        time.sleep(max(0.0, started + args.duration - time.monotonic()))
        run.stop.set()
        for thread in threads:
            thread.join(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        for sidecar in sidecars:
            sidecar.close()
        server.close()

    store = run.store
    lost = sum(store.accepted[name] - store.value[name] for name in LOCKS)
    regressions = run.grants.regressions()
    stale = stale_leaders(run.claims)
    granted = sum(len(entries) for entries in run.grants.log.values())
    print(f"chaos: {args.sidecars} sidecars, {args.clients} lock clients, {elapsed:.0f} s,"
          f" seed {args.seed}, {len(run.faults)} faults")
    print(f"  lock rounds: {len(run.rounds_ok)} completed, {granted} leases granted,"
          f" {run.rounds_failed} acquires failed or refused (busy, 503, timeouts),"
          f" {store.refused} stale reads/writes refused by fence")
    print(f"  leadership answers with leader=true: {len(run.claims)},"
          f" terms seen: {len({term for *_, term in run.claims})}")
    print(f"  lost updates: {lost}")
    print(f"  fence regressions: {regressions}")
    print(f"  stale or overlapping leaders: {len(stale)}")
    print("  failure windows: the longest time without a completed lock round (any client)"
          " and without a leader answer (any sidecar), from the fault's start to the first"
          " success after it ended:")
    rounds = sorted(run.rounds_ok)
    claims = sorted(received for _, received, _, _ in run.claims)
    for kind, start, end in run.faults:
        texts = []
        for times in (rounds, claims):
            gap = longest_gap(times, start, end)
            texts.append("never recovered" if gap is None else f"{gap:5.2f} s")
        during = sum(start <= moment <= end + SETTLE for moment in stale)
        print(f"    {kind:<38} lasted {end - start:4.2f} s   no lock round {texts[0]}"
              f"   no leader {texts[1]}   stale leaders {during}")
    if lost or regressions or stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
