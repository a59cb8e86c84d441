"""The operator's own settings, read once from the environment at start.

Grouped like kopf's ``OperatorSettings``: one frozen dataclass per concern, a
docstring per field, and one ``from_env()`` that reads every ``PODCACHE_*``
variable in one place (the Helm chart sets them). Kopf's own knobs (peering,
timeouts) live in ``WatchSettings``/``PeeringSettings`` here and are copied into
kopf's settings by the single ``@kopf.on.startup()`` handler in ``handlers.py``.

Beware: a malformed variable raises ``SettingsError`` naming it, before kopf
starts — an operator with half-read settings is worse than one that does not start.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use."""


def _version() -> str:
    try:
        return metadata.version("podcache")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0.1.0"


VERSION = _version()
"""The installed podcache's version (``podcache-operator --version``)."""
DEFAULT_IMAGE = f"ghcr.io/podcache/podcache:{VERSION}"


@dataclasses.dataclass(frozen=True)
class SidecarSettings:
    """What the webhook injects when a CacheConfig does not say otherwise."""

    image: str = DEFAULT_IMAGE
    """Sidecar image; ``spec.sidecar.image`` overrides it per CacheConfig."""
    image_pull_policy: str = "IfNotPresent"
    native: bool = True
    """Inject a native sidecar (init container with ``restartPolicy: Always``, K8s 1.29+)."""
    metrics_port: int = 9090
    """Container port of the sidecar's ``/metrics``; named ``metrics`` in the pod."""
    cpu_request: str = "10m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"
    """Used only when ``spec.sidecar.resources`` is absent."""
    run_as_user: int = 65532
    """Non-root UID of the sidecar (the image's ``nonroot`` user)."""
    image_pull_secrets: tuple[str, ...] = ()
    """Secrets (by name) added to every injected pod's ``spec.imagePullSecrets`` when it
    does not list them yet: what the kubelet needs to pull a sidecar image from a private
    registry. Each must exist in the pod's own namespace (the kubelet warns, then pulls
    without it, when it does not)."""


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """The HTTPS admission endpoint that injects the sidecar."""

    enabled: bool = True
    addr: str = "0.0.0.0"
    """Listening address (all interfaces in a pod)."""
    port: int = 9443
    host: str | None = None
    """Hostname the apiserver uses to reach us, e.g. ``podcache-operator.podcache.svc``."""
    cert_file: str | None = None
    """PEM certificate (from the chart's Secret); self-signed via kopf when absent."""
    key_file: str | None = None
    ca_file: str | None = None
    """CA bundle put into the webhook configuration's ``caBundle``."""
    cert_check_interval: float = 2.0
    """Seconds between looks at the certificate files; a renewed pair is loaded in place,
    without closing the listener (``webhook_serving``)."""
    managed: str | None = None
    """A MutatingWebhookConfiguration for kopf to keep up to date (needs ``host``);
    None leaves it to the Helm chart, which ships one."""
    reject_missing_config: bool = False
    """Deny pods naming a CacheConfig that does not exist, instead of admitting them unchanged."""
    failure_policy: str = "Ignore"
    """The webhook configuration's ``failurePolicy`` (the chart passes its own). When the
    sidecar cannot be injected, or injecting fails, ``Ignore`` admits the pod unmodified
    with a warning, as the apiserver would if we did not answer; ``Fail`` denies it with
    the reason."""


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """The operator's own ``/metrics`` (the sidecars' port is ``SidecarSettings.metrics_port``)."""

    port: int = 9091
    """TCP port of ``/metrics`` (the chart's ``operator.metricsPort``); 0 serves no metrics."""
    addr: str = "0.0.0.0"
    """Listening address (all interfaces in a pod)."""


@dataclasses.dataclass(frozen=True)
class WatchSettings:
    """Kopf's watch/request timing (copied into ``kopf.OperatorSettings``)."""

    server_timeout: int = 300
    """Ask the apiserver to end each watch after this many seconds; kopf reconnects at
    once. Whole seconds: kopf sends it as ``timeoutSeconds``, which the apiserver parses
    as an integer (``300.0`` gets every watch refused with 400)."""
    client_timeout: float = 330.0
    """Give up on a silent watch connection a little after the server should have ended it."""
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    """One API request (not a watch) never takes longer than this."""
    reconnect_backoff: float = 1.0
    error_backoffs: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    """Pauses between retries of a failing API request before a handler sees the error."""


