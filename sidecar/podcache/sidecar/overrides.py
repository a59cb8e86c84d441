"""Settings that come from outside the config file: flags, environment, Secrets.

The effective config is the file's (or the embedded default) with these applied,
computed the same way at start and at every reload, so a reload compares like with
like. Precedence: command-line flag > environment variable > config file > default.

The Redis password never sits in the ConfigMap: the operator injects it from a
Secret as ``PODCACHE_REDIS_PASSWORD`` (or mounts it and names the file in
``PODCACHE_REDIS_PASSWORD_FILE``); it is used only when the config names none.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from podcache import configfile
from podcache.config import Config, RedisSettings

FALLBACK_SOCKET = "./podcache.sock"
"""Where the socket goes when run outside a pod (``/var/run/podcache`` does not exist)."""
PASSWORD_ENV = "PODCACHE_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "PODCACHE_REDIS_PASSWORD_FILE"


@dataclasses.dataclass(frozen=True)
class Overrides:
    """Values given on the command line or in the environment (None = not given)."""

    socket: str | None = None
    metrics_port: int | None = None
    log_level: str | None = None
    resp_socket: str | None = None

    def apply(
        self, config: configfile.SidecarConfig, *, environ: Mapping[str, str] | None = None
    ) -> configfile.SidecarConfig:
        """The effective config: ``config`` with these overrides and the Secret's password."""
        env = os.environ if environ is None else environ
        socket = self.socket or default_socket(config.socket)
        metrics = config.metrics
        if self.metrics_port is not None:
            metrics = dataclasses.replace(metrics, port=self.metrics_port)
        resp = dataclasses.replace(
            config.resp,
            socket=self.resp_socket or default_resp_socket(config.resp.socket, socket),
        )
        return dataclasses.replace(
            config,
            backend=with_password(config.backend, env),
            socket=socket,
            resp=resp,
            metrics=metrics,
            log_level=(self.log_level or config.log_level).lower(),
        )


def default_socket(configured: str) -> str:
    """The configured path; the built-in default falls back to ``./podcache.sock`` off-pod."""
    if configured == configfile.DEFAULT_SOCKET and not os.path.isdir(os.path.dirname(configured)):
        return os.path.abspath(FALLBACK_SOCKET)  # absolute: clearer in logs
    return configured


def default_resp_socket(configured: str, http_socket: str) -> str:
    """The configured path; off-pod the built-in default goes beside the HTTP socket and
    is named after it (``./podcache.sock`` -> ``./podcache-redis.sock``), so sidecars
    sharing a directory (tests, several on one laptop) never want the same path."""
    if configured == configfile.DEFAULT_RESP_SOCKET and not os.path.isdir(
        os.path.dirname(configured)
    ):
        stem = os.path.splitext(os.path.abspath(http_socket))[0]
        return stem + "-redis.sock"
    return configured


def with_password(backend: Config, environ: Mapping[str, str]) -> Config:
    """``backend`` with the password from the environment, when it is Redis and names none."""
    settings = backend.settings
    if not isinstance(settings, RedisSettings) or settings.password or settings.password_file:
        return backend
    password = environ.get(PASSWORD_ENV)
    if password:
        return Config(type=backend.type, config={**backend.config, "password": password})
    password_file = environ.get(PASSWORD_FILE_ENV)
    if password_file:
        return Config(type=backend.type, config={**backend.config, "passwordFile": password_file})
    return backend
