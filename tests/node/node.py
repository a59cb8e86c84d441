"""A one-node Kubernetes cluster for the tests, inside a network namespace it makes.

``Node`` holds a ``ControlPlane`` (the same etcd + apiserver + controller-manager the
control-plane tests use, run inside the namespace, bound on all its addresses and
advertised on the node IP) and the node's components from ``components``: containerd,
kubelet, kube-scheduler, kube-proxy and CoreDNS. The apiserver's port is forwarded to
the root namespace's loopback at the same number, so one kubeconfig serves the test
process outside and the components inside.

``stop()`` undoes everything, in this order, even after a failed start: the kubelet
(so it restarts nothing), every containerd task (a shim outlives containerd
otherwise), the rest of the processes, every mount under the work folder (pod volumes,
rootfs overlays, the pods' network namespaces), then the namespace itself, which takes
the bridges and veths with it. Nothing is left on the machine but the work folder,
removed unless the logs are to be kept.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.controlplane.cluster import CONTROLLERS, SERVICE_CIDR, ControlPlane, built_binaries
from tests.node import images
from tests.node.components import (
    Containerd,
    CoreDNS,
    Kubelet,
    KubeProxy,
    NodeUnavailable,
    Scheduler,
    wait_for,
)
from tests.node.netns import NetworkNamespace
from tests.redis_server import free_port

NODE_NAME = "podcache-e2e-node"
NODE_CIDR = "10.200.0.1/24"
SERVICE_IP = "10.96.0.1"  # the kubernetes Service: the first address of SERVICE_CIDR
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "coredns", "pause")
OWNER_FILE = "owner.json"


def find_node_binaries() -> Path:
    """The folder from scripts/build-node (``PODCACHE_NODE_BIN`` wins, as in scripts/test)."""
    return built_binaries("PODCACHE_NODE_BIN", "build-node", NODE_BINARIES, NodeUnavailable)


class Node:
    """The control plane plus one node; ``start()``, then ``stop()`` in any case."""

    def __init__(self, control_binaries: Path, node_binaries: Path, image: str) -> None:
        self.node_binaries = node_binaries
        self.image = image
        """The project's image (content-keyed reference from scripts/build-image)."""
        self.netns = NetworkNamespace(node_cidr=NODE_CIDR, service_cidr=SERVICE_CIDR)
        self.node_ip = self.netns.node_ip
        self.plane = ControlPlane(
            control_binaries,
            launcher=self.netns.launcher,
            bind_address="0.0.0.0",
            advertise_address=self.node_ip,
            serving_ips=(SERVICE_IP,),
            # The node lifecycle controller lifts the not-ready taint the kubelet
            # registers the node with; without it nothing is ever scheduled.
            controllers=CONTROLLERS.replace(",-nodelifecycle", ""),
        )
        self.folder = self.plane.workdir / "node"
        self.folder.mkdir()
        self.containerd = Containerd(self.folder / "containerd", images.PAUSE_IMAGE)
        self.started_at = 0.0
        self.timings: dict[str, float] = {}
        """Seconds per start phase, for the suite's closing figures."""

    def start(self) -> None:
        self.started_at = time.monotonic()
        sweep_orphans()
        # Who owns this node: a later run removes it if this process dies without
        # stopping it (SIGKILL, a crash), never while it lives.
        (self.folder / OWNER_FILE).write_text(
            json.dumps({"pid": os.getpid(), "netns": self.netns.name})
        )
        ca = self.plane.ca
        apiserver_kubelet_client = ca.issue(
            "apiserver-kubelet-client",
            common_name="kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        )
        self.plane.apiserver_args += [
            # Else the apiserver resolves the node's name through the machine's resolver
            # for logs and exec.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={apiserver_kubelet_client.key}",
        ]
        self.netns.create()
        self._phase("network namespace")
        self.netns.forward(self.plane.port)
        self.containerd.start(self.plane)
        self._phase("containerd")
        # The imports (disk-bound) overlap the control plane's start (CPU-bound).
        importing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        imported = importing.submit(self._import_images)
        try:
            self.plane.start()
            self._phase("control plane")
            imported.result()
        finally:
            importing.shutdown(wait=True)
        kubelet = Kubelet(
            self.folder / "kubelet",
            name=NODE_NAME,
            node_ip=self.node_ip,
            runtime_socket=self.containerd.socket,
            serving=ca.issue("kubelet-serving", common_name=NODE_NAME, ips=(self.node_ip,),
                             dns_names=(NODE_NAME,), server=True),
            client=ca.issue("kubelet-client", common_name=f"system:node:{NODE_NAME}",
                            organizations=("system:nodes",), client=True),
        )  # fmt: skip
        kubelet.start(self.plane, self.node_binaries)
        Scheduler().start(self.plane, self.node_binaries, free_port())
        KubeProxy(self.folder / "kube-proxy", node_name=NODE_NAME).start(
            self.plane, self.node_binaries, free_port()
        )
        coredns = CoreDNS(self.folder / "coredns", node_ip=self.node_ip,
                          binary=self.node_binaries / "coredns")  # fmt: skip
        coredns.start(self.plane)
        wait_for("the node", self._node_ready, plane=self.plane, name="kubelet", timeout=60)
        self._phase("node Ready")
        wait_for("kube-proxy's rules", self._proxy_ready, plane=self.plane,
                 name="kube-proxy", timeout=30)  # fmt: skip
        wait_for("CoreDNS", lambda: self.http_get(self.node_ip, coredns.ready_port, "/ready"),
                 plane=self.plane, name="coredns", timeout=30)  # fmt: skip
        self._phase("kube-proxy and CoreDNS")

    def stop(self) -> None:
        """Every step runs even when one before it failed; the first error is raised."""
        errors: list[BaseException] = []
        for step in (
            lambda: self.plane.stop_process("kubelet"),  # first: it would restart containers
            self.containerd.kill_tasks,
            self.plane.stop,
            self._kill_leftover_shims,
            lambda: _unmount_under(self.plane.workdir),
            self.netns.delete,
        ):
            try:
                step()
            except Exception as exc:  # the rest of the teardown must run
                errors.append(exc)
        if errors:
            raise errors[0]

    def _import_images(self) -> None:
        self.containerd.import_image(images.pause_archive(self.node_binaries / "pause"))
        self.containerd.import_image(
            images.save(self.image),
            (self.image, f"ghcr.io/podcache/podcache:{images.project_version()}"),
        )
        self._phase("images imported")

    # --- access ----------------------------------------------------------------------

    def http_get(self, host: str, port: int, path: str, timeout: float = 2.0) -> bytes | None:
        """A plain HTTP GET from inside the namespace; the body on 200, else None."""
        with self.netns.connect(host, port, timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return body if head.split(b" ", 2)[1:2] == [b"200"] else None

    # --- internals -------------------------------------------------------------------

    def _phase(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.started_at, 2)

    def _node_ready(self) -> bool:

        node = json.loads(self.plane.get(f"/api/v1/nodes/{NODE_NAME}"))
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        taints = node["spec"].get("taints") or []
        return conditions.get("Ready") == "True" and not taints

    def _proxy_ready(self) -> bool:
        rules = self.netns.run("iptables", "-t", "nat", "-S", "KUBE-SERVICES")
        return "default/kubernetes:https" in rules

    def _kill_leftover_shims(self) -> None:
        """A shim of this containerd still running (a task that would not die)."""
        address = str(self.containerd.socket)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), 9)


