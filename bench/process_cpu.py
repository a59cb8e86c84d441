"""CPU seconds by process name over a stretch of a benchmark, from ``/proc``.

Each live process's ``utime + stime`` is compared between two snapshots (a process
started in between counts whole); a process that exited in between is seen through its
parent's ``cutime + cstime`` once reaped, so short-lived children (``runc``, probes'
execs) count under their parent's name. The machine's total comes from ``/proc/stat``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    own: dict[tuple[int, int], tuple[str, float]]  # (pid, start tick) → (name, seconds)
    reaped: dict[tuple[int, int], float]  # (pid, start tick) → children's seconds
    machine: float  # busy seconds of all CPUs


def snapshot() -> Snapshot:
    own: dict[tuple[int, int], tuple[str, float]] = {}
    reaped: dict[tuple[int, int], float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue  # exited while listing
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        key = (int(entry), int(fields[19]))
        own[key] = (_name(int(entry), name), (int(fields[11]) + int(fields[12])) / _TICK)
        reaped[key] = (int(fields[13]) + int(fields[14])) / _TICK
    with open("/proc/stat") as stat:
        cpu = [int(part) for part in stat.readline().split()[1:]]
    idle = cpu[3] + cpu[4]  # idle + iowait
    return Snapshot(own, reaped, (sum(cpu[:8]) - idle) / _TICK)


def _name(pid: int, comm: str) -> str:
    """A Python process is named by what it runs (the operator, a sidecar)."""
    if not comm.startswith("python") and not comm.startswith("podcache"):
        return comm
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:
        return comm
    for arg in argv:
        base = arg.rsplit(b"/", 1)[-1].decode(errors="replace")
        if base.startswith("podcache-") or base == "kopf":
            return base
    return comm


def cpu_by_name(before: Snapshot, after: Snapshot) -> dict[str, float]:
    totals: dict[str, float] = {}
    for key, (name, seconds) in after.own.items():
        then = before.own.get(key, (name, 0.0))[1]
        children = after.reaped[key] - before.reaped.get(key, 0.0)
        totals[name] = totals.get(name, 0.0) + seconds - then
        # init reaps every orphan: its children are not its own work.
        heir = "orphans reaped by init" if key[0] == 1 else name
        totals[heir] = totals.get(heir, 0.0) + children
    return totals


def report(before: Snapshot, after: Snapshot, top: int = 8) -> str:
    shares = sorted(cpu_by_name(before, after).items(), key=lambda item: -item[1])
    named = ", ".join(f"{name} {seconds:.1f}" for name, seconds in shares[:top] if seconds >= 0.05)
    return f"machine {after.machine - before.machine:.1f} CPU-s; {named}"
