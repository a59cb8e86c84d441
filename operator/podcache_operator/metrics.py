"""The operator's own Prometheus metrics, on a registry of its own, served on ``/metrics``.

What whoever runs the operator asks of it: is it reconciling, how often does that
fail and why (``reconciliations_total{outcome}``) and how long it takes; how many
CacheConfigs are Ready; and is the webhook injecting sidecars, quickly — the
apiserver waits on it for every labelled pod it creates
(``webhook_admissions_total{outcome}``, ``webhook_duration_seconds``).

Beware:

* Nothing registers on prometheus_client's global default registry: tests run
  several operators in one process, each with its own ``OperatorMetrics``.
* The CacheConfig and pod gauges are read from kopf's indices at scrape time (a
  custom collector), so they show exactly what the operator knows, deletions
  included, with no bookkeeping in the handlers.
* An admission's outcome is read off the AdmissionReview sent back (denied,
  patched, or neither). Only the handler knows that "neither" meant a missing
  CacheConfig let through; kopf's webhook protocol has no way to return that, so
  the handler says it with ``note_admission`` into a context variable that
  ``OperatorMetrics.admission`` sets around each request (kopf awaits the handler
  inside that request, so the variable reaches it).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from collections import Counter as Tally
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from podcache.sidecar import metrics_server
from podcache_operator import conditions, reconciling

NAMESPACE = "podcache_operator"

ReconcileOutcome = Literal["ok", "invalid_spec", "temporary_error"]
RECONCILE_OUTCOMES: tuple[ReconcileOutcome, ...] = ("ok", "invalid_spec", "temporary_error")

AdmissionOutcome = Literal[
    "injected", "unchanged", "missing_config_allowed", "not_injected_allowed", "denied", "malformed"
]
ADMISSION_OUTCOMES: tuple[AdmissionOutcome, ...] = (
    "injected",  # the pod gets the sidecar
    "unchanged",  # admitted as it is: already injected, or not ours to touch
    "missing_config_allowed",  # names a CacheConfig that does not exist; admitted without it
    "not_injected_allowed",  # the sidecar could not be injected (failurePolicy Ignore)
    "denied",  # refused: cannot inject, missing CacheConfig when so configured, or our failure
    "malformed",  # not a usable AdmissionReview; answered 400
)

READINESS = ("true", "false", "unknown")
"""Values of the ``ready`` label: the CacheConfig's Ready condition, lower-cased."""

# A reconciliation is a few API round trips (ms) up to retried timeouts (s).
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# An admission should take well under 10 ms; the apiserver gives up after 10 s by default.
WEBHOOK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

Key = tuple[str, str]
Index = Mapping[Key, Collection[Any]]
"""kopf's ``Index`` as this module reads it: key → the values indexed under it."""


@dataclasses.dataclass
class Admission:
    """One admission request being served; its outcome is settled as it is answered."""

    outcome: AdmissionOutcome = "malformed"
    """Until the request proved to be a usable AdmissionReview."""
    noted: AdmissionOutcome | None = None
    """What the handler said, for what the response alone cannot tell."""

    def answered(self, review: Mapping[str, Any]) -> None:
        """Classify by the AdmissionReview sent back to the apiserver."""
        response = review.get("response") or {}
        if not response.get("allowed"):
            self.outcome = "denied"
        elif self.noted is not None:  # a pod admitted without the sidecar is patched too
            self.outcome = self.noted
        else:
            self.outcome = "injected" if response.get("patch") else "unchanged"


_admission: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "podcache_operator_admission", default=None
)


def note_admission(outcome: AdmissionOutcome) -> None:
    """From inside the webhook handler: what this admission was (see the module docstring)."""
    admission = _admission.get()
    if admission is not None:  # None when the handler is called outside a served request
        admission.noted = outcome


