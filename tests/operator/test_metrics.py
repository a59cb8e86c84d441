"""The operator's own Prometheus metrics: settings, the registry, and ``/metrics`` served live.

Aspects: ``PODCACHE_OPERATOR_METRICS_PORT`` (default 9091, 0 = off) and its errors,
which name the variable, including a clash with the webhook or liveness port; the
metrics live on their own registry, never the global one, with every series present
at zero from the start; reconciliations are counted by outcome (ok, invalid_spec,
temporary_error; a cancellation is not counted) and timed; the CacheConfig gauge by
readiness and the sidecar-pod gauge follow kopf's indices at scrape time; an
admission's outcome is read off the response, with the handler's word for a missing
CacheConfig; and, with the operator running against KMock, scraping ``/metrics``
shows the counters move after a valid and an invalid CacheConfig, a running sidecar
pod, and AdmissionReviews of every outcome; a taken port fails the startup handler
permanently with an error naming the variable, port 0 serves nothing, and the listener
closes when the operator stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from podcache_operator import handlers, main, metrics, reconciling
from podcache_operator import settings as podcache_settings
from tests.operator import emulator, samples
from tests.operator.conftest import (
    DEADLINE,
    NAMESPACE,
    WEBHOOKS,
    ClusterEmulator,
    eventually,
    get,
    webhook_ssl_context,
)
from tests.operator.test_operator import create, ready
from tests.operator.test_webhook import patched, post, review

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Scrape = Callable[[], Awaitable[Samples]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"podcache_operator_{name}", frozenset(labels.items()))]


class TestSettings:
    def test_default_port_and_off(self) -> None:
        assert podcache_settings.Settings.from_env({}).metrics.port == 9091
        config = podcache_settings.Settings.from_env(
            {"PODCACHE_OPERATOR_METRICS_PORT": "0", "PODCACHE_OPERATOR_METRICS_ADDR": "127.0.0.1"}
        )
        assert config.metrics == podcache_settings.MetricsSettings(port=0, addr="127.0.0.1")

    @pytest.mark.parametrize(
        ("env", "words"),
        [
            ({"PODCACHE_OPERATOR_METRICS_PORT": "http"}, "PODCACHE_OPERATOR_METRICS_PORT='http'"),
            (
                {"PODCACHE_OPERATOR_METRICS_PORT": "70000"},
                "PODCACHE_OPERATOR_METRICS_PORT=70000: out of range (0 to 65535)",
            ),
            (
                {"PODCACHE_OPERATOR_METRICS_PORT": "-1"},
                "PODCACHE_OPERATOR_METRICS_PORT=-1: out of range",
            ),
            (
                {"PODCACHE_OPERATOR_METRICS_PORT": "9443"},
                "PODCACHE_OPERATOR_METRICS_PORT=9443: the webhook listens on that port",
            ),
            (
                {
                    "PODCACHE_OPERATOR_METRICS_PORT": "8181",
                    "PODCACHE_LIVENESS_ENDPOINT": "http://0.0.0.0:8181/healthz",
                },
                "PODCACHE_OPERATOR_METRICS_PORT=8181: the liveness endpoint listens",
            ),
        ],
    )
    def test_errors_name_the_variable(self, env: dict[str, str], words: str) -> None:
        with pytest.raises(podcache_settings.SettingsError) as raised:
            podcache_settings.Settings.from_env(env)
        assert words in str(raised.value)

    def test_the_webhook_port_is_free_when_the_webhook_is_off(self) -> None:
        config = podcache_settings.Settings.from_env(
            {"PODCACHE_OPERATOR_METRICS_PORT": "9443", "PODCACHE_WEBHOOK_ENABLED": "false"}
        )
        assert config.metrics.port == 9443


class TestRegistry:
    def test_own_registry_with_every_series_at_zero(self) -> None:
        first, second = metrics.OperatorMetrics(), metrics.OperatorMetrics()  # no name clash
        assert first.registry is not second.registry
        assert first.registry is not prometheus_client.REGISTRY
        assert "podcache_operator" not in prometheus_client.generate_latest().decode()
        samples = parse(prometheus_client.generate_latest(first.registry).decode())
        for outcome in metrics.RECONCILE_OUTCOMES:
            assert value(samples, "reconciliations_total", outcome=outcome) == 0
        for outcome in metrics.ADMISSION_OUTCOMES:
            assert value(samples, "webhook_admissions_total", outcome=outcome) == 0
        for readiness in metrics.READINESS:
            assert value(samples, "cacheconfigs", ready=readiness) == 0
        assert value(samples, "sidecar_pods") == 0
        assert value(samples, "reconcile_duration_seconds_count") == 0
        assert value(samples, "webhook_duration_seconds_count") == 0


def scrape_now(operator_metrics: metrics.OperatorMetrics) -> Samples:
    return parse(prometheus_client.generate_latest(operator_metrics.registry).decode())


class TestReconciliation:
    @staticmethod
    def failure(kind: type[reconciling.ReconcileFailure]) -> reconciling.ReconcileFailure:
        if kind is reconciling.Blocked:
            return reconciling.Blocked("no Secret", reason="SecretNotFound", status={}, delay=1)
        return kind("bad spec", reason="InvalidSpec", status={})

    def test_outcomes_by_exception(self) -> None:
        operator_metrics = metrics.OperatorMetrics()
        with operator_metrics.reconciliation():
            pass
        for error in (
            self.failure(reconciling.InvalidSpec),
            self.failure(reconciling.Blocked),
            RuntimeError("a bug"),
        ):
            with pytest.raises(type(error)), operator_metrics.reconciliation():
                raise error
        samples = scrape_now(operator_metrics)
        assert value(samples, "reconciliations_total", outcome="ok") == 1
        assert value(samples, "reconciliations_total", outcome="invalid_spec") == 1
        assert value(samples, "reconciliations_total", outcome="temporary_error") == 2
        assert value(samples, "reconcile_duration_seconds_count") == 4

    def test_a_cancelled_reconciliation_is_not_counted(self) -> None:
        operator_metrics = metrics.OperatorMetrics()
        with pytest.raises(asyncio.CancelledError), operator_metrics.reconciliation():
            raise asyncio.CancelledError
        samples = scrape_now(operator_metrics)
        assert (
            sum(
                value(samples, "reconciliations_total", outcome=outcome)
                for outcome in metrics.RECONCILE_OUTCOMES
            )
            == 0
        )
        assert value(samples, "reconcile_duration_seconds_count") == 0


def snapshot(ready: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "x"}}
    if ready is not None:
        body["status"] = {"conditions": [{"type": "Ready", "status": ready}]}
    return body


def test_gauges_follow_the_indices_at_scrape_time() -> None:
    operator_metrics = metrics.OperatorMetrics()
    cacheconfigs: dict[tuple[str, str], list[dict[str, Any]]] = {
        ("shop", "a"): [snapshot("True")],
        ("shop", "b"): [snapshot("True")],
        ("shop", "c"): [snapshot("False")],
        ("shop", "d"): [snapshot(None)],
    }
    pods: dict[tuple[str, str], list[str]] = {("shop", "a"): ["a-0", "a-1"], ("shop", "b"): ["b-0"]}
    operator_metrics.watch_indices(cacheconfigs=cacheconfigs, sidecar_pods=pods)
    samples = scrape_now(operator_metrics)
    assert [value(samples, "cacheconfigs", ready=r) for r in ("true", "false", "unknown")] == [
        2,
        1,
        1,
    ]
    assert value(samples, "sidecar_pods") == 3
    del cacheconfigs[("shop", "a")], pods[("shop", "a")]  # kopf's indices are live views
    samples = scrape_now(operator_metrics)
    assert value(samples, "cacheconfigs", ready="true") == 1
    assert value(samples, "sidecar_pods") == 1


class TestAdmission:
    @pytest.mark.parametrize(
        ("response", "noted", "outcome"),
        [
            ({"allowed": True, "patch": "W10=", "patchType": "JSONPatch"}, None, "injected"),
            ({"allowed": True}, None, "unchanged"),
            (
                {"allowed": True, "warnings": ["..."]},
                "missing_config_allowed",
                "missing_config_allowed",
            ),
            ({"allowed": False, "status": {"code": 400}}, "missing_config_allowed", "denied"),
            ({"allowed": False, "status": {"code": 422}}, None, "denied"),
        ],
    )
    def test_outcome_from_the_response(
        self,
        response: dict[str, Any],
        noted: metrics.AdmissionOutcome | None,
        outcome: metrics.AdmissionOutcome,
    ) -> None:
        operator_metrics = metrics.OperatorMetrics()
        with operator_metrics.admission() as admission:
            if noted is not None:
                metrics.note_admission(noted)
            admission.answered({"response": response})
        assert admission.outcome == outcome
        samples = scrape_now(operator_metrics)
        assert value(samples, "webhook_admissions_total", outcome=outcome) == 1
        assert value(samples, "webhook_duration_seconds_count") == 1

    def test_unanswered_is_malformed_and_notes_outside_a_request_are_dropped(self) -> None:
        metrics.note_admission("missing_config_allowed")  # no request in flight: no effect
        operator_metrics = metrics.OperatorMetrics()
        with operator_metrics.admission() as admission:
            pass
        assert admission.outcome == "malformed"
        assert admission.noted is None


# --- the operator running against KMock, /metrics scraped over HTTP ------------------------


@pytest.fixture
def operator_settings(operator_settings: podcache_settings.Settings) -> podcache_settings.Settings:
    """The usual test settings with metrics on a free port."""
    return dataclasses.replace(
        operator_settings,
        metrics=podcache_settings.MetricsSettings(addr="127.0.0.1", port=free_port()),
    )


@pytest.fixture
async def scrape(operator: podcache_settings.Settings) -> AsyncIterator[Scrape]:
    url = f"http://127.0.0.1:{operator.metrics.port}/metrics"
    async with aiohttp.ClientSession() as session:

        async def scrape() -> Samples:
            async with session.get(url) as response:
                assert response.status == 200
                assert response.content_type == "text/plain"
                return parse(await response.text())

        yield scrape


async def scraped(scrape: Scrape, check: Callable[[Samples], bool], *, what: str) -> Samples:
    """Scrape until ``check`` holds; fail after the usual deadline."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        samples = await scrape()
        if check(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_reconciliations_and_gauges_move(cluster: ClusterEmulator, scrape: Scrape) -> None:
    before = await scrape()
    assert value(before, "reconciliations_total", outcome="ok") == 0
    assert value(before, "cacheconfigs", ready="true") == 0

    await create(cluster, "shop", samples.MEMORY_SPEC)
    await eventually(lambda: ready(cluster, "shop"), what="Ready")
    after_valid = await scraped(
        scrape,
        lambda s: value(s, "cacheconfigs", ready="true") == 1,
        what="cacheconfigs{ready=true} == 1",
    )
    assert value(after_valid, "reconciliations_total", outcome="ok") >= 1
    assert value(after_valid, "reconcile_duration_seconds_count") >= 1

    bad = samples.spec(samples.MEMORY_SPEC, locks={"defaultTTL": "10m", "maxTTL": "1m"})
    await create(cluster, "broken", bad)
    after_invalid = await scraped(
        scrape,
        lambda s: value(s, "cacheconfigs", ready="false") == 1,
        what="cacheconfigs{ready=false} == 1",
    )
    # A bad spec is reported once, not retried in a loop.
    assert value(after_invalid, "reconciliations_total", outcome="invalid_spec") == 1
    assert value(after_invalid, "reconciliations_total", outcome="temporary_error") == 0

    pod = samples.pod(name="app-0")
    pod["metadata"]["annotations"] = {"podcache.io/injected": "native"}
    pod["status"] = {"phase": "Running"}
    response = await cluster.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod)
    assert response.status < 300
    await scraped(scrape, lambda s: value(s, "sidecar_pods") == 1, what="sidecar_pods == 1")