def _unmount_under(folder: Path) -> None:
    """Lazily unmount everything mounted below ``folder``, deepest first."""
    prefix = str(folder.resolve()) + "/"
    mounts = [
        line.split()[1].encode().decode("unicode_escape")
        for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def remove_workdir(folder: Path) -> None:
    _unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def sweep_orphans() -> None:
    """Remove the nodes whose test process died without stopping them: their processes
    (found by their work folder on the command line), mounts, namespace and folder.
    Nodes of live processes (another run on this machine) are left alone."""
    for owner_file in Path(tempfile.gettempdir()).glob(f"podcache-kube-*/node/{OWNER_FILE}"):
        try:
            owner = json.loads(owner_file.read_text())
            os.kill(int(owner["pid"]), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError, KeyError):
            continue  # unreadable or not ours to judge
        workdir = owner_file.parents[1]
        marker = f"{workdir}/".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), 9)
        # The containers outlive their shims: runc (its state is in the folder) kills
        # and deletes them.
        for root in workdir.glob("node/containerd/runc/*"):
            listed = subprocess.run(["runc", "--root", str(root), "list", "--quiet"],
                                    capture_output=True, text=True, check=False)  # fmt: skip
            for container in listed.stdout.split():
                subprocess.run(["runc", "--root", str(root), "delete", "--force", container],
                               capture_output=True, check=False)  # fmt: skip
        time.sleep(0.5)  # let the killed release their mounts
        _unmount_under(workdir)
        subprocess.run(["ip", "netns", "delete", str(owner.get("netns", ""))],
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(workdir, ignore_errors=True)
