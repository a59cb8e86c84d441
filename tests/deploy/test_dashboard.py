"""The Grafana dashboard asks for metrics the sidecar really exports.

Aspects:
- every metric a panel queries exists, by its exact name, in the registries of the
  cache, lock and election metrics (namespace ``lab``, the dashboard's default prefix);
- the labels panels group by are labels of those metrics (or Prometheus target labels);
- the panels the issue asks for are there: hit ratio, request rate by operation and
  status, latency quantiles, items, lock contention, current leaders.
"""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client import CollectorRegistry

from tests.deploy import chart

DASHBOARD = chart.CHART_DIR / "files" / "dashboards" / "podcache.json"
TARGET_LABELS = {"namespace", "pod", "le"}  # added by the scrape, or the histogram's own


def _exported() -> dict[str, set[str]]:
    """sample name → label names, from the real metric classes on one registry."""
    cache_metrics = pytest.importorskip("podcache.metrics")
    lock_metrics = pytest.importorskip("podcache.locks.metrics")
    election_metrics = pytest.importorskip("podcache.election.metrics")
    registry = CollectorRegistry()
    cache_metrics.CacheMetrics(registry, namespace="lab")
    lock_metrics.LockMetrics.of(registry, namespace="lab")
    election_metrics.ElectionMetrics.of(registry, namespace="lab").prepare("scheduler")
    exported: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_queried_metric_is_exported() -> None:
    exported = _exported()
    queried = {
        f"lab_{name}"
        for expr in _expressions()
        for name in re.findall(r"\$\{prefix\}_([a-z_]+)", expr)
    }
    assert queried, "the dashboard queries nothing"
    assert sorted(queried - set(exported)) == []


def test_grouping_labels_exist() -> None:
    exported = _exported()
    for expr in _expressions():
        metrics = {f"lab_{n}" for n in re.findall(r"\$\{prefix\}_([a-z_]+)", expr)}
        labels = set().union(*(exported[m] for m in metrics)) | TARGET_LABELS
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in group.split(",")):
                assert label in labels, f"{label!r} in {expr}"


def test_requested_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for title in (
        "Hit ratio",
        "Requests by operation and status",
        "Operation latency (p50, p95, p99)",
        "Items",
        "Lock acquisitions by outcome",
        "Lock contention wait (p50, p95)",
        "Current leaders",
    ):
        assert title in titles
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["prefix"]["query"] == "lab"
    assert variables["datasource"]["query"] == "prometheus"