@pytest.fixture
async def webhook(cluster: ClusterEmulator, operator: Any) -> str:
    """The webhook URL kopf wrote into the managed configuration."""
    config = await eventually(
        lambda: (get(cluster, WEBHOOKS, "podcache.io", None) or {}).get("webhooks"),
        what="the managed MutatingWebhookConfiguration",
    )
    return str(config[0]["clientConfig"]["url"])


async def test_admissions_counted_by_outcome(
    cluster: ClusterEmulator, certificates: dict[str, Path], webhook: str, scrape: Scrape
) -> None:
    await create(cluster, "shop", samples.MEMORY_SPEC)
    await eventually(lambda: ready(cluster, "shop"), what="Ready")
    connector = aiohttp.TCPConnector(ssl=webhook_ssl_context(certificates))
    async with aiohttp.ClientSession(connector=connector) as client:
        pod = samples.pod()
        answer = await post(client, webhook, review(pod))
        assert "patch" in answer
        injected = patched(pod, answer)
        assert "patch" not in await post(client, webhook, review(injected))
        assert "warnings" in await post(client, webhook, review(samples.pod(config="nope")))
        clashing = samples.pod()
        clashing["spec"]["volumes"] = [{"name": "podcache-socket", "emptyDir": {}}]
        # failurePolicy Ignore (the default): admitted as it is, with a warning.
        answer = await post(client, webhook, review(clashing))
        assert answer["allowed"] is True
        annotations = patched(clashing, answer)["metadata"]["annotations"]
        assert "podcache.io/not-injected" in annotations
        assert "podcache-socket" in answer["warnings"][0]
        async with client.post(webhook, data=b"{not json") as response:
            assert response.status == 400
    # Counted before each answer went out: no waiting needed.
    counts = await scrape()
    for outcome in metrics.ADMISSION_OUTCOMES:
        expected = 0 if outcome == "denied" else 1  # nothing is denied under Ignore
        assert value(counts, "webhook_admissions_total", outcome=outcome) == expected, outcome
    assert value(counts, "webhook_duration_seconds_count") == 5
    assert value(counts, "webhook_duration_seconds_bucket", le="10.0") == 5


