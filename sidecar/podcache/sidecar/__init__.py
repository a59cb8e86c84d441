"""The podcache sidecar: the cache, locks and leader election served over a Unix socket.

Layers, one concern per module:

- ``launcher``: the console script's first steps before the heavy imports (the metrics
  port listening early for the kubelet's probe), then ``main``.
- ``main``: command line and environment → ``runtime.Options``; runs the event loop.
- ``vectored_writes``: aiohttp's header and body sent by one ``writev`` on uvloop.
- ``runtime``: start, serve and shut down gracefully (signals, grace period, order).
- ``socket_site``: the Unix socket (0660, stale vs live socket, connection limit).
- ``app``: the aiohttp Application and its routes; ``errors``: the one middleware.
- ``routes_*``: one module per resource of DESIGN.md's socket table; ``inputs``: the
  request parsing they share (path segments, TTLs, bounded bodies, JSON).
- ``state``: what a reload may swap (config, backend slot); ``reload``: the watcher.
- ``elections`` / ``leases``: elections joined and locks held through the sidecar.
- ``metrics`` / ``metrics_server``: one registry per instance, served on TCP.
"""
