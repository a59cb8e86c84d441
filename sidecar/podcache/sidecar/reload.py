"""Hot reload: watch the config file and apply a new version without dropping connections.

Watching. Kubernetes updates a ConfigMap volume by writing a new timestamped
directory and atomically re-pointing the ``..data`` symlink, so the file's own
path never changes and inotify on it sees nothing. The watcher therefore polls a
cheap fingerprint: the resolved path (it changes with the symlink swap), the
inode, mtime and size of the target, and the directory's mtime (it changes when
``..data`` is replaced). A few ``stat`` calls per second cost nothing; SIGHUP
forces a check at once.

Applying. A new config is validated first (``configfile.load``); an invalid one is
logged, counted in ``<ns>_sidecar_config_reload_total{result="error"}`` and
ignored, and the old one keeps serving. A valid one is applied in an order where
every step that can fail comes before anything is changed: move the metrics
listener, build the new backend and check it, then commit: switch the backend
slot, move the elections to it, swap the config (limits, default TTLs, namespace
are read per request), follow the elections list. The old backend is retired in
the background once the requests that started on it have finished.

The check of a new backend is connect + AUTH + PING within its connect timeout
(``Reloader.check_backend``): a backend that fails it (wrong password, wrong host,
an ACL that refuses) is refused like an invalid file (logged, counted as an error)
and the working one stays. Only when the current backend does not answer either is
the new one taken anyway: then there is nothing working to keep, and the new file
is likely the fix.

Locks survive every reload that keeps the backend type: a memory backend whose
settings changed is resized in place (it holds the entries, locks and fences;
``CacheSlot.resize_in_place``), and a new backend of the same type takes over the
old one's leases, so retiring the old one releases none that a holder still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable

from podcache import configfile
from podcache.config import RedisSettings
from podcache.errors import BackendUnavailable, ConfigError
from podcache.sidecar import logs
from podcache.sidecar.metrics_server import MetricsServer
from podcache.sidecar.overrides import Overrides
from podcache.sidecar.resp_server import RespServer
from podcache.sidecar.socket_site import UnixListenerSite
from podcache.sidecar.state import CacheSlot, SidecarState, backend_identity

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
"""Seconds between fingerprint checks; kubelet itself syncs ConfigMaps every ~60 s."""
SETTLE = 0.05
"""Seconds to let a multi-step write (an editor, ``cp``) finish before reading."""
PING_TIMEOUT = 2.0

Fingerprint = tuple[object, ...] | None
SlotFactory = Callable[[configfile.SidecarConfig], Awaitable[CacheSlot]]


def fingerprint(path: str) -> Fingerprint:
    """What changes when the file or the symlink it resolves through changes."""
    try:
        target = os.stat(path)
        directory = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return (
        os.path.realpath(path),
        target.st_dev,
        target.st_ino,
        target.st_mtime_ns,
        target.st_size,
        directory.st_mtime_ns,
    )


class Reloader:
    """Watches one config file and applies its new versions to a running sidecar."""

    def __init__(
        self,
        *,
        path: str,
        overrides: Overrides,
        state: SidecarState,
        site: UnixListenerSite,
        metrics_server: MetricsServer,
        new_slot: SlotFactory,
        interval: float = POLL_INTERVAL,
        seen: Fingerprint = None,
        resp: RespServer | None = None,
    ) -> None:
        self.path = path
        self._overrides = overrides
        self._state = state
        self._site = site
        self._resp = resp
        self._metrics_server = metrics_server
        self._new_slot = new_slot
        self._interval = interval
        self._seen = seen if seen is not None else fingerprint(path)
        self._poke = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()
        self._apply_lock = asyncio.Lock()

    def request(self) -> None:
        """Check the file now (SIGHUP)."""
        self._poke.set()

    async def watch(self) -> None:
        """Poll forever; run as a task and cancel it to stop."""
        last = self._seen
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._poke.wait()
            forced = self._poke.is_set()
            self._poke.clear()
            current = fingerprint(self.path)
            if current == last and not forced:
                continue
            await asyncio.sleep(SETTLE)
            settled = fingerprint(self.path)
            if settled != current:
                continue  # still being written: look again next round
            last = current
            try:
                await self.reload()
            except Exception:  # the watcher must outlive any one bad reload
                logger.exception("config reload failed unexpectedly; still watching")
                self._state.metrics.reloads.labels("error").inc()

    async def reload(self) -> bool:
        """Load, validate and apply the file; False (and counted) when it was refused."""
        metrics = self._state.metrics
        try:
            loaded = configfile.load(self.path)
            new = self._overrides.apply(loaded)
        except (ConfigError, ValueError, RecursionError) as exc:  # e.g. not UTF-8, too deep
            logger.error("config reload rejected, the previous config keeps serving: %s", exc)
            metrics.reloads.labels("error").inc()
            return False
        if new == self._state.config:
            return True  # touched but unchanged (or an identical ConfigMap revision)
        async with self._apply_lock:
            try:
                await self.apply(new)
            except Exception as exc:
                logger.error(
                    "config reload failed, the previous config keeps serving: %s",
                    exc,
                    exc_info=not isinstance(exc, ConfigError | OSError),
                )
                metrics.reloads.labels("error").inc()
                return False
        metrics.reloads.labels("ok").inc()
        logger.info("config reloaded from %s", self.path)
        return True

    async def apply(self, new: configfile.SidecarConfig) -> None:
        state = self._state
        old = state.config
        # 1. Steps that may fail, before anything changes.
        if new.metrics.port != old.metrics.port:
            await self._metrics_server.move(new.metrics.port)
        slot: CacheSlot | None = None
        if backend_identity(new.backend) != state.slot.identity and not (
            state.slot.resize_in_place(new.backend)
        ):
            slot = await self._new_slot(new)
            try:
                await self.check_backend(slot)
            except BaseException:
                await self._close_quietly(slot)
                raise
        # 2. Commit.
        if new.socket != old.socket:
            logger.warning(
                "the socket path changed to %s; it applies at the next restart "
                "(still serving on %s)",
                new.socket,
                old.socket,
            )
            new = dataclasses.replace(new, socket=old.socket)
        if new.resp != old.resp:
            logger.warning(
                "the Redis-protocol socket settings changed to %s; they apply at the next "
                "restart (still %s)",
                new.resp,
                old.resp,
            )
            new = dataclasses.replace(new, resp=old.resp)
        if new.log_level != old.log_level:
            logs.set_level(new.log_level)
        if slot is not None:
            previous = state.slot
            if new.backend.type == previous.config.type:
                slot.take_leases(previous)
            state.slot = slot
            state.metrics.backend_swaps.inc()
            logger.info("switched to the new %s backend", new.backend.type)
            await state.elections.rebind(slot.cache)
            self._retire(previous, grace=new.limits.request_timeout + 1.0)
        state.config = new
        self._site.max_connections = new.limits.max_connections
        if self._resp is not None:
            self._resp.max_connections = new.limits.max_connections
        await state.elections.apply(new.elections)

    async def check_backend(self, slot: CacheSlot) -> None:
        """Raise ConfigError unless ``slot``'s backend connects, authenticates and answers
        PING within its connect timeout (or the current backend is no better)."""
        settings = slot.config.settings
        timeout = settings.connect_timeout if isinstance(settings, RedisSettings) else PING_TIMEOUT
        failure = await _ping_failure(slot, timeout)
        if failure is None:
            return
        if await _ping_failure(self._state.slot, timeout) is not None:
            logger.warning(
                "the new backend does not answer (%s), nor does the current one; switching", failure
            )
            return
        where = settings.endpoint() if isinstance(settings, RedisSettings) else "the new backend"
        raise ConfigError(
            "config",
            f"the new backend at {where} failed its check (connect, AUTH and PING within "
            f"{timeout:g}s): {failure}",
        )

    @staticmethod
    async def _close_quietly(slot: CacheSlot) -> None:
        try:
            await slot.close()
        except Exception:
            logger.exception("closing the refused backend failed")

    def _retire(self, slot: CacheSlot, *, grace: float) -> None:
        async def retire() -> None:
            if not await slot.drain(grace):
                logger.warning(
                    "%d request(s) still use the old backend after %.1fs; stopping it",
                    slot.inflight,
                    grace,
                )
            try:
                await slot.close()
            except Exception:
                logger.exception("stopping the old backend failed")

        task = asyncio.create_task(retire(), name="podcache-retire-backend")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def wait_retired(self) -> None:
        """Let old backends finish retiring (at shutdown)."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


async def _ping_failure(slot: CacheSlot, within: float) -> str | None:
    """Why ``slot``'s backend did not answer PING ``within`` seconds; None when it did."""
    try:
        async with asyncio.timeout(within):
            await slot.cache.ping()
    except TimeoutError:
        return f"no answer within {within:g}s"
    except (BackendUnavailable, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None
