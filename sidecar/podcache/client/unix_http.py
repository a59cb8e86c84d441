"""HTTP/1.1 over a Unix socket with the standard library only, for the sync client and the CLI.

``http.client`` speaks HTTP well but only dials TCP, so ``UnixHTTPConnection``
overrides ``connect``. ``ConnectionPool`` keeps a few idle keep-alive connections
so a thread doing many calls pays the connect once, and lets several threads call
at the same time (each checks out its own connection; the pool's lock guards only
the idle list).

Beware: the sidecar closes idle keep-alive connections on its own schedule. A
pooled connection whose peer has gone is dropped before reuse (a zero-timeout
readability check, as urllib3 does), and a request that still fails on a reused
connection before any reply byte arrives is sent once more on a fresh one.
Failures to reach the sidecar become ``ClientError`` with a message an operator
can act on. After a fork the child drops the inherited idle connections.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import threading
from collections.abc import Mapping

from podcache.client.protocol import Reply
from podcache.errors import ClientError

MAX_IDLE = 8  # more idle connections than threads rarely helps; each holds a server slot
_RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
              ConnectionAbortedError)


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` whose transport is an AF_UNIX stream socket."""

    def __init__(self, socket_path: str, *, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def set_timeout(self, timeout: float | None) -> None:
        self.timeout = timeout
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def is_dropped(self) -> bool:
        """True when the idle peer has closed (readable means EOF: nothing is owed to us)."""
        if self.sock is None:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class ConnectionPool:
    """Thread-safe keep-alive connections to one socket path."""

    def __init__(self, socket_path: str, *, max_idle: int = MAX_IDLE) -> None:
        self.socket_path = socket_path
        self.max_idle = max_idle
        self._idle: list[UnixHTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self.connects = 0
        """Connections opened so far (tests use it to see keep-alive at work)."""

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None,
    ) -> Reply:
        for attempt in range(2):
            conn, reused = self._checkout(timeout)
            try:
                conn.request(method, path, body=body, headers=dict(headers or {}))
                response = conn.getresponse()
                data = response.read()
            except _RETRYABLE as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # the peer closed an idle connection under us: once more, fresh
                raise ClientError(f"the podcache sidecar at {self.socket_path} closed the "
                                  f"connection: {exc or type(exc).__name__}") from exc
            except TimeoutError as exc:
                conn.close()
                raise ClientError(f"the podcache sidecar at {self.socket_path} did not answer "
                                  f"within {timeout}s") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ClientError(f"talking to the podcache sidecar at {self.socket_path} "
                                  f"failed: {exc or type(exc).__name__}") from exc
            reply = Reply(status=response.status, body=data,
                          headers={name.lower(): value for name, value in response.getheaders()})
            if response.will_close:
                conn.close()
            else:
                self._checkin(conn)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def open_stream(
        self, method: str, path: str, *, timeout: float | None
    ) -> tuple[UnixHTTPConnection, http.client.HTTPResponse]:
        """A dedicated connection for a long-lived streamed reply; the caller closes it."""
        conn = self._connect(timeout)
        try:
            conn.request(method, path)
            return conn, conn.getresponse()
        except TimeoutError as exc:
            conn.close()
            raise ClientError(f"the podcache sidecar at {self.socket_path} did not answer "
                              f"within {timeout}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ClientError(f"talking to the podcache sidecar at {self.socket_path} "
                              f"failed: {exc or type(exc).__name__}") from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _checkout(self, timeout: float | None) -> tuple[UnixHTTPConnection, bool]:
        if os.getpid() != self._pid:
            # A forked child (gunicorn, multiprocessing) must not share the parent's sockets:
            # forget them (the parent still uses them) and start afresh.
            self._idle, self._lock, self._pid = [], threading.Lock(), os.getpid()
        while True:
            with self._lock:
                if self._closed:
                    raise ClientError("the podcache client was stopped")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(timeout), False
            if conn.is_dropped():
                conn.close()
                continue
            conn.set_timeout(timeout)
            return conn, True

    def _checkin(self, conn: UnixHTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self, timeout: float | None) -> UnixHTTPConnection:
        if self._closed:
            raise ClientError("the podcache client was stopped")
        conn = UnixHTTPConnection(self.socket_path, timeout=timeout)
        try:
            conn.connect()
        except FileNotFoundError as exc:
            raise ClientError(f"no podcache sidecar socket at {self.socket_path} (is the sidecar "
                              f"running? set PODCACHE_SOCKET or --socket)") from exc
        except ConnectionRefusedError as exc:
            raise ClientError(f"the podcache sidecar socket {self.socket_path} refused the "
                              f"connection (the sidecar is not running)") from exc
        except PermissionError as exc:
            raise ClientError(f"permission denied on the podcache sidecar socket "
                              f"{self.socket_path}") from exc
        except TimeoutError as exc:
            raise ClientError(f"connecting to the podcache sidecar at {self.socket_path} timed "
                              f"out after {timeout}s") from exc
        except OSError as exc:
            raise ClientError(f"cannot connect to the podcache sidecar at {self.socket_path}: "
                              f"{exc.strerror or exc}") from exc
        with self._lock:
            self.connects += 1
        return conn