class OperatorMetrics:
    """All of the operator's metrics, on one registry (its own unless one is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.reconciliations = Counter(
            "reconciliations_total",
            "CacheConfig reconciliations, by outcome",
            ["outcome"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "reconcile_duration_seconds",
            "Time to reconcile one CacheConfig (validate, render, apply its objects)",
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=RECONCILE_BUCKETS,
        )
        self.admissions = Counter(
            "webhook_admissions_total",
            "Admission requests answered by the sidecar-injecting webhook, by outcome",
            ["outcome"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.admission_duration = Histogram(
            "webhook_duration_seconds",
            "Time to answer one admission request",
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=WEBHOOK_BUCKETS,
        )
        # Every series from the start: a scrape shows zeros, not gaps, before the first event.
        for reconcile_outcome in RECONCILE_OUTCOMES:
            self.reconciliations.labels(reconcile_outcome)
        for admission_outcome in ADMISSION_OUTCOMES:
            self.admissions.labels(admission_outcome)
        self.indices = _IndexCollector()
        self.registry.register(self.indices)

    def watch_indices(self, *, cacheconfigs: Index, sidecar_pods: Index) -> None:
        """Read the CacheConfig and sidecar-pod gauges from these (kopf's live indices)."""
        self.indices.cacheconfigs, self.indices.sidecar_pods = cacheconfigs, sidecar_pods

    @contextlib.contextmanager
    def reconciliation(self) -> Iterator[None]:
        """Time and count one reconciliation; an exception out of the block says how it ended.

        ``reconciling.InvalidSpec`` is ``invalid_spec``; any other ``Exception`` (a
        missing Secret, a failing API, a bug) is retried by kopf: ``temporary_error``.
        A cancellation (the operator stopping) is not a reconciliation and not counted.
        """
        started = time.perf_counter()
        try:
            yield
        except reconciling.InvalidSpec:
            self._reconciled("invalid_spec", started=started)
            raise
        except Exception:
            self._reconciled("temporary_error", started=started)
            raise
        self._reconciled("ok", started=started)

    def _reconciled(self, outcome: ReconcileOutcome, *, started: float) -> None:
        self.reconcile_duration.observe(time.perf_counter() - started)
        self.reconciliations.labels(outcome).inc()

    @contextlib.contextmanager
    def admission(self) -> Iterator[Admission]:
        """Time and count one admission request; the caller settles the outcome."""
        admission = Admission()
        token = _admission.set(admission)
        started = time.perf_counter()
        try:
            yield admission
        finally:
            _admission.reset(token)
            self.admission_duration.observe(time.perf_counter() - started)
            self.admissions.labels(admission.outcome).inc()


class _IndexCollector:
    """The gauges read from kopf's indices at scrape time (zeros until they are known)."""

    def __init__(self) -> None:
        self.cacheconfigs: Index = {}
        self.sidecar_pods: Index = {}

    def describe(self) -> Iterable[Metric]:
        return self._families(ready={}, pods=0)

    def collect(self) -> Iterable[Metric]:
        ready = Tally(
            readiness(snapshot) for store in self.cacheconfigs.values() for snapshot in store
        )
        pods = sum(len(store) for store in self.sidecar_pods.values())
        return self._families(ready=ready, pods=pods)

    @staticmethod
    def _families(*, ready: Mapping[str, int], pods: int) -> list[Metric]:
        cacheconfigs = GaugeMetricFamily(
            f"{NAMESPACE}_cacheconfigs",
            "CacheConfigs the operator knows, by their Ready condition",
            labels=["ready"],
        )
        for value in READINESS:
            cacheconfigs.add_metric([value], ready.get(value, 0))
        sidecar_pods = GaugeMetricFamily(
            f"{NAMESPACE}_sidecar_pods",
            "Labelled pods running with the injected podcache sidecar",
            value=pods,
        )
        return [cacheconfigs, sidecar_pods]


def readiness(cacheconfig: Mapping[str, Any]) -> str:
    """The ``ready`` label of one CacheConfig: its Ready condition, lower-cased."""
    ready = conditions.find((cacheconfig.get("status") or {}).get("conditions"), conditions.READY)
    status = str((ready or {}).get("status", "Unknown")).lower()
    return status if status in READINESS else "unknown"


def endpoint(metrics: OperatorMetrics, *, addr: str) -> metrics_server.MetricsServer:
    """``/metrics`` over HTTP for ``metrics``: the sidecar's metrics server, reused.

    ``start(port)`` listens (port 0: not at all; ``OSError`` when it cannot bind),
    ``stop()`` closes it; it also answers ``/healthz``.
    """
    return metrics_server.MetricsServer(metrics.registry, host=addr)
