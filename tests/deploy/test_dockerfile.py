"""The Dockerfile and .dockerignore, checked statically (no Docker engine to build with).

Aspects:
- multi-stage: a builder that makes wheels, a final stage on the same slim Python 3.11;
- the final stage installs our wheel from the builder without keeping wheels, pip
  caches or build tools, and copies no source tree;
- it runs as a numeric non-root user, offers both entry points, carries OCI labels;
- .dockerignore keeps the context to what the wheel is built from;
- every path the builder COPYs exists in the repository.
"""

from __future__ import annotations

import fnmatch
import re

import pytest

from tests.deploy import chart, dockerfile

DOCKERFILE = chart.ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def parsed() -> dockerfile.Dockerfile:
    return dockerfile.parse(DOCKERFILE)


def test_two_stages_on_slim_python_311(parsed: dockerfile.Dockerfile) -> None:
    assert [stage.name for stage in parsed.stages] == ["builder", "final"]
    base = next(arg for arg in parsed.args if arg.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    assert all(stage.image == "${PYTHON_IMAGE}" for stage in parsed.stages)


def test_builder_makes_wheels(parsed: dockerfile.Dockerfile) -> None:
    builder = parsed.stages[0]
    run = " ".join(builder.all("RUN"))
    assert "pip wheel --no-deps --wheel-dir /wheels ." in run
    for copied in builder.all("COPY"):
        *sources, _ = copied.split()
        for source in sources:
            assert (chart.ROOT / source).exists(), f"COPY {source}: no such path"


def test_final_stage_installs_the_wheel_and_keeps_nothing_else(
    parsed: dockerfile.Dockerfile,
) -> None:
    final = parsed.stages[1]
    assert final.all("COPY") == []
    assert final.all("ADD") == []
    run = " ".join(final.all("RUN"))
    assert "--mount=type=bind,from=builder,source=/wheels" in run
    assert "pip install --no-index --find-links=/wheels podcache" in run
    assert "pip uninstall --yes pip" in run
    assert not re.search(r"apt-get|apk|gcc|build-essential", run)
    env = " ".join(final.all("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_runs_as_numeric_non_root_with_both_entry_points(parsed: dockerfile.Dockerfile) -> None:
    final = parsed.stages[1]
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(uid) == 65532  # what the chart's runAsUser and the operator's sidecar expect
    run = " ".join(final.all("RUN"))
    assert "podcache-sidecar --help" in run
    assert "podcache-operator --help" in run
    assert final.all("CMD") == ['["podcache-sidecar"]']


def test_oci_labels(parsed: dockerfile.Dockerfile) -> None:
    labels = parsed.stages[1].labels()
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_dockerignore_keeps_context_to_the_build_inputs() -> None:
    patterns = [
        line.strip()
        for line in (chart.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/").removeprefix("**/")
            if (
                fnmatch.fnmatch(path, bare)
                or fnmatch.fnmatch(path.split("/")[-1], bare)
                or path.startswith(bare + "/")
            ):
                result = not negate
        return result

    for kept in (
        "pyproject.toml",
        "README.md",
        "sidecar/podcache/config.py",
        "operator/podcache_operator/settings.py",
    ):
        assert not ignored(kept), kept
    for dropped in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "charts/podcache/Chart.yaml",
        "sidecar/podcache/__pycache__/x.pyc",
    ):
        assert ignored(dropped), dropped