# --- the endpoint's lifecycle -------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_a_taken_port_fails_the_startup_naming_the_variable(taken_port: int) -> None:
    """A permanent error in a startup handler stops kopf before it serves anything."""
    config = podcache_settings.Settings(
        metrics=podcache_settings.MetricsSettings(addr="127.0.0.1", port=taken_port)
    )
    memo = kopf.Memo(config=config, state=handlers.RuntimeState())
    with pytest.raises(kopf.PermanentError) as raised:
        await main.serve_metrics(memo=memo, cacheconfigs={}, sidecar_pods={})
    assert f"cannot serve metrics on 127.0.0.1:{taken_port} (PODCACHE_OPERATOR_METRICS_PORT)" in (
        str(raised.value)
    )
    assert "metrics_endpoint" not in memo
    await main.stop_metrics(memo=memo)  # nothing to stop: no error


async def test_port_zero_serves_nothing() -> None:
    memo = kopf.Memo(
        config=podcache_settings.Settings(metrics=podcache_settings.MetricsSettings(port=0)),
        state=handlers.RuntimeState(),
    )
    await main.serve_metrics(memo=memo, cacheconfigs={}, sidecar_pods={})
    assert memo["metrics_endpoint"].port == 0
    await main.stop_metrics(memo=memo)


async def test_the_listener_closes_with_the_operator(
    cluster: ClusterEmulator, operator_settings: podcache_settings.Settings
) -> None:
    port = operator_settings.metrics.port
    runner = emulator.OperatorThread(server=str(cluster.url).rstrip("/"), config=operator_settings)
    await runner.start(within=DEADLINE)
    try:
        # Stopping kopf mid-discovery leaves its requests retrying for seconds: let it settle.
        await eventually(lambda: get(cluster, WEBHOOKS, "podcache.io", None), what="discovery")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
    finally:
        await runner.stop(within=DEADLINE)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
