"""Watch streams have a budget of their own, apart from the socket's connection limit.

A watch (``GET /v1/leader/{name}?watch=true``) holds its connection for as long as
the client wants. Counted in ``limits.maxConnections``, enough of them left no
connection for anything else: new clients, the kubelet's ``/healthz`` and
``/readyz`` probes among them, waited in the listen backlog for ever, and a liveness
probe failing that way restarts the sidecar (losing a memory backend's data). So:

- at most ``limits.maxWatchStreams`` watches are open at once (read per request, so a
  reload applies at once); one more is answered 429 ``too_many_watches``;
- a watch that starts takes its connection OFF the connection limit (``detach``, set
  by the runtime to the socket site's), so watches can never fill it;
- that connection is closed when its watch ends: off the count, it must never go
  back to serving ordinary requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from aiohttp import web

# The module, not its names: errors imports state, which imports this module.
from podcache.sidecar import errors


class WatchStreams:
    """The open watch streams of one sidecar."""

    def __init__(self) -> None:
        self.active = 0
        self.detach: Callable[[object], bool] | None = None
        """Takes a connection (aiohttp's protocol object) off the connection limit;
        set by the runtime once the socket is served (None when served otherwise)."""

    @contextlib.contextmanager
    def admit(self, request: web.Request, *, limit: int) -> Iterator[None]:
        """Hold a watch slot while the stream runs; ApiError 429 when all are taken."""
        if self.active >= limit:
            raise errors.ApiError(
                429,
                "too_many_watches",
                f"{limit} watch streams are open (limits.maxWatchStreams); retry later",
                headers={"Retry-After": errors.RETRY_AFTER_SECONDS},
            )
        self.active += 1
        try:
            if self.detach is not None and request.protocol is not None:
                self.detach(request.protocol)
            yield
        finally:
            self.active -= 1
