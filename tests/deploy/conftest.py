"""Fixtures of the deploy tests: one render per value set per session (rendering is pure)."""

from __future__ import annotations

import pytest

from tests.deploy import chart


@pytest.fixture(scope="session")
def releases() -> dict[str, chart.Release]:
    """Every VALUE_SETS configuration, rendered once."""
    return {name: chart.render(values) for name, values in chart.VALUE_SETS.items()}


@pytest.fixture(scope="session")
def default_release(releases: dict[str, chart.Release]) -> chart.Release:
    return releases["default"]
