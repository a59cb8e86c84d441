"""Prometheus metrics of leader election: ``<namespace>_leader_*``, labelled by election.

One ``ElectionMetrics`` per (registry, namespace), shared by the electors on it. The
gauges describe *this process's* elector of an election: run one elector per
election per registry (the sidecar does), or the last writer wins.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class ElectionMetrics:
    """The collectors; electors use ``.is_leader.labels(election=...)`` etc."""

    _cache: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, ElectionMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry, *, namespace: str) -> None:
        common: dict[str, Any] = {
            "namespace": namespace, "subsystem": "leader", "registry": registry,
        }
        self.is_leader = Gauge(
            "is_leader", "1 while this process leads the election, else 0.",
            ["election"], **common,
        )
        self.term = Gauge(
            "term", "Term of the election's current leader as last seen by this process.",
            ["election"], **common,
        )
        self.transitions = Counter(
            "transitions", "Times this process became leader or stopped being leader.",
            ["election"], **common,
        )
        self.renew_failures = Counter(
            "renew_failures", "Lease renewals that failed (backend error or lease lost).",
            ["election"], **common,
        )
        self.step_downs = Counter(
            "step_downs", "Times this process stopped leading, by reason "
            "(resigned, stopped, lost: someone else holds the lease, deadline: renewals "
            "failed until the renew deadline).",
            ["election", "reason"], **common,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry, *, namespace: str) -> ElectionMetrics:
        """The metrics for this registry and namespace, created on first use."""
        per_namespace = cls._cache.setdefault(registry, {})
        metrics = per_namespace.get(namespace)
        if metrics is None:
            metrics = per_namespace[namespace] = cls(registry, namespace=namespace)
        return metrics

    STEP_DOWN_REASONS = ("resigned", "stopped", "lost", "deadline")
    """Every ``reason`` label ``step_downs`` is given (see the elector's ``_step_down``)."""

    def forget(self, election: str) -> None:
        """Remove every series of ``election``: it was left for good, so its label set must
        not linger in every scrape (elections joined and left at run time add up)."""
        for metric in (self.is_leader, self.term, self.transitions, self.renew_failures):
            with contextlib.suppress(KeyError):
                metric.remove(election)
        for reason in self.STEP_DOWN_REASONS:
            with contextlib.suppress(KeyError):
                self.step_downs.remove(election, reason)

    def prepare(self, election: str) -> None:
        """Export zeros for a new election, so dashboards see it before anything happens."""
        self.is_leader.labels(election=election).set(0)
        self.term.labels(election=election)
        self.transitions.labels(election=election)
        self.renew_failures.labels(election=election)
