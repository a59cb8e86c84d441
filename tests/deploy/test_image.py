"""The image, built from the Dockerfile with podman (``scripts/build-image``) and run.

Aspects:
- it builds on a Debian bookworm Python (the Dockerfile's PYTHON_IMAGE, made with
  mmdebstrap since no registry can be pulled from here), from the project's own
  Dockerfile unchanged;
- its configuration: a numeric non-root user (65532, what the chart and the injected
  sidecar expect), ``podcache-sidecar`` as the default command, the ports declared
  (EXPOSE) the default ports of the sidecar and the operator (checked without podman too),
  the OCI labels filled in;
- run read-only with no network, as the chart runs it: both entry points start, and
  the sidecar serves the socket to the client;
- the final stage keeps no wheels, no source tree, no build tools;
- .dockerignore keeps the build context to what the wheel is built from.

Without podman (a laptop) these skip; under CI=true they fail (``tests.availability``).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil

import pytest
import yaml

from tests.availability import unavailable
from tests.deploy import chart
from tests.node import images

# A cold build makes the Debian base (mmdebstrap, ~2 min) before the Dockerfile's.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None or shutil.which("mmdebstrap") is None:
        unavailable("podman and mmdebstrap", "run scripts/install-node-packages as root")
    try:
        return images.build()
    except images.ImageUnavailable as exc:
        unavailable("The image build", str(exc))


def real_ports() -> set[str]:
    """The ports podcache listens on by default: the sidecar's and the operator's own
    defaults (``podcache_operator.settings``), which the chart's defaults must repeat."""
    from podcache import configfile
    from podcache_operator import settings

    defaults = settings.Settings()
    liveness = re.search(r":(\d+)/", defaults.liveness_endpoint or "")
    assert liveness, defaults.liveness_endpoint
    operator = {defaults.webhook.port, int(liveness.group(1)), defaults.metrics.port}
    sidecar = {defaults.sidecar.metrics_port, configfile.DEFAULT_METRICS_PORT}
    values = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    from_chart = {
        values["webhook"]["port"],
        values["operator"]["healthPort"],
        values["operator"]["metricsPort"],
        values["sidecar"]["metricsPort"],
    }
    assert from_chart == operator | sidecar
    return {f"{port}/tcp" for port in operator | sidecar}


def test_expose_names_the_ports_podcache_listens_on() -> None:
    """Without podman too: the Dockerfile's EXPOSE is the set of default ports."""
    exposed = set()
    for line in (chart.ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("EXPOSE "):
            exposed |= {p if "/" in p else f"{p}/tcp" for p in line.split()[1:]}
    assert exposed == real_ports()


def run(image: str, *argv: str) -> str:
    """The command's output in a read-only container with no network, as the chart runs
    it (the socket folder is the one writable place: an emptyDir in a pod)."""
    return images.podman(
        "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/var/run/podcache",
        image, *argv, timeout=120,
    )  # fmt: skip


def test_configuration(image: str) -> None:
    (inspected,) = json.loads(images.podman("image", "inspect", image))
    config = inspected["Config"]
    assert config["User"] == "65532:65532"
    assert config["Cmd"] == ["podcache-sidecar"]
    assert set(config["ExposedPorts"]) == real_ports()
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    labels = config["Labels"]
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == images.project_version()


def test_both_entry_points_start_read_only_without_network(image: str) -> None:
    assert "usage" in run(image, "podcache-sidecar", "--help").lower()
    assert "usage" in run(image, "podcache-operator", "--help").lower()
    assert run(image, "id", "-u").strip() == "65532"


def test_sidecar_serves_the_socket(image: str) -> None:
    script = (
        "podcache-sidecar & pid=$!; "
        "python -c 'import time, podcache\n"
        "c = podcache.Client()\n"
        "for _ in range(100):\n"
        "    try:\n"
        '        c.set("k", b"v"); break\n'
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        'print(c.get("k"))\'; kill $pid; wait $pid'
    )
    assert "b'v'" in run(image, "sh", "-c", script)


def test_final_stage_keeps_no_wheels_sources_or_build_tools(image: str) -> None:
    probe = (
        "for p in /wheels /src /root/.cache/pip; do test -e $p && echo has $p; done; "
        "for t in gcc cc make git; do command -v $t >/dev/null && echo has $t; done; "
        "python -c 'import podcache, podcache_operator; print(podcache.__file__)'"
    )
    out = run(image, "sh", "-c", probe)
    assert "has " not in out, out
    # Installed as a wheel into the interpreter, not run from a copied source tree.
    assert "/dist-packages/podcache/" in out or "/site-packages/podcache/" in out


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

    kept = ("pyproject.toml", "README.md", "sidecar/podcache/config.py",
            "operator/podcache_operator/settings.py")  # fmt: skip
    for path in kept:
        assert not ignored(path), path
    dropped = (".git/config", ".venv/bin/python", "tests/conftest.py",
               "charts/podcache/Chart.yaml", "sidecar/podcache/__pycache__/x.pyc")  # fmt: skip
    for path in dropped:
        assert ignored(path), path