PRIORITY_EPOCH = 1_735_689_600
"""2025-01-01T00:00:00Z: drawn priorities count milliseconds from here (a replica that
crash-loops restarts within a second; its successor must still outrank it)."""
PRIORITY_TIEBREAK_BITS = 12
"""Milliseconds since the epoch take the bits above these: the priority stays below 2**53
(exact in every JSON reader) for 69 years."""


@dataclasses.dataclass(frozen=True)
class PeeringSettings:
    """Several replicas may run; kopf peering keeps exactly one of them active."""

    name: str = "podcache-operator"
    """Name of the KopfPeering/ClusterKopfPeering object the chart creates."""
    standalone: bool = False
    """Run without peering (tests, single-replica development)."""
    priority: int | None = None
    """The highest live priority is the active replica. None (the default) derives one
    from the process's start time: a newer replica outranks an older one, and so the
    record a killed replica leaves behind (kopf keeps it for its 60 s lifetime) never
    pauses its replacement. Random low bits break ties, since kopf pauses *every*
    replica that shares the top priority. Node clocks that disagree only change which
    live replica is active (one always is); a dead replica's record outranks its
    successor only if its node's clock ran ahead by more than the time between them."""

    replicas: int = 1
    """How many operator replicas the Deployment runs (the chart's replicaCount). With one,
    a cluster without kopf's peering CRD is served standalone; with more, the operator
    waits for the CRD rather than let every replica act."""
    watchdog_interval: float = 30.0
    """How often the peering object is checked for, and created again when it went."""

    def effective_priority(self, now: float | None = None) -> int:
        if self.priority is not None:
            return self.priority
        started = max(0, round(((time.time() if now is None else now) - PRIORITY_EPOCH) * 1000))
        tiebreak = random.SystemRandom().getrandbits(PRIORITY_TIEBREAK_BITS)
        return (started << PRIORITY_TIEBREAK_BITS) | tiebreak


