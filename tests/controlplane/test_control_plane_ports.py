"""The control-plane harness itself: a port taken between picking it and binding it.

Ports are picked free before the components start, so another process can take one
in the meantime; a CI run lost its whole session's control plane that way ("address
already in use" in the apiserver's log). The harness then starts again on new ports.
"""

from __future__ import annotations

import shutil
import socket

from tests.availability import unavailable
from tests.controlplane.cluster import ControlPlane, ControlPlaneUnavailable, find_binaries


def test_a_taken_apiserver_port_is_replaced_by_a_free_one() -> None:
    try:
        binaries = find_binaries()
    except ControlPlaneUnavailable as exc:
        unavailable("A Kubernetes control plane", str(exc))
    plane = ControlPlane(binaries)
    taken = plane.port
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        plane.start()
        assert plane.port != taken
        assert plane.get("/readyz") == b"ok"
        assert "address already in use" in (plane.logs / "kube-apiserver.log.1").read_text()
    finally:
        squatter.close()
        plane.stop()
        shutil.rmtree(plane.workdir, ignore_errors=True)
