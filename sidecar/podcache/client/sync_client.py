"""``podcache.Client``: the synchronous client of the sidecar's Unix socket.

Standard library only (``http.client`` over AF_UNIX, see ``unix_http``), so an
application or the CLI can use the sidecar without aiohttp or an event loop.
Safe to share between threads: each call checks a keep-alive connection out of
a small pool. Every operation is a ``protocol.Call``, the same ones
``AsyncClient`` runs, so both clients encode and fail identically.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TypeVar

from podcache.client import locking, models, protocol, unix_http
from podcache.errors import CacheMiss, ClientError

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0  # the sidecar's own request timeout defaults to 10s as well


class Client:
    """Cache, locks and leader election through the pod's podcache sidecar.

    ``socket_path`` defaults to ``$PODCACHE_SOCKET``, else ``/var/run/podcache/cache.sock``.
    ``timeout`` bounds each call (a blocking lock acquire gets its ``wait`` on top).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_idle_connections: int = unix_http.MAX_IDLE,
    ) -> None:
        self.socket_path = protocol.resolve_socket(socket_path)
        self.timeout = timeout
        self._pool = unix_http.ConnectionPool(self.socket_path, max_idle=max_idle_connections)

    def __repr__(self) -> str:
        return f"podcache.Client({self.socket_path!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def connects(self) -> int:
        """Connections opened so far: stays at 1 for a single thread thanks to keep-alive."""
        return self._pool.connects

    def stop(self) -> None:
        """Close the idle connections; the client cannot be used afterwards."""
        self._pool.close()

    close = stop

    # -- cache ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """The value of ``key``; raises ``podcache.CacheMiss`` when absent or expired."""
        return self._run(protocol.get(key))

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The value and its ETag, for a later ``compare_and_set``."""
        return self._run(protocol.get_with_etag(key))

    def set(self, key: str, value: bytes, *, ttl: protocol.Duration = 0) -> None:
        """Store ``value``; ``ttl`` in seconds or as "30s"; 0 means the sidecar's default TTL."""
        self._run(protocol.put(key, value, ttl=ttl))

    def set_if_absent(self, key: str, value: bytes, *, ttl: protocol.Duration = 0) -> bool:
        """Store only when ``key`` holds nothing; True when stored."""
        return self._run(protocol.set_if_absent(key, value, ttl=ttl))

    def compare_and_set(
        self, key: str, value: bytes, etag: str, *, ttl: protocol.Duration = 0
    ) -> bool:
        """Store only when ``key`` still has the ETag ``etag``; False when it changed or went."""
        return self._run(protocol.compare_and_set(key, value, etag=etag, ttl=ttl))

    def set_if_match(
        self, key: str, value: bytes, expected: bytes, *, ttl: protocol.Duration = 0
    ) -> bool:
        """The library's compare-and-set by value: store only when ``key`` holds ``expected``."""
        try:
            current, etag = self.get_with_etag(key)
        except CacheMiss:
            return False
        if current != expected:
            return False
        return self.compare_and_set(key, value, etag, ttl=ttl)

    def delete(self, key: str) -> None:
        """Remove ``key``; not an error when it is already absent."""
        self._run(protocol.delete(key))

    # -- locks ---------------------------------------------------------------------------

    def lock(
        self,
        name: str,
        *,
        ttl: protocol.Duration = 10,
        wait: protocol.Duration = 0,
        on_lost: Callable[[locking.HeldLock], object] | None = None,
    ) -> locking.HeldLock:
        """``with client.lock("job", ttl=10, wait=2) as held:`` refreshed in the background.

        Raises ``LockNotAcquired`` on entry when not acquired within ``wait``.
        ``on_lost`` runs in the refresh thread when the lock is lost.
        """
        return locking.HeldLock(self, name, ttl=ttl, wait=wait, on_lost=on_lost)

    def acquire_lock(
        self, name: str, *, ttl: protocol.Duration = 0, wait: protocol.Duration = 0
    ) -> models.Lease:
        """One acquire (no background refresh); raises ``LockNotAcquired``."""
        call = protocol.acquire(name, ttl=ttl, wait=wait)
        return self._run(call)

    def refresh_lock(
        self,
        name: str,
        *,
        token: str,
        ttl: protocol.Duration = 0,
        request_timeout: float | None = None,
    ) -> models.Lease:
        """Extend a held lease; raises ``NotOwner`` when ``token`` no longer holds it."""
        return self._run(protocol.refresh(name, token=token, ttl=ttl),
                         request_timeout=request_timeout)

    def release_lock(self, name: str, *, token: str) -> None:
        """Release a held lease; raises ``NotOwner`` when ``token`` no longer holds it."""
        self._run(protocol.release(name, token=token))

    # -- leader election -----------------------------------------------------------------

    def leader(self, election: str) -> models.LeaderStatus:
        """Who leads ``election``; raises ``ServerError`` (``unknown_election``) if not joined."""
        return self._run(protocol.leader(election))

    def join(self, election: str) -> models.LeaderStatus | None:
        """Make the sidecar campaign in ``election`` with its pod's identity."""
        return self._run(protocol.join(election))

    def resign(self, election: str) -> models.LeaderStatus | None:
        """Leave ``election``; a successor takes over at once."""
        return self._run(protocol.resign(election))

    def watch(
        self, election: str, *, idle_timeout: float | None = None
    ) -> Iterator[models.LeaderStatus]:
        """Yield the status of ``election`` on every change, until the stream ends.

        Holds a connection of its own; close the generator (or break) to drop it.
        ``idle_timeout`` raises ``ClientError`` when nothing arrives for that long.
        """
        path = protocol.leader_path(election, watch=True)
        conn, response = self._pool.open_stream("GET", path, timeout=self.timeout)
        try:
            if response.status != 200:
                protocol.check_watch_reply(_whole(response))
            conn.set_timeout(idle_timeout)
            while True:
                try:
                    line = response.readline()
                except TimeoutError as exc:
                    raise ClientError(f"no news on election {election!r} "
                                      f"for {idle_timeout}s") from exc
                except (OSError, http.client.HTTPException) as exc:
                    raise ClientError(f"the watch of election {election!r} broke: {exc}") from exc
                if not line:
                    return  # the sidecar ended the stream (it is shutting down)
                status = protocol.parse_watch_line(line)
                if status is not None:
                    yield status
        finally:
            conn.close()

    # -- probes ----------------------------------------------------------------------------

    def health(self) -> bool:
        """True when the sidecar process answers (``/healthz``)."""
        return self._run(protocol.health())

    def ready(self) -> bool:
        """True when the sidecar's backend answers (``/readyz``); False while it does not."""
        return self._run(protocol.ready())

    def readiness(self, *, live: bool = False) -> tuple[bool, str]:
        """``(ready, reason)``: ``ready()`` (``health()`` if ``live``) with the sidecar's reason."""
        return self._run(protocol.readiness(live=live))

    # -- plumbing ----------------------------------------------------------------------------

    def _run(self, call: protocol.Call[T], *, request_timeout: float | None = None) -> T:
        reply = self._pool.request(
            call.method, call.path, body=call.body, headers=call.headers,
            timeout=(request_timeout if request_timeout is not None else self.timeout)
            + call.blocks_for,
        )
        return call.interpret(reply)


def _whole(response: http.client.HTTPResponse) -> protocol.Reply:
    return protocol.Reply(status=response.status, body=response.read(),
                          headers={name.lower(): value for name, value in response.getheaders()})
