"""The podcache sidecar: the cache, locks and leader election served over a Unix socket.

Layers, one concern per module:

- ``main``: command line and environment → ``runtime.Options``; the console script.
- ``runtime``: start, serve and shut down gracefully (signals, grace period, order).
- ``socket_site``: the Unix socket (0660, stale vs live socket, connection limit).
- ``app``: the aiohttp Application and its routes; ``errors``: the one middleware.
- ``routes_*``: one module per resource of DESIGN.md's socket table; ``inputs``: the
  request parsing they share (path segments, TTLs, bounded bodies, JSON).
- ``state``: what a reload may swap (config, backend slot); ``reload``: the watcher.
- ``elections`` / ``leases``: elections joined and locks held through the sidecar.
- ``metrics`` / ``metrics_server``: one registry per instance, served on TCP.
"""
