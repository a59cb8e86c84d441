"""One sidecar instance: start it, serve, and shut it down gracefully, in a fixed order.

Start: load and validate the config (nothing starts on a bad one), build the cache,
join the configured elections, bind the socket (refusing a live one), then the
metrics listener and the config watcher. ``Sidecar.started_in`` is the time from
``start()`` to a socket accepting connections. A Redis that does not answer is no
reason not to start (it may come up after the pod): the sidecar serves, ``/readyz``
says 503, and one WARNING, logged in the background so start-up does not wait for
it, names where the backend was looked for.

Shutdown (SIGTERM/SIGINT in ``main``, or ``Sidecar.shutdown()``): stop accepting and
close idle connections; end watch streams; let in-flight requests finish within
``shutdownGracePeriod``; resign elections; release the locks taken through the
sidecar; stop the backend; remove the socket file. Most of it is aiohttp's
``AppRunner.cleanup()`` driving ``app``'s hooks; see ``app.py``.

``Sidecar`` is also what the tests run in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time

from aiohttp import web

from podcache import configfile
from podcache.cache import new_cache
from podcache.config import RedisSettings
from podcache.errors import BackendUnavailable, ConfigError
from podcache.sidecar import app as app_mod
from podcache.sidecar import elections as elections_mod
from podcache.sidecar import (
    fast_locks,
    fast_path,
    http_fast,
    resp_server,
    socket_health,
    socket_site,
)
from podcache.sidecar import reload as reload_mod
from podcache.sidecar.http_metrics import Exposition, ServerMetrics
from podcache.sidecar.metrics_server import MetricsServer
from podcache.sidecar.overrides import Overrides
from podcache.sidecar.socket_site import UnixListenerSite
from podcache.sidecar.state import CacheSlot, SidecarState, default_identity

logger = logging.getLogger(__name__)

RESP_PASSWORD_ENV = "PODCACHE_RESP_PASSWORD"
"""A password Redis clients must AUTH with on the RESP socket; unset = none (the
socket's file mode and the pod boundary are the protection, as for HTTP)."""

KEEPALIVE_TIMEOUT = 75.0
"""Seconds an idle keep-alive connection stays open (aiohttp's runner default is an hour)."""
LINGERING_TIME = 2.0
"""Seconds spent discarding the rest of a refused body (413) so the client reads the answer."""


@dataclasses.dataclass(frozen=True)
class Options:
    """How to run one sidecar; everything else comes from the config file."""

    config_path: str | None = None
    """The config file (watched for changes); None = the embedded default, never reloaded."""
    overrides: Overrides = dataclasses.field(default_factory=Overrides)
    identity: str | None = None
    """Identity in elections; None = ``POD_NAME``, else the hostname."""
    reload_interval: float = reload_mod.POLL_INTERVAL
    watch_heartbeat: float = 10.0
    """Seconds of quiet before a watch stream sends a blank keep-alive line."""
    metrics_host: str | None = None
    """Interface of the metrics listener; None = all (the ServiceMonitor scrapes the pod IP)."""
    metrics_listener: socket.socket | None = None
    """A listener made before start (``launcher``); adopted if on the configured port."""


def load_config(options: Options) -> configfile.SidecarConfig:
    """The effective config; raises ``ConfigError`` naming the bad field."""
    base = (
        configfile.load(options.config_path) if options.config_path else configfile.SidecarConfig()
    )
    return options.overrides.apply(base)


def describe(config: configfile.SidecarConfig) -> str:
    """A one-line summary for logs; never the backend settings (they may hold a password)."""
    elections = ", ".join(election.name for election in config.elections) or "none"
    return (
        f"backend={config.backend.type} socket={config.socket} "
        f"metrics={config.metrics.namespace}:{config.metrics.port} limits={config.limits} "
        f"locks={config.locks} elections={elections} logLevel={config.log_level}"
    )


class Sidecar:
    """A running sidecar: ``await start()``, then ``await shutdown()``."""

    def __init__(self, options: Options, *, config: configfile.SidecarConfig | None = None) -> None:
        self.options = options
        self._initial = config
        self.state: SidecarState | None = None
        self.metrics_server: MetricsServer | None = None
        self.reloader: reload_mod.Reloader | None = None
        self.exposition: Exposition | None = None
        self.started_in: float | None = None
        self._runner: web.AppRunner | None = None
        self._site: UnixListenerSite | None = None
        self.resp: resp_server.RespServer | None = None
        """The Redis-protocol socket's server (None when ``resp.enabled`` is false)."""
        self._watch_task: asyncio.Task[None] | None = None
        self._backend_check: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def socket_path(self) -> str:
        assert self._site is not None
        return self._site.path

    @property
    def runner(self) -> web.AppRunner | None:
        """The aiohttp runner (to add another site, e.g. TCP for a fuzz run)."""
        return self._runner

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port if self.metrics_server is not None else 0

    async def _new_slot(self, config: configfile.SidecarConfig) -> CacheSlot:
        return CacheSlot(new_cache(config.backend, config.metrics.namespace), config.backend)

    async def start(self) -> None:
        began = time.monotonic()
        # Fingerprint before reading, so a change racing with start-up is reloaded, not missed.
        path = self.options.config_path
        seen = reload_mod.fingerprint(path) if path else None
        config = self._initial if self._initial is not None else load_config(self.options)
        socket_site.prepare_path(config.socket)  # a live socket fails here, before any work
        if config.resp.enabled:
            _prepare_resp_path(config)
        logger.debug("effective config: %s", describe(config))
        metrics = ServerMetrics(config.metrics.namespace)
        cache = new_cache(config.backend, config.metrics.namespace)
        slot = CacheSlot(cache, config.backend)
        identity = self.options.identity or default_identity()
        state = SidecarState(
            config=config,
            slot=slot,
            metrics=metrics,
            identity=identity,
            elections=elections_mod.ElectionManager(identity=identity, metrics=metrics),
            watch_heartbeat=self.options.watch_heartbeat,
        )
        self.state = state
        self.exposition = Exposition(
            server=metrics,
            cache_source=lambda: (state.cache.registry, state.cache.namespace),
            namespace=lambda: state.config.metrics.namespace,
        )
        runner = web.AppRunner(
            app_mod.build_app(state),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=config.shutdown_grace_period,
            lingering_time=LINGERING_TIME,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        try:
            await runner.setup()  # joins the configured elections (cleanup_ctx)
        except BaseException:
            await cache.stop()
            raise
        self._runner = runner
        server = runner.server
        assert server is not None  # set by setup()
        # Cache GET/PUT/DELETE (fast_path), then lock acquire/refresh/release (fast_locks)
        # skip the router; everything else goes to the app.
        app = runner.app
        server.request_handler = fast_path.handler(
            app, fast_locks.handler(app, server.request_handler)
        )
        try:
            site = UnixListenerSite(
                runner,
                config.socket,
                max_connections=config.limits.max_connections,
                on_connections=metrics.connections.set,
                # Common cache requests answered from the socket's bytes (http_fast).
                protocols=lambda server: http_fast.factory(server, state),
            )
            await site.start()
            self._site = site
            state.watches.detach = site.detach  # watch streams leave the connection limit
            if config.resp.enabled:
                self.resp = resp_server.RespServer(
                    state, path=config.resp.socket, password=os.environ.get(RESP_PASSWORD_ENV)
                )
                await self.resp.start()
            self.started_in = time.monotonic() - began
            self.metrics_server = MetricsServer(
                self.exposition.registry,
                host=self.options.metrics_host,
                listener=self.options.metrics_listener,
            )
            self.metrics_server.health = self._socket_problem
            await self.metrics_server.start(config.metrics.port)
        except BaseException:
            await self._cleanup()
            raise
        if self.options.config_path:
            self.reloader = reload_mod.Reloader(
                path=self.options.config_path,
                overrides=self.options.overrides,
                state=state,
                site=site,
                metrics_server=self.metrics_server,
                new_slot=self._new_slot,
                interval=self.options.reload_interval,
                resp=self.resp,
                seen=seen,
            )
            self._watch_task = asyncio.create_task(
                self.reloader.watch(), name="podcache-config-watch"
            )
        logger.info(
            "serving %s backend on %s%s (identity %r, ready in %.0f ms)",
            config.backend.type,
            config.socket,
            f" and in RESP on {config.resp.socket}" if self.resp is not None else "",
            identity,
            self.started_in * 1000,
        )
        self._backend_check = asyncio.create_task(
            _warn_unless_backend_answers(state), name="podcache-backend-check"
        )

    async def _socket_problem(self) -> str | None:
        site, state = self._site, self.state
        if site is None or state is None or state.shutting_down.is_set():
            return None  # draining: the kubelet is stopping us anyway
        resp = self.resp.path if self.resp is not None else None
        return await socket_health.problem(site.path, resp, saturated=lambda: site.saturated)

    def request_reload(self) -> None:
        if self.reloader is not None:
            self.reloader.request()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Graceful shutdown in the order of the module docstring. Idempotent."""
        if self._stopped.is_set():
            return
        logger.info("shutting down")
        if self.state is not None:
            self.state.shutting_down.set()
        for task in (self._backend_check, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._cleanup()
        logger.info("shut down")

    async def _cleanup(self) -> None:
        try:
            if self.resp is not None:
                # Before the runner: its cleanup stops the backend these connections use.
                grace = self.state.config.shutdown_grace_period if self.state else 10.0
                await asyncio.shield(self.resp.stop(grace))
            if self._runner is not None:
                if self.state is not None:
                    # A reload may have changed the grace period since the runner was built.
                    self._runner._shutdown_timeout = self.state.config.shutdown_grace_period
                await asyncio.shield(self._runner.cleanup())
            if self.reloader is not None:
                await self.reloader.wait_retired()
            if self.metrics_server is not None:
                await self.metrics_server.stop()
        finally:
            if self._site is not None:
                self._site.remove_socket_file()
            self._stopped.set()


def _prepare_resp_path(config: configfile.SidecarConfig) -> None:
    if os.path.abspath(config.resp.socket) == os.path.abspath(config.socket):
        raise ConfigError("resp.socket", "must differ from the HTTP socket's path")
    socket_site.prepare_path(config.resp.socket)


async def _warn_unless_backend_answers(state: SidecarState) -> None:
    """Log a WARNING naming the Redis endpoint (not its password) if it does not answer."""
    settings = state.config.backend.settings
    if not isinstance(settings, RedisSettings):
        return  # the memory backend always answers
    try:
        async with asyncio.timeout(reload_mod.PING_TIMEOUT):
            await state.cache.ping()
    except (BackendUnavailable, TimeoutError, OSError) as exc:
        logger.warning(
            "the redis backend at %s does not answer (%s); serving anyway, "
            "/readyz answers 503 until it does",
            settings.endpoint(),
            str(exc) or f"no answer within {reload_mod.PING_TIMEOUT:g}s",
        )
