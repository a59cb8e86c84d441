"""``podcache-sidecar``'s first steps, taken before the heavy imports (then ``main``).

In a pod the sidecar's start is almost all imports (about 0.25 s of CPU in the image),
and the kubelet's startup probe asks ``/healthz`` every second from the moment the
container starts. Each probe that finds the port closed is a failure, which the kubelet
records as an ``Unhealthy`` event (a write to the apiserver), and the app container then
waits for the next probe period. With 30 pods starting at once on 2 cores that was about
200 failed probes. So, before importing anything heavy, this module:

1. Listens on the metrics port when the command line or ``PODCACHE_METRICS_PORT`` names
   it (the injector sets the variable). The kernel queues the probes' connections; the
   metrics server adopts this listener (``MetricsServer.start``) and answers them, so
   the first probe succeeds as soon as the sidecar serves. A port that does not end up
   the configured one is closed and the configured one bound as before; a port that
   cannot be bound here is left for ``MetricsServer`` to report.
2. Imports aiohttp with the system CA bundle hidden from OpenSSL. aiohttp builds two
   client SSL contexts at import, each loading the bundle (about 60 ms of the start,
   measured in the image); the sidecar serves and never uses aiohttp's client. The
   variables are restored right after, so every SSL context the sidecar makes itself
   (Redis over TLS) loads the bundle as before, including one a user mounts.
3. Imports with the garbage collector off, then freezes what the imports made: module
   objects live as long as the process, so the collections the imports' allocations
   would trigger find nothing to free (about 10 % of the imports' CPU, measured in the
   image), and later collections need not scan them again.

``python -m podcache.sidecar`` runs this too; ``python -m podcache.sidecar.main`` skips it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType

METRICS_PORT_FLAG = "--metrics-port"
METRICS_PORT_ENV = "PODCACHE_METRICS_PORT"
_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def metrics_port(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """The port ``main`` will be told, when it is plain to see; None when unsure."""
    port: str | None = environ.get(METRICS_PORT_ENV) or None
    for index, arg in enumerate(argv):
        if arg == METRICS_PORT_FLAG:
            port = argv[index + 1] if index + 1 < len(argv) else None
        elif arg.startswith(METRICS_PORT_FLAG + "="):
            port = arg.partition("=")[2]
        elif arg.startswith("--metrics") or arg == "--":
            return None  # an abbreviation argparse would accept, or positional territory
    if port is None or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    return int(port)


def listen_early(port: int) -> socket.socket | None:
    """A listener on ``port`` of all interfaces (dual-stack where IPv6 exists), or None."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 in this network namespace
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind((host, port))
            listener.listen(128)
        except OSError:
            listener.close()
            if family == socket.AF_INET6:
                continue
            return None
        return listener
    return None


@contextlib.contextmanager
def ca_bundle_hidden() -> Iterator[None]:
    """OpenSSL reads these at each ``set_default_verify_paths``: an empty file, no dir."""
    saved = {name: os.environ.get(name) for name in _CA_VARIABLES}
    os.environ.update({name: os.devnull for name in _CA_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def import_main() -> ModuleType:
    """``podcache.sidecar.main`` and all it imports, the cheap way (points 2 and 3)."""
    gc.disable()
    try:
        with ca_bundle_hidden():
            import aiohttp  # noqa: F401  (its client's default SSL contexts, made here)
        from podcache.sidecar import main as sidecar_main
    finally:
        gc.freeze()
        gc.enable()
    return sidecar_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    port = metrics_port(args, os.environ)
    listener = listen_early(port) if port is not None else None
    return int(import_main().main(args, metrics_listener=listener))


if __name__ == "__main__":
    sys.exit(main())
