"""``podcache-sidecar``: the command line, signals, and the event loop (uvloop when available).

Run with no arguments it serves the embedded default: the memory backend on
``/var/run/podcache/cache.sock`` when that directory exists (in a pod), else
``./podcache.sock``, with metrics on TCP 9090. Each flag has an environment
variable (the operator's webhook sets those); a flag wins over its variable.

Exit codes: 0 after a graceful shutdown, 2 for a bad command line or config, 1 when
the socket cannot be served (another sidecar holds it) or start-up failed otherwise.
A start-up error names the path or port involved and where to set it (the hints
below); a Redis that does not answer at start is only a warning (see ``runtime``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

from podcache import configfile
from podcache.errors import ConfigError
from podcache.sidecar import logs, socket_site, vectored_writes
from podcache.sidecar.launcher import METRICS_PORT_ENV
from podcache.sidecar.metrics_server import MetricsPortUnusable
from podcache.sidecar.overrides import Overrides
from podcache.sidecar.runtime import Options, Sidecar
from podcache.sidecar.socket_site import SocketInUse, SocketUnusable

logger = logging.getLogger("podcache.sidecar")

SOCKET_HINT = "set the path with --socket (env PODCACHE_SOCKET) or `socket` in the config file"
METRICS_PORT_HINT = (
    f"choose another port with --metrics-port (env {METRICS_PORT_ENV}) or `metrics.port` "
    "in the config file; 0 turns the metrics listener off"
)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _level(text: str) -> str:
    if text.lower() not in configfile.LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (use one of {', '.join(configfile.LOG_LEVELS)})"
        )
    return text.lower()


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podcache-sidecar",
        description="Serve a cache with TTLs, distributed locks and leader election on a Unix "
        "socket (HTTP/1.1), with Prometheus metrics on TCP.",
    )
    parser.add_argument(
        "--config",
        default=environ.get("PODCACHE_CONFIG") or None,
        metavar="PATH",
        help="config file, watched and reloaded on change "
        "(env PODCACHE_CONFIG; default: embedded memory-backend config)",
    )
    parser.add_argument(
        "--socket",
        default=environ.get("PODCACHE_SOCKET") or None,
        metavar="PATH",
        help=f"Unix socket to serve on (env PODCACHE_SOCKET; default: the config's, "
        f"else {configfile.DEFAULT_SOCKET} if its directory exists, "
        f"else ./podcache.sock)",
    )
    parser.add_argument(
        "--redis-socket",
        default=environ.get("PODCACHE_REDIS_SOCKET") or None,
        metavar="PATH",
        help="Unix socket of the cache in the Redis protocol (env PODCACHE_REDIS_SOCKET; "
        f"default: the config's resp.socket, else {configfile.DEFAULT_RESP_SOCKET} if its "
        "directory exists, else <HTTP socket name>-redis.sock beside it)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="N",
        default=_port(environ[METRICS_PORT_ENV]) if environ.get(METRICS_PORT_ENV) else None,
        help=f"TCP port of /metrics, 0 = off (env {METRICS_PORT_ENV}; "
        f"default: the config's, else {configfile.DEFAULT_METRICS_PORT})",
    )
    parser.add_argument(
        "--log-level",
        type=_level,
        metavar="LEVEL",
        default=_level(environ["PODCACHE_LOG_LEVEL"])
        if environ.get("PODCACHE_LOG_LEVEL")
        else None,
        help=f"one of {', '.join(configfile.LOG_LEVELS)} (env PODCACHE_LOG_LEVEL; "
        "default: the config's, else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=environ.get("PODCACHE_LOG_FORMAT") or "text",
        help="text or json, one object per line (env PODCACHE_LOG_FORMAT)",
    )
    return parser


def parse_options(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Options, str]:
    env = os.environ if environ is None else environ
    try:
        args = build_parser(env).parse_args(argv)
    except argparse.ArgumentTypeError as exc:  # a bad environment variable
        raise SystemExit(f"podcache-sidecar: {exc}") from None
    overrides = Overrides(
        socket=args.socket,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
        resp_socket=args.redis_socket,
    )
    return Options(config_path=args.config, overrides=overrides), args.log_format


async def run(options: Options) -> int:
    vectored_writes.enable(asyncio.get_running_loop())
    sidecar = Sidecar(options)
    try:
        await sidecar.start()
    except (ConfigError, ValueError, RecursionError) as exc:  # e.g. a file not in UTF-8
        logger.error("invalid config %s: %s", options.config_path or "(embedded default)", exc)
        return 2
    except SocketInUse as exc:
        logger.error("%s; %s", exc, SOCKET_HINT)
        return 1
    except SocketUnusable as exc:
        logger.error("cannot start: %s; %s", exc, SOCKET_HINT)
        return 1
    except MetricsPortUnusable as exc:
        logger.error("cannot start: %s; %s", exc, METRICS_PORT_HINT)
        return 1
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning(
                "second %s: exiting without finishing the shutdown", signal.Signals(signum).name
            )
            os._exit(1)
        logger.info("%s received", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, sidecar.request_reload)
    try:
        await stop.wait()
    finally:
        await sidecar.shutdown()
    return 0


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def main(
    argv: Sequence[str] | None = None, *, metrics_listener: socket.socket | None = None
) -> int:
    """``metrics_listener``: see ``launcher`` (a start that fails leaves it to the exit)."""
    options, log_format = parse_options(argv)
    options = dataclasses.replace(options, metrics_listener=metrics_listener)
    try:
        socket_site.socket_mode()  # a bad mode is refused before anything starts
    except ValueError as exc:
        raise SystemExit(f"podcache-sidecar: {exc}") from None
    # The config file's logLevel applies once it is loaded; until then, the flag or info.
    logs.setup(options.overrides.log_level or "info", fmt=log_format)
    if options.overrides.log_level is None and options.config_path:
        with contextlib.suppress(ConfigError, ValueError, RecursionError):  # run() reports it
            logs.set_level(configfile.load(options.config_path).log_level)
    with _runner() as runner:
        return runner.run(run(options))


if __name__ == "__main__":
    sys.exit(main())
