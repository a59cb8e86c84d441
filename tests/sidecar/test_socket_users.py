"""Every container of a pod can use the socket, whatever user it runs as (issue 9 defect 6).

In a pod the socket's directory is an emptyDir only that pod's containers mount; an app
container with its own ``runAsUser`` (e.g. ``USER node``, 1000:1000) and no ``fsGroup``
shares no group with the sidecar's user (65532). The injector sets
``PODCACHE_SOCKET_MODE=0666`` for that. Here: a real sidecar process, its socket owned
by the sidecar's user as in a pod, and ``curl`` run as another non-root user
(``setpriv``), on a directory as open as an emptyDir.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.sidecar.conftest import SidecarProcess

SIDECAR_UID = 65532
APP_UID = 1000

needs_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("curl"),
    reason="needs root (to act as two users), setpriv and curl",
)


def curl_as(uid: int, socket_path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
         "--unix-socket", socket_path, "http://x/healthz"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip


def as_in_a_pod(sidecar: SidecarProcess, short_tmp: Path) -> None:
    """The emptyDir is world-traversable; the socket belongs to the sidecar's user."""
    for folder in (short_tmp, Path(sidecar.socket_path).parent):
        folder.chmod(0o777)
    os.chown(sidecar.socket_path, SIDECAR_UID, SIDECAR_UID)


@needs_tools
def test_an_app_running_as_another_user_uses_the_socket(
    spawn_sidecar: Callable[..., SidecarProcess], short_tmp: Path
) -> None:
    sidecar = spawn_sidecar(env={"PODCACHE_SOCKET_MODE": "0666"})  # as the injector sets it
    sidecar.wait_socket()
    assert stat.S_IMODE(os.stat(sidecar.socket_path).st_mode) == 0o666
    as_in_a_pod(sidecar, short_tmp)
    answer = curl_as(APP_UID, sidecar.socket_path)
    assert answer.stdout == "200", answer.stderr


@needs_tools
def test_off_pod_the_socket_stays_owner_and_group_only(
    spawn_sidecar: Callable[..., SidecarProcess], short_tmp: Path
) -> None:
    sidecar = spawn_sidecar()
    sidecar.wait_socket()
    assert stat.S_IMODE(os.stat(sidecar.socket_path).st_mode) == 0o660
    as_in_a_pod(sidecar, short_tmp)
    answer = curl_as(APP_UID, sidecar.socket_path)
    assert answer.stdout != "200"
    assert answer.returncode == 7, answer  # curl: could not connect (EACCES)


def test_a_bad_mode_is_refused_naming_the_variable(
    spawn_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = spawn_sidecar(env={"PODCACHE_SOCKET_MODE": "0777"})
    assert sidecar.process.wait(timeout=20) != 0
    assert "PODCACHE_SOCKET_MODE='0777': use one of 0600, 0660, 0666" in sidecar.log()