@dataclasses.dataclass(frozen=True)
class Settings:
    """All of the operator's settings."""

    sidecar: SidecarSettings = dataclasses.field(default_factory=SidecarSettings)
    webhook: WebhookSettings = dataclasses.field(default_factory=WebhookSettings)
    watch: WatchSettings = dataclasses.field(default_factory=WatchSettings)
    peering: PeeringSettings = dataclasses.field(default_factory=PeeringSettings)
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    """Where kopf serves its liveness probe; None turns it off."""
    post_events: bool = True
    """Post Kubernetes Events for what the operator does (and Warnings for bad specs)."""
    check_secrets: bool = False
    """Check that the Secrets a CacheConfig references exist and hold their key before
    calling it Ready. Off by default: it needs ``get`` on Secrets in every namespace the
    operator serves, which is enough to read every Helm release's values. Without it a
    missing Secret shows where the kubelet reports it (the pod's CreateContainerConfigError)."""
    restart_pods_without_sidecar: bool = False
    """Evict labelled pods that no webhook saw (created while no operator replica answered,
    under ``failurePolicy: Ignore``) so that their controller re-creates them with the
    sidecar (``bare_pod_restarts``). Off by default: it needs ``create`` on
    ``pods/eviction`` cluster-wide, and deleting pods is a decision for their owner."""
    restart_interval: float = 10.0
    """At most one such eviction per CacheConfig this often (seconds)."""
    secret_retry_delay: float = 30.0
    """How soon a CacheConfig waiting for a missing Secret looks again (``check_secrets``)."""
    prefix_conflict_retry_delay: float = 15.0
    """How soon a CacheConfig refused for a key prefix overlapping another's looks again
    (``tenancy``): it turns Ready by itself once the other changes or goes; an edit of its
    own spec takes effect at that retry too."""
    log_level: str = "info"
    """debug, info, warning or error (``--verbose``/``--quiet`` override it)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``PODCACHE_*`` variable; absent ones keep the defaults above."""
        env = _Env(os.environ if environ is None else environ)
        sidecar = SidecarSettings(
            image=env.text("PODCACHE_SIDECAR_IMAGE", SidecarSettings.image),
            image_pull_policy=env.choice(
                "PODCACHE_SIDECAR_IMAGE_PULL_POLICY",
                SidecarSettings.image_pull_policy,
                ("Always", "IfNotPresent", "Never"),
            ),
            native=env.flag("PODCACHE_SIDECAR_NATIVE", SidecarSettings.native),
            metrics_port=env.integer(
                "PODCACHE_SIDECAR_METRICS_PORT",
                SidecarSettings.metrics_port,
                minimum=1,
                maximum=65535,
            ),
            cpu_request=env.text("PODCACHE_SIDECAR_CPU_REQUEST", SidecarSettings.cpu_request),
            memory_request=env.text(
                "PODCACHE_SIDECAR_MEMORY_REQUEST", SidecarSettings.memory_request
            ),
            memory_limit=env.text("PODCACHE_SIDECAR_MEMORY_LIMIT", SidecarSettings.memory_limit),
            run_as_user=env.integer(
                "PODCACHE_SIDECAR_RUN_AS_USER", SidecarSettings.run_as_user, minimum=1
            ),
            image_pull_secrets=env.names(
                "PODCACHE_SIDECAR_IMAGE_PULL_SECRETS", SidecarSettings.image_pull_secrets
            ),
        )
        webhook = WebhookSettings(
            enabled=env.flag("PODCACHE_WEBHOOK_ENABLED", WebhookSettings.enabled),
            addr=env.text("PODCACHE_WEBHOOK_ADDR", WebhookSettings.addr),
            port=env.integer(
                "PODCACHE_WEBHOOK_PORT", WebhookSettings.port, minimum=0, maximum=65535
            ),
            host=env.optional("PODCACHE_WEBHOOK_HOST"),
            cert_file=env.optional("PODCACHE_WEBHOOK_CERT_FILE"),
            key_file=env.optional("PODCACHE_WEBHOOK_KEY_FILE"),
            ca_file=env.optional("PODCACHE_WEBHOOK_CA_FILE"),
            cert_check_interval=env.number(
                "PODCACHE_WEBHOOK_CERT_CHECK_INTERVAL", WebhookSettings.cert_check_interval
            ),
            managed=env.optional("PODCACHE_WEBHOOK_MANAGED", WebhookSettings.managed),
            reject_missing_config=env.flag(
                "PODCACHE_REJECT_MISSING_CONFIG", WebhookSettings.reject_missing_config
            ),
            failure_policy=env.choice(
                "PODCACHE_WEBHOOK_FAILURE_POLICY",
                WebhookSettings.failure_policy,
                ("Ignore", "Fail"),
            ),
        )
        if (webhook.cert_file is None) != (webhook.key_file is None):
            raise SettingsError(
                "PODCACHE_WEBHOOK_CERT_FILE and PODCACHE_WEBHOOK_KEY_FILE go together"
            )
        if webhook.managed and not webhook.host:
            raise SettingsError(
                "PODCACHE_WEBHOOK_MANAGED needs PODCACHE_WEBHOOK_HOST: the name the apiserver"
                " reaches the webhook by, e.g. podcache-webhook.podcache.svc"
            )
        watch = WatchSettings(
            server_timeout=env.integer(
                "PODCACHE_WATCH_SERVER_TIMEOUT", WatchSettings.server_timeout, minimum=1
            ),
            client_timeout=env.number(
                "PODCACHE_WATCH_CLIENT_TIMEOUT", WatchSettings.client_timeout
            ),
            connect_timeout=env.number("PODCACHE_CONNECT_TIMEOUT", WatchSettings.connect_timeout),
            request_timeout=env.number("PODCACHE_REQUEST_TIMEOUT", WatchSettings.request_timeout),
            reconnect_backoff=env.number(
                "PODCACHE_RECONNECT_BACKOFF", WatchSettings.reconnect_backoff
            ),
        )
        peering = PeeringSettings(
            name=env.text("PODCACHE_PEERING_NAME", PeeringSettings.name),
            standalone=env.flag("PODCACHE_STANDALONE", PeeringSettings.standalone),
            priority=env.optional_integer("PODCACHE_PEERING_PRIORITY", minimum=-(2**31)),
            replicas=env.integer("PODCACHE_REPLICAS", PeeringSettings.replicas, minimum=1),
        )
        metrics = MetricsSettings(
            port=env.integer(
                "PODCACHE_OPERATOR_METRICS_PORT", MetricsSettings.port, minimum=0, maximum=65535
            ),
            addr=env.text("PODCACHE_OPERATOR_METRICS_ADDR", MetricsSettings.addr),
        )
        liveness_endpoint = env.optional("PODCACHE_LIVENESS_ENDPOINT", cls.liveness_endpoint)
        _check_metrics_port(metrics, webhook=webhook, liveness_endpoint=liveness_endpoint)
        return cls(
            sidecar=sidecar,
            webhook=webhook,
            watch=watch,
            peering=peering,
            metrics=metrics,
            liveness_endpoint=liveness_endpoint,
            post_events=env.flag("PODCACHE_POST_EVENTS", cls.post_events),
            check_secrets=env.flag("PODCACHE_CHECK_SECRETS", cls.check_secrets),
            restart_pods_without_sidecar=env.flag(
                "PODCACHE_RESTART_PODS_WITHOUT_SIDECAR", cls.restart_pods_without_sidecar
            ),
            restart_interval=env.number("PODCACHE_RESTART_INTERVAL", cls.restart_interval),
            secret_retry_delay=env.number("PODCACHE_SECRET_RETRY_DELAY", cls.secret_retry_delay),
            log_level=env.choice(
                "PODCACHE_LOG_LEVEL", cls.log_level, ("debug", "info", "warning", "error")
            ),
        )


