"""``/metrics`` on TCP (what the ServiceMonitor scrapes), separate from the cache socket.

The cache itself is never reachable over TCP. The listener is its own aiohttp runner
so a reload that changes ``metrics.port`` can move it without touching the socket
server; port 0 turns it off (configfile's contract). ``/healthz`` is served here too,
for the kubelet's httpGet probes (503 with the reason when ``health`` finds a problem:
the sidecar asks its own sockets, see ``socket_health``), and ``/readyz`` when the
owner sets ``readiness`` (the operator: 503 with the reason until its webhook
listens). A port that cannot be listened on (in use, or below 1024 without the
privilege) is ``MetricsPortUnusable``, naming the port. A listener made before start
(``launcher``: the kubelet's first probe waits in its queue instead of failing) is
adopted by the first ``start`` when it is on that port, else closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)


class MetricsPortUnusable(OSError):
    """The metrics listener cannot bind its port; the message names the port and the reason."""

    def __init__(self, host: str | None, port: int, cause: OSError) -> None:
        # asyncio's message repeats the address as a tuple; the errno's text is enough.
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        super().__init__(
            f"cannot listen for metrics on port {port} of {host or 'all interfaces'}: {reason}"
        )
        self.errno = cause.errno
        self.port = port


class MetricsServer:
    """A restartable TCP listener serving one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        self._registry = registry
        self._host = host
        self._early_listener = listener
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None
        self.port = 0
        self.readiness: Callable[[], str | None] | None = None
        """Why the process is not ready, or None when it is; set it to serve ``/readyz``."""
        self.health: Callable[[], Awaitable[str | None]] | None = None
        """Why the process is not healthy, or None when it is (``/healthz``)."""

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = await self.health() if self.health is not None else None
        if problem is not None:
            return web.json_response({"status": "unhealthy", "reason": problem}, status=503)
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problem = self.readiness() if self.readiness is not None else None
        if problem is not None:
            return web.json_response({"status": "not ready", "reason": problem}, status=503)
        return web.json_response({"status": "ready"})

    async def start(self, port: int) -> None:
        """Listen on ``port`` (all interfaces); 0 = no listener."""
        early = self._take_early_listener(port)
        if port == 0:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        if self.readiness is not None:
            app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site: web.BaseSite = (
            web.SockSite(runner, early)
            if early is not None
            else web.TCPSite(runner, self._host, port, reuse_address=True)
        )
        try:
            await site.start()
        except BaseException as exc:
            if early is not None:
                early.close()  # a site that never started does not own it
            await asyncio.shield(runner.cleanup())
            if isinstance(exc, OSError):
                raise MetricsPortUnusable(self._host, port, exc) from exc
            raise
        self._runner, self._site, self.port = runner, site, port
        logger.info("metrics on http://%s:%d/metrics", self._host or "0.0.0.0", self.port)

    def _take_early_listener(self, port: int) -> socket.socket | None:
        """The early listener when it serves ``port`` on all interfaces; closed otherwise."""
        early, self._early_listener = self._early_listener, None
        if early is None:
            return None
        if port != 0 and self._host is None and early.getsockname()[1] == port:
            return early
        early.close()
        return None

    async def stop(self) -> None:
        self._take_early_listener(0)
        runner, self._runner, self._site = self._runner, None, None
        self.port = 0
        if runner is not None:
            await asyncio.shield(runner.cleanup())

    async def move(self, port: int) -> None:
        """Listen on ``port`` instead; if it cannot be bound, keep the old listener."""
        if port == self.port:
            return
        old_runner, old_site, old_port = self._runner, self._site, self.port
        self._runner, self._site, self.port = None, None, 0
        try:
            await self.start(port)
        except OSError:
            self._runner, self._site, self.port = old_runner, old_site, old_port
            raise
        if old_runner is not None:
            await asyncio.shield(old_runner.cleanup())
