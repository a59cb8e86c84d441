"""The wheel, installed where nothing else is: what the image does, without Docker.

Aspects:
- the project builds into one wheel from the same inputs the Dockerfile copies
  (pyproject.toml, README.md, sidecar/, operator/), holding both packages and the
  three console scripts;
- the Dockerfile's steps without Docker: dependencies turned into wheels, a fresh
  virtualenv (no system site-packages) installing podcache from those wheels only,
  then pip removed; ``podcache-sidecar --help`` and ``podcache-operator --help`` work;
- the installed sidecar starts with its embedded default config and answers
  ``GET /readyz`` on its Unix socket, then stops cleanly on SIGTERM.

Slow (a virtualenv and a dependency install): marked ``slow``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

from tests.deploy import chart

pytestmark = pytest.mark.slow

BUILD_INPUTS = ("pyproject.toml", "README.md", "sidecar", "operator")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=2)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(self._path)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the build inputs (no build/ in the checkout), with
    the build backend pyproject.toml pins (an isolated build env from PyPI)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        origin = chart.ROOT / name
        if origin.is_dir():
            shutil.copytree(
                origin,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.sock"),
            )
        else:
            shutil.copy2(origin, source / name)
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        timeout=180,
    )
    (built,) = out.glob("podcache-*.whl")
    return built


def _pip(python: Path | str, *args: str, timeout: float = 600) -> None:
    subprocess.run(
        [str(python), "-m", "pip", *args, "--disable-pip-version-check", "--quiet"],
        check=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Dockerfile's steps, without Docker; yields the fresh virtualenv's bin/.

    builder: the dependencies become wheels next to ours (``pip wheel --prefer-binary``);
    final: a virtualenv without system site-packages installs podcache from those
    wheels alone (``--no-index``), then loses pip and setuptools, as the image does, so
    nothing may need them at run time.
    """
    _pip(sys.executable, "wheel", "--prefer-binary", "--wheel-dir", str(wheel.parent), str(wheel))
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _pip(python, "install", "--no-index", f"--find-links={wheel.parent}", "podcache")
    _pip(python, "uninstall", "--yes", "pip", "setuptools", "wheel")
    return env_dir / "bin"


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "podcache/py.typed" in names
    assert "podcache_operator/py.typed" in names
    assert not any(name.startswith(("tests/", "charts/")) for name in names)
    assert "podcache-sidecar = podcache.sidecar.launcher:main" in scripts
    assert "podcache-operator = podcache_operator.main:main" in scripts
    assert "podcache = podcache.cli:main" in scripts


def test_venv_is_isolated_and_has_no_installer(installed: Path) -> None:
    result = subprocess.run(
        [str(installed / "python"), "-c", "import sys; print(sys.prefix, sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    prefix, _ = result.stdout.split()
    assert Path(prefix) == installed.parent
    probe = subprocess.run(
        [str(installed / "python"), "-c", "import helm_python"], capture_output=True, timeout=30
    )
    assert probe.returncode != 0  # a test-only package of .venv is not visible here
    assert not (installed / "pip").exists()


@pytest.mark.parametrize("command", ["podcache-sidecar", "podcache-operator"])
def test_entry_point_help(installed: Path, command: str) -> None:
    result = subprocess.run(
        [str(installed / command), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_sidecar_starts_to_socket_ready(installed: Path, tmp_path: Path) -> None:
    socket_path = tmp_path / "cache.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODCACHE_")}
    process = subprocess.Popen(
        [
            str(installed / "podcache-sidecar"),
            "--socket",
            str(socket_path),
            "--metrics-port",
            "0",
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            if socket_path.exists():
                connection = _UnixHTTPConnection(socket_path)
                try:
                    connection.request("GET", "/readyz")
                    status = connection.getresponse().status
                except OSError:
                    status = None
                finally:
                    connection.close()
                if status == 200:
                    break
            time.sleep(0.05)
        assert status == 200, "the sidecar never became ready"
        assert socket_path.stat().st_mode & 0o777 == 0o660
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        process.stdout and process.stdout.close()
    assert not socket_path.exists(), output
