"""``podcache-operator``: run kopf with podcache's handlers and settings.

``main()`` parses a small CLI, reads ``Settings`` from the environment and runs
kopf in this process (no ``kopf run`` subprocess, no module path to remember).
The one ``@kopf.on.startup()`` handler, ``configure``, copies our settings into
kopf's: where kopf keeps its bookkeeping (``status.kopf``, see ``bookkeeping``),
peering, watch and request timeouts, event posting, and the admission webhook server.
Tests run ``kopf.operator(...)`` with a ``memo`` holding their own ``Settings``;
``configure`` uses those instead of the environment.

``serve_metrics`` (registered after ``configure``, so kopf runs it after) serves the
operator's Prometheus metrics for as long as the operator runs; ``stop_metrics``
closes that listener when kopf cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from podcache import tasks
from podcache_operator import (
    bare_pod_restarts,
    bookkeeping,
    cacheconfig_mirror,
    handlers,
    kubeapi,
    metrics,
    prerequisites,
    rendering,
    webhook,
    webhook_serving,
)
from podcache_operator import settings as podcache_settings


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Apply podcache's settings to kopf, once, before anything is watched."""
    config: podcache_settings.Settings | None = memo.get("config")
    if config is None:  # started some other way, e.g. `kopf run -m podcache_operator.main`
        config = podcache_settings.Settings.from_env()
        memo["config"] = config
    state = memo["state"] = handlers.RuntimeState()
    memo["kopf_settings"] = settings  # resource handlers are not given kopf's settings

    bookkeeping.configure(settings)

    settings.watching.server_timeout = config.watch.server_timeout
    settings.watching.client_timeout = config.watch.client_timeout
    settings.watching.connect_timeout = config.watch.connect_timeout
    settings.watching.reconnect_backoff = config.watch.reconnect_backoff
    settings.networking.request_timeout = config.watch.request_timeout
    settings.networking.connect_timeout = config.watch.connect_timeout
    settings.networking.error_backoffs = config.watch.error_backoffs

    # Server-side filtering: only labelled pods and our own objects cross the wire.
    settings.watching.label_selectors[handlers.PODS] = rendering.CONFIG_LABEL
    owned = ",".join(f"{key}={value}" for key, value in handlers.OWNED.items())
    settings.watching.label_selectors[handlers.CONFIGMAPS] = owned
    settings.watching.label_selectors[handlers.SERVICES] = owned
    # One CRD matters to our handlers (ServiceMonitor's); CRDs are big (schemas of every
    # operator in the cluster), so the watch names it. Kopf's own observer shares that
    # watch: CRDs installed after the start are not rediscovered (``prerequisites``
    # waits for ours before kopf scans).
    settings.watching.field_selectors[handlers.CRDS] = f"metadata.name={kubeapi.SERVICEMONITOR_CRD}"

    settings.peering.name = config.peering.name
    settings.peering.priority = config.peering.effective_priority()
    settings.peering.standalone = settings.peering.standalone or config.peering.standalone
    # As `kopf run --peering NAME`: wait for the peering object rather than start serving
    # beside a replica that may already be active.
    settings.peering.mandatory = not settings.peering.standalone

    settings.posting.enabled = config.post_events
    settings.posting.reporting_component = "podcache-operator"

    off_reason = prerequisites.webhook_off_reason(config.webhook)
    if off_reason is not None:
        logger.warning("Admission webhook: %s", off_reason)
    serving = config.webhook.enabled and off_reason is None
    readiness = memo["readiness"] = webhook_serving.Readiness(webhook=serving)
    if serving:
        server = webhook.build_server(config.webhook, metrics=state.metrics)
        server.on_listening = readiness.set_listening
        server.file_check_interval = config.webhook.cert_check_interval
        settings.admission.server = server
        settings.admission.managed = config.webhook.managed
    else:
        settings.admission.server = _no_webhooks
        settings.admission.managed = None
    if config.restart_pods_without_sidecar:
        state.bare_pod_restarts = bare_pod_restarts.BarePodRestarts(
            interval=config.restart_interval,
            evict=lambda namespace, name: kubeapi.evict(
                namespace, name, settings=settings, logger=logger
            ),
            webhook_ready=lambda: readiness.problem() is None,
        )
    logger.info("podcache-operator configured: %s", podcache_settings.as_dict(config))


