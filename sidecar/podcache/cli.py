"""``podcache``: the command-line client of a sidecar's socket (what operators ``kubectl exec``).

Every command talks to the socket given by ``--socket``, else ``$PODCACHE_SOCKET``,
else ``/var/run/podcache/cache.sock``. Outcomes have distinct exit codes (see
``EXIT_*``) so scripts can tell a miss from an unreachable sidecar.

Beware: ``podcache health`` is the native sidecar's startup probe, run every
second or so while the pod starts. This module therefore imports only the
standard library and the sync client at the top (no aiohttp, redis, prometheus
or YAML); heavier imports happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from podcache import errors
from podcache.client import protocol
from podcache.client.sync_client import Client

if TYPE_CHECKING:
    from podcache.client.locking import HeldLock
    from podcache.client.models import LeaderStatus

EXIT_OK = 0
EXIT_NEGATIVE = 1
"""The answer is no: key not found, ``--if-absent`` found it present, sidecar not ready."""
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_LOCKED = 3
"""The lock is held by someone else (or our token no longer owns it)."""
EXIT_UNREACHABLE = 4
"""The sidecar did not answer on its socket."""
EXIT_BACKEND_DOWN = 5
"""The sidecar answered, but its backend (Redis) is unavailable."""
EXIT_REFUSED = 6
"""The sidecar refused the request: bad key, bad TTL, value too large, unknown election..."""
EXIT_LOCK_LOST = 7
"""``lock NAME -- CMD``: the lock was lost while the command ran (the command was stopped)."""
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, command_line = _split_command(argv)
    args = _parser().parse_args(argv)
    args.cmd = command_line
    client = Client(args.socket, timeout=args.timeout)
    try:
        command: Callable[[Client, argparse.Namespace], int] = args.command
        return command(client, args)
    except errors.PodcacheError as error:
        return _fail(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `podcache leader watch x | head -1`
        sys.stderr.close()
        return EXIT_OK
    finally:
        client.stop()


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """``lock NAME [opts] -- CMD ARGS``: everything after ``--`` is the command, untouched.

    Split before argparse sees it, because argparse would otherwise read the
    command's own options (``-- sh -c ...``) as ours.
    """
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    if "lock" not in argv[:cut]:
        return argv, []
    return argv[:cut], argv[cut + 1:]


def _fail(error: errors.PodcacheError) -> int:
    print(f"podcache: {error}", file=sys.stderr)
    if isinstance(error, errors.CacheMiss):
        return EXIT_NEGATIVE
    if isinstance(error, errors.LockError):
        return EXIT_LOCK_LOST if isinstance(error, errors.LockLost) else EXIT_LOCKED
    if isinstance(error, errors.ClientError):
        return EXIT_UNREACHABLE
    if isinstance(error, errors.BackendUnavailable):
        return EXIT_BACKEND_DOWN
    return EXIT_REFUSED


# -- cache commands --------------------------------------------------------------------------

def _get(client: Client, args: argparse.Namespace) -> int:
    try:
        value = client.get(args.key)
    except errors.CacheMiss:
        print(f"podcache: key {args.key!r} not found", file=sys.stderr)
        return EXIT_NEGATIVE
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.flush()
    return EXIT_OK


def _set(client: Client, args: argparse.Namespace) -> int:
    value = sys.stdin.buffer.read() if args.value == "-" else os.fsencode(args.value)
    if args.if_absent:
        if not client.set_if_absent(args.key, value, ttl=args.ttl):
            print(f"podcache: key {args.key!r} already exists; left unchanged", file=sys.stderr)
            return EXIT_NEGATIVE
        return EXIT_OK
    client.set(args.key, value, ttl=args.ttl)
    return EXIT_OK


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.key)
    return EXIT_OK


# -- locks -----------------------------------------------------------------------------------

def _lock(client: Client, args: argparse.Namespace) -> int:
    command: list[str] = args.cmd
    if not command:
        # No command: take the lease and print it; it ends by its ttl or `podcache unlock`.
        from podcache.client import locking

        sent_at = time.monotonic()
        lease = client.acquire_lock(args.name, ttl=args.ttl, wait=args.wait)
        stale = locking.stale_on_arrival(args.name, lease, sent_at=sent_at)
        if stale is not None:  # printing it would hand out a lease that already ended
            raise stale
        print(json.dumps(lease.as_json()))
        return EXIT_OK
    return _run_locked(client, args, command)


def _run_locked(client: Client, args: argparse.Namespace, command: list[str]) -> int:
    import signal
    import subprocess
    import threading

    started = threading.Event()
    child: list[subprocess.Popen[bytes]] = []

    def lost(held: HeldLock) -> None:
        print(f"podcache: {held.lost_reason}", file=sys.stderr)
        if args.on_lost == "terminate":
            started.wait()
            if child:
                child[0].terminate()

    with client.lock(args.name, ttl=args.ttl, wait=args.wait, on_lost=lost) as held:
        env = dict(os.environ, PODCACHE_LOCK_NAME=held.name, PODCACHE_LOCK_TOKEN=held.token,
                   PODCACHE_LOCK_FENCE=str(held.fence))
        try:
            child.append(subprocess.Popen(command, env=env))
        except OSError as error:
            print(f"podcache: cannot run {command[0]!r}: {error.strerror or error}",
                  file=sys.stderr)
            return 127
        finally:
            started.set()
        # The pod going away stops the command first, then the lock is released on exit.
        signal.signal(signal.SIGTERM, lambda signum, frame: child[0].terminate())
        while True:
            try:
                returncode = child[0].wait()
                break
            except KeyboardInterrupt:
                continue  # the terminal's ^C reached the child too; wait for it to end
    if held.lost and args.on_lost == "terminate":
        return EXIT_LOCK_LOST
    return returncode if returncode >= 0 else 128 - returncode


def _unlock(client: Client, args: argparse.Namespace) -> int:
    client.release_lock(args.name, token=args.token)
    return EXIT_OK


# -- leader election -------------------------------------------------------------------------

def _leader(client: Client, args: argparse.Namespace) -> int:
    if args.action == "watch":
        for status in client.watch(args.election):
            print(json.dumps(status.as_json()), flush=True)
        return EXIT_OK
    result: LeaderStatus | None
    if args.action == "status":
        result = client.leader(args.election)
    elif args.action == "join":
        result = client.join(args.election) or client.leader(args.election)
    else:
        result = client.resign(args.election)
    if result is not None:
        print(json.dumps(result.as_json()))
    return EXIT_OK


# -- probes ----------------------------------------------------------------------------------

def _health(client: Client, args: argparse.Namespace) -> int:
    ok, reason = client.readiness(live=args.live)
    if not args.quiet:
        what = "live" if args.live else "ready"
        if ok:
            print(what)
        else:
            print(f"podcache: not {what}: {reason}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_NEGATIVE


# -- argument parsing ------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podcache",
        description="Talk to a podcache sidecar over its Unix socket.",
        epilog="exit codes: 0 ok, 1 not found / not ready / exists, 2 usage, 3 lock held "
               "by another, 4 sidecar unreachable, 5 backend unavailable, 6 request refused, "
               "7 lock lost while the command ran",
    )
    parser.add_argument("--socket", default=None,
                        help=f"sidecar socket (default: ${protocol.SOCKET_ENV}, "
                             f"else {protocol.DEFAULT_SOCKET})")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each answer (default: 10)")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    get = commands.add_parser("get", help="print a value (raw bytes) to stdout")
    get.add_argument("key")
    get.set_defaults(command=_get)

    put = commands.add_parser("set", help="store a value")
    put.add_argument("key")
    put.add_argument("value", help="the value, or - to read it from stdin")
    put.add_argument("--ttl", default="0", help="e.g. 30s, 5m or seconds (default: the config's)")
    put.add_argument("--if-absent", action="store_true", help="only when the key is absent")
    put.set_defaults(command=_set)

    delete = commands.add_parser("delete", help="remove a key (fine when absent)")
    delete.add_argument("key")
    delete.set_defaults(command=_delete)

    lock = commands.add_parser(
        "lock", help="hold a lock while a command runs, or print a lease",
        usage="podcache lock NAME [--ttl D] [--wait D] [--on-lost {terminate,warn}] "
              "[-- COMMAND [ARGS...]]",
        description="With a command: acquire NAME, run the command with PODCACHE_LOCK_NAME, "
                    "PODCACHE_LOCK_TOKEN and PODCACHE_LOCK_FENCE in its environment while the "
                    "lock is refreshed, release it when the command ends, and exit with the "
                    "command's code. Without one: acquire and print the lease as JSON.")
    lock.add_argument("name")
    lock.add_argument("--ttl", default="10s", help="lease length (default: 10s)")
    lock.add_argument("--wait", default="0", help="how long to wait for it (default: 0)")
    lock.add_argument("--on-lost", choices=("terminate", "warn"), default="terminate",
                      help="if the lock is lost while the command runs: SIGTERM it and exit 7 "
                           "(default), or only warn")
    lock.set_defaults(command=_lock)

    unlock = commands.add_parser("unlock", help="release a lease printed by `lock NAME`")
    unlock.add_argument("name")
    unlock.add_argument("token")
    unlock.set_defaults(command=_unlock)

    leader = commands.add_parser("leader", help="leader election: status, watch, join, resign")
    leader.add_argument("action", choices=("status", "watch", "join", "resign"))
    leader.add_argument("election")
    leader.set_defaults(command=_leader)

    health = commands.add_parser("health", help="exit 0 when the sidecar is ready (its backend "
                                                "answers), 1 when not, 4 when unreachable")
    health.add_argument("--live", action="store_true", help="only check the process answers")
    health.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    health.set_defaults(command=_health)
    return parser


if __name__ == "__main__":
    sys.exit(main())
