"""``podcache.AsyncClient``: the asyncio client of the sidecar's Unix socket.

One ``aiohttp.ClientSession`` on a ``UnixConnector`` (keep-alive connections,
bounded by ``max_connections``), created lazily inside the running event loop so
the client may be built anywhere. It runs the very ``protocol.Call``s the sync
``Client`` runs, so both encode keys and map errors the same way.

Beware: aiohttp retries idempotent requests on a dropped keep-alive connection by
itself; we add one retry for the rest (lock POSTs), because the sidecar closing an
idle connection happens before it read the request, never after it acted on it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import aiohttp
import yarl

from podcache import errors
from podcache.client import async_locking, models, protocol

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0  # the sidecar's own request timeout defaults to 10s as well
DEFAULT_MAX_CONNECTIONS = 100  # aiohttp's default pool size: one per concurrent call


class AsyncClient:
    """Cache, locks and leader election through the pod's podcache sidecar, awaited.

    ``socket_path`` defaults to ``$PODCACHE_SOCKET``, else ``/var/run/podcache/cache.sock``.
    Use ``async with AsyncClient() as client:`` or call ``await client.stop()``.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.socket_path = protocol.resolve_socket(socket_path)
        self.timeout = timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"podcache.AsyncClient({self.socket_path!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        self._stopped = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    close = stop

    # -- cache ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """The value of ``key``; raises ``podcache.CacheMiss`` when absent or expired."""
        return await self._run(protocol.get(key))

    async def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The value and its ETag, for a later ``compare_and_set``."""
        return await self._run(protocol.get_with_etag(key))

    async def set(self, key: str, value: bytes, *, ttl: protocol.Duration = 0) -> None:
        """Store ``value``; ``ttl`` in seconds or as "30s"; 0 means the sidecar's default TTL."""
        await self._run(protocol.put(key, value, ttl=ttl))

    async def set_if_absent(self, key: str, value: bytes, *, ttl: protocol.Duration = 0) -> bool:
        """Store only when ``key`` holds nothing; True when stored."""
        return await self._run(protocol.set_if_absent(key, value, ttl=ttl))

    async def compare_and_set(
        self, key: str, value: bytes, etag: str, *, ttl: protocol.Duration = 0
    ) -> bool:
        """Store only when ``key`` still has the ETag ``etag``; False when it changed or went."""
        return await self._run(protocol.compare_and_set(key, value, etag=etag, ttl=ttl))

    async def set_if_match(
        self, key: str, value: bytes, expected: bytes, *, ttl: protocol.Duration = 0
    ) -> bool:
        """The library's compare-and-set by value: store only when ``key`` holds ``expected``."""
        try:
            current, etag = await self.get_with_etag(key)
        except errors.CacheMiss:
            return False
        if current != expected:
            return False
        return await self.compare_and_set(key, value, etag, ttl=ttl)

    async def delete(self, key: str) -> None:
        """Remove ``key``; not an error when it is already absent."""
        await self._run(protocol.delete(key))

    # -- locks ---------------------------------------------------------------------------

    def lock(
        self,
        name: str,
        *,
        ttl: protocol.Duration = 10,
        wait: protocol.Duration = 0,
        on_lost: Callable[[async_locking.AsyncHeldLock], object | Awaitable[object]] | None = None,
    ) -> async_locking.AsyncHeldLock:
        """``async with client.lock("job", ttl=10) as held:`` refreshed by a background task.

        Raises ``LockNotAcquired`` on entry when not acquired within ``wait``.
        ``on_lost`` (plain or async) runs in the refresh task when the lock is lost.
        """
        return async_locking.AsyncHeldLock(self, name, ttl=ttl, wait=wait, on_lost=on_lost)

    async def acquire_lock(
        self, name: str, *, ttl: protocol.Duration = 0, wait: protocol.Duration = 0
    ) -> models.Lease:
        """One acquire (no background refresh); raises ``LockNotAcquired``."""
        return await self._run(protocol.acquire(name, ttl=ttl, wait=wait))

    async def refresh_lock(
        self,
        name: str,
        *,
        token: str,
        ttl: protocol.Duration = 0,
        request_timeout: float | None = None,
    ) -> models.Lease:
        """Extend a held lease; raises ``NotOwner`` when ``token`` no longer holds it."""
        return await self._run(protocol.refresh(name, token=token, ttl=ttl),
                               request_timeout=request_timeout)

    async def release_lock(self, name: str, *, token: str) -> None:
        """Release a held lease; raises ``NotOwner`` when ``token`` no longer holds it."""
        await self._run(protocol.release(name, token=token))

    # -- leader election -----------------------------------------------------------------

    async def leader(self, election: str) -> models.LeaderStatus:
        """Who leads ``election``; raises ``ServerError`` (``unknown_election``) if not joined."""
        return await self._run(protocol.leader(election))

    async def join(self, election: str) -> models.LeaderStatus | None:
        """Make the sidecar campaign in ``election`` with its pod's identity."""
        return await self._run(protocol.join(election))

    async def resign(self, election: str) -> models.LeaderStatus | None:
        """Leave ``election``; a successor takes over at once."""
        return await self._run(protocol.resign(election))

    async def watch(
        self, election: str, *, idle_timeout: float | None = None
    ) -> AsyncIterator[models.LeaderStatus]:
        """Yield the status of ``election`` on every change, until the stream ends."""
        url = _url(protocol.leader_path(election, watch=True))
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=idle_timeout)
        try:
            async with self._ensure_session().get(url, timeout=timeout) as response:
                if response.status != 200:
                    protocol.check_watch_reply(await _reply(response))
                async for line in response.content:
                    status = protocol.parse_watch_line(line)
                    if status is not None:
                        yield status
        except TimeoutError as exc:
            raise errors.ClientError(f"no news on election {election!r} "
                                     f"for {idle_timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise self._client_error(exc) from exc

    # -- probes ----------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when the sidecar process answers (``/healthz``)."""
        return await self._run(protocol.health())

    async def ready(self) -> bool:
        """True when the sidecar's backend answers (``/readyz``); False while it does not."""
        return await self._run(protocol.ready())

    async def readiness(self, *, live: bool = False) -> tuple[bool, str]:
        """``(ready, reason)``: ``ready()`` (``health()`` if ``live``) with the sidecar's reason."""
        return await self._run(protocol.readiness(live=live))

    # -- plumbing ----------------------------------------------------------------------------

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._stopped:
            raise errors.ClientError("the podcache client was stopped")
        if self._session is None:
            connector = aiohttp.UnixConnector(path=self.socket_path, limit=self.max_connections)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _run(self, call: protocol.Call[T], *, request_timeout: float | None = None) -> T:
        session = self._ensure_session()
        timeout = request_timeout if request_timeout is not None else self.timeout
        total = timeout + call.blocks_for
        client_timeout = aiohttp.ClientTimeout(total=total)
        url = _url(call.path)
        for attempt in range(2):
            try:
                async with session.request(call.method, url, data=call.body,
                                           headers=dict(call.headers),
                                           timeout=client_timeout) as response:
                    reply = await _reply(response)
            except aiohttp.ClientConnectorError as exc:
                raise self._client_error(exc) from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError) as exc:
                if attempt == 0:
                    continue  # an idle keep-alive connection the sidecar had closed
                raise self._client_error(exc) from exc
            except TimeoutError as exc:
                raise errors.ClientError(f"the podcache sidecar at {self.socket_path} did not "
                                         f"answer within {total:g}s") from exc
            except aiohttp.ClientError as exc:
                raise self._client_error(exc) from exc
            return call.interpret(reply)
        raise AssertionError("unreachable")  # pragma: no cover

    def _client_error(self, exc: aiohttp.ClientError) -> errors.ClientError:
        cause = getattr(exc, "os_error", None)
        if isinstance(cause, FileNotFoundError):
            return errors.ClientError(f"no podcache sidecar socket at {self.socket_path} (is the "
                                      f"sidecar running? set PODCACHE_SOCKET)")
        if isinstance(cause, ConnectionRefusedError):
            return errors.ClientError(f"the podcache sidecar socket {self.socket_path} refused "
                                      f"the connection (the sidecar is not running)")
        if isinstance(cause, PermissionError):
            return errors.ClientError(f"permission denied on the podcache sidecar socket "
                                      f"{self.socket_path}")
        return errors.ClientError(f"talking to the podcache sidecar at {self.socket_path} failed: "
                                  f"{exc or type(exc).__name__}")


def _url(path: str) -> yarl.URL:
    # encoded=True: the path is already percent-encoded and must reach the sidecar as is.
    return yarl.URL("http://localhost" + path, encoded=True)


async def _reply(response: aiohttp.ClientResponse) -> protocol.Reply:
    body = await response.read()
    return protocol.Reply(status=response.status, body=body,
                          headers={name.lower(): value for name, value in response.headers.items()})