@kopf.on.startup()
async def check_prerequisites(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Wait for the CacheConfig CRD and make peering possible, saying so at WARNING."""
    config: podcache_settings.Settings = memo["config"]
    await kubeapi.authenticate_early(settings=settings, memo=memo)
    await prerequisites.wait_until_served(
        kubeapi.CACHECONFIGS,
        what=f"the CRD {prerequisites.CACHECONFIG_CRD}",
        fix=prerequisites.INSTALL_CRDS,
        settings=settings,
        logger=logger,
    )
    if settings.peering.standalone:
        return
    namespaces: Sequence[str] = memo.get("namespaces", ())
    clusterwide = bool(settings.peering.clusterwide)
    peer = await prerequisites.prepare_peering(
        config.peering,
        name=settings.peering.name,
        clusterwide=clusterwide,
        namespaces=namespaces,
        settings=settings,
        logger=logger,
    )
    if not peer:
        settings.peering.standalone = True
        settings.peering.mandatory = False
        return
    memo["peering_task"] = asyncio.create_task(
        prerequisites.watch_peering(
            settings.peering.name,
            clusterwide=clusterwide,
            namespaces=namespaces,
            interval=config.peering.watchdog_interval,
            settings=settings,
            logger=logger,
        ),
        name="peering object watchdog",
    )


@kopf.on.cleanup()
async def stop_peering_watchdog(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("peering_task")
    if task is not None:
        await tasks.cancel_and_wait(task)


@kopf.on.startup()
async def serve_metrics(memo: kopf.Memo, **kwargs: Any) -> None:
    """Serve ``/metrics`` on ``PODCACHE_OPERATOR_METRICS_PORT`` (0: not at all)."""
    config: podcache_settings.Settings = memo["config"]
    state: handlers.RuntimeState = memo["state"]
    # kopf hands every handler its indices, named after the index functions.
    state.metrics.watch_indices(
        cacheconfigs=kwargs["cacheconfigs"], sidecar_pods=kwargs["sidecar_pods"]
    )
    endpoint = metrics.endpoint(state.metrics, addr=config.metrics.addr)
    readiness = memo.get("readiness")  # set by ``configure``; absent when run on its own
    if readiness is not None:
        endpoint.readiness = readiness.problem  # /readyz: answers admissions
    try:
        await endpoint.start(config.metrics.port)
    except OSError as exc:  # a port taken is a deployment error: retrying will not free it
        raise kopf.PermanentError(
            f"cannot serve metrics on {config.metrics.addr}:{config.metrics.port}"
            f" (PODCACHE_OPERATOR_METRICS_PORT): {exc}"
        ) from exc
    memo["metrics_endpoint"] = endpoint  # the server logs where it listens


@kopf.on.cleanup()
async def stop_bare_pod_restarts(memo: kopf.Memo, **_: Any) -> None:
    restarts = memo["state"].bare_pod_restarts
    if restarts is not None:
        await restarts.stop()


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    endpoint = memo.get("metrics_endpoint")
    if endpoint is not None:
        await endpoint.stop()


@kopf.on.startup()
async def mirror_cacheconfigs(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Start the webhook's CacheConfig mirror (kept current on standby replicas too)."""
    if not memo.get("clusterwide", True):
        logger.info("Namespaced operator: the webhook reads each CacheConfig from the API")
        return
    mirror = cacheconfig_mirror.CacheConfigMirror()
    memo["state"].cacheconfig_mirror = mirror
    memo["mirror_task"] = asyncio.create_task(mirror.run(settings), name="cacheconfig mirror")


@kopf.on.cleanup()
async def stop_mirror(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("mirror_task")
    if task is not None:
        await tasks.cancel_and_wait(task)


async def _no_webhooks(fn: kopf.WebhookFn) -> Any:
    """A webhook 'server' that never serves: the webhook is turned off."""
    await asyncio.Event().wait()
    yield  # pragma: no cover - never reached; makes this an async generator


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="podcache-operator",
        description="Runs the podcache operator: renders CacheConfigs into sidecar config,"
        " Services and ServiceMonitors, and injects the sidecar into labelled pods."
        " Settings come from PODCACHE_* environment variables"
        " (see podcache_operator.settings).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="serve only this namespace (repeatable; globs like 'team-*' allowed)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="serve every namespace (the default)"
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz"
        " (default: $PODCACHE_LIVENESS_ENDPOINT)",
    )
    parser.add_argument(
        "--standalone", action="store_true", help="run without peering (one replica only)"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {podcache_settings.VERSION}"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = podcache_settings.Settings.from_env()
    except podcache_settings.SettingsError as exc:
        print(f"podcache-operator: {exc}", file=sys.stderr)
        return 2
    level = "debug" if args.verbose else "warning" if args.quiet else config.log_level
    kopf.configure(verbose=level == "debug", quiet=level in ("warning", "error"))
    logging.getLogger().setLevel(level.upper())
    kopf.run(
        loop=_new_loop(),
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True if args.standalone else None,
        liveness_endpoint=args.liveness or config.liveness_endpoint,
        memo=kopf.Memo(config=config, clusterwide=not args.namespace, namespaces=args.namespace),
    )
    return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, a bit slower
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


if __name__ == "__main__":
    sys.exit(main())