def _check_metrics_port(
    metrics: MetricsSettings, *, webhook: WebhookSettings, liveness_endpoint: str | None
) -> None:
    """Two listeners of one process on one port: the second would fail to start, later."""
    if not metrics.port:
        return
    if webhook.enabled and webhook.port == metrics.port:
        raise SettingsError(
            f"PODCACHE_OPERATOR_METRICS_PORT={metrics.port}: the webhook listens on that port"
            " (PODCACHE_WEBHOOK_PORT); pick another"
        )
    try:
        liveness_port = urlsplit(liveness_endpoint).port if liveness_endpoint else None
    except ValueError:  # kopf reports a malformed liveness URL itself
        liveness_port = None
    if liveness_port == metrics.port:
        raise SettingsError(
            f"PODCACHE_OPERATOR_METRICS_PORT={metrics.port}: the liveness endpoint listens on"
            " that port (PODCACHE_LIVENESS_ENDPOINT); pick another"
        )


class _Env:
    """Typed reads of environment variables; an empty value counts as absent."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value.strip() if value is not None and value.strip() else None

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def optional(self, name: str, default: str | None = None) -> str | None:
        raw = self.environ.get(name)
        if raw is None:
            return default
        return raw.strip() or None  # set-but-empty turns an optional feature off

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated list of Kubernetes object names (DNS subdomains)."""
        raw = self._raw(name)
        if raw is None:
            return default
        names = tuple(item.strip() for item in raw.split(","))
        for item in names:
            if not _DNS_SUBDOMAIN.fullmatch(item) or len(item) > 253:
                raise SettingsError(
                    f"{name}={raw!r}: {item!r} is not a Kubernetes object name"
                    " (lower-case letters, digits, '-' and '.'; names separated by commas)"
                )
        return tuple(dict.fromkeys(names))  # once each, in the order given

    def optional_integer(self, name: str, *, minimum: int = 0) -> int | None:
        if self._raw(name) is None:
            return None
        return self.integer(name, 0, minimum=minimum)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise SettingsError(f"{name}={value!r}: use one of {', '.join(choices)}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r}: expected true or false")

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise SettingsError(f"{name}={value}: out of range ({bounds})")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected a number of seconds") from None
        if not value > 0:
            raise SettingsError(f"{name}={value}: must be greater than zero")
        return value


def as_dict(settings: Settings) -> dict[str, Any]:
    """For logging the effective settings at start."""
    return dataclasses.asdict(settings)
