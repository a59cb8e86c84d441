"""The node's components, each a small object that knows its configuration and when
it is ready: containerd, the kubelet, kube-scheduler, kube-proxy and CoreDNS.

Every one runs inside the node's network namespace through ``ControlPlane.spawn`` (so
its log is ``logs/<name>.log`` and it stops with the plane); ``Node`` orders them. The
settings here are what these machines need, each found the hard way (issue 18):
``CAP_SYS_RESOURCE`` is missing (containerd's ``restrict_oom_score_adj``), cgroups are v1
(runc with cgroupfs; the kubelet told not to fail on v1 nor to make QoS cgroups), and no
traffic may leave the namespace (no upstream for CoreDNS, no masquerading by the CNI).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane.cluster import ControlPlane, ControlPlaneUnavailable
from tests.controlplane.pki import KeyPair

POD_CIDR = "10.244.0.0/24"
CNI_BIN = Path("/usr/lib/cni")


class NodeUnavailable(ControlPlaneUnavailable):
    """A node component could not start (the message holds its log tail)."""


def wait_for(
    what: str, probe: Callable[[], object], *, plane: ControlPlane, name: str, timeout: float
) -> None:
    """Poll ``probe()`` until true, raising with ``name``'s log when it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plane.check_alive()
        try:
            if probe():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise NodeUnavailable(f"{what} not ready after {timeout} s:\n{plane.log_tail(name)}")


class Containerd:
    """containerd with its CRI plugin, its state in ``folder``, runc and CNI bridge."""

    def __init__(self, folder: Path, sandbox_image: str) -> None:
        self.folder = folder
        self.socket = folder / "containerd.sock"
        self.config = folder / "config.toml"
        self.cni_conf = folder / "net.d"
        self.cni_data = folder / "cni-ipam"
        self.sandbox_image = sandbox_image

    def start(self, plane: ControlPlane) -> None:
        self.cni_conf.mkdir(parents=True, exist_ok=True)
        network = {
            "cniVersion": "0.4.0",
            "name": "podcache-e2e",
            "plugins": [
                {
                    # Pods on their own bridge, the node their gateway; no ipMasq: there
                    # is nowhere to masquerade to.
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.cni_data),
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf / "10-podcache.conflist").write_text(json.dumps(network))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        self.config.write_text(
            f"""version = 2
root = "{self.folder / "root"}"
state = "{self.folder / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.folder / "containerd.sock.ttrpc"}"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.folder / "opt"}"
[{cri}]
  sandbox_image = "{self.sandbox_image}"
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj below the parent's.
  restrict_oom_score_adj = true
  # The pods' network namespaces under the state folder, so teardown finds them all.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
[{cri}.containerd]
  default_runtime_name = "runc"
  snapshotter = "overlayfs"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  # runc's state beside containerd's, not in /run/containerd/runc.
  Root = "{self.folder / "runc"}"
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.cni_conf}"
"""
        )
        plane.spawn("containerd", ["--config", str(self.config)], program="containerd")
        wait_for(
            "containerd",
            lambda: self.ctr("version", timeout=5) is not None,
            plane=plane,
            name="containerd",
            timeout=30,
        )

    def ctr(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise NodeUnavailable(f"ctr {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def import_image(self, archive: Path, *also: tuple[str, str]) -> None:
        """Import a docker archive; ``also`` adds (source, target) tags afterwards."""
        self.ctr("images", "import", "--no-unpack", str(archive))
        for source, target in also:
            self.ctr("images", "tag", "--force", source, target)

    def kill_tasks(self) -> None:
        """Kill and delete every container task (else its shim outlives containerd)."""
        try:
            listed = self.ctr("tasks", "list", "--quiet", timeout=20).split()
        except (NodeUnavailable, subprocess.SubprocessError):
            return
        for task in listed:
            subprocess.run(
                ["ctr", "--address", str(self.socket), "-n", "k8s.io", "tasks", "kill",
                 "--all", "--signal", "SIGKILL", task],
                capture_output=True, timeout=20, check=False,
            )  # fmt: skip
        for task in listed:
            for _ in range(50):
                done = subprocess.run(
                    ["ctr", "--address", str(self.socket), "-n", "k8s.io", "tasks",
                     "delete", "--force", task],
                    capture_output=True, timeout=20, check=False,
                )  # fmt: skip
                if done.returncode == 0 or b"not found" in done.stderr:
                    break
                time.sleep(0.1)


class Kubelet:
    """The kubelet, registered as ``name`` with the node IP, on containerd's socket."""

    def __init__(
        self,
        folder: Path,
        *,
        name: str,
        node_ip: str,
        runtime_socket: Path,
        serving: KeyPair,
        client: KeyPair,
    ) -> None:
        self.folder = folder
        self.name = name
        self.node_ip = node_ip
        self.runtime_socket = runtime_socket
        self.serving = serving
        self.client = client

    def start(self, plane: ControlPlane, binaries: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        kubeconfig = plane.write_kubeconfig(
            self.folder / "kubelet.kubeconfig", client_cert=self.client
        )
        resolv = self.folder / "resolv.conf"
        # Pods with dnsPolicy Default get this: the node's resolver is CoreDNS, nothing
        # outside.
        resolv.write_text(f"nameserver {self.node_ip}\n")
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(self.serving.cert),
            "tlsPrivateKeyFile": str(self.serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(plane.ca.cert_path)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.runtime_socket}",
            # cgroups v1 (hybrid) without systemd: cgroupfs, no QoS hierarchy, nothing
            # reserved, and no refusal of v1 (deprecated, still working in 1.34).
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "clusterDNS": [self.node_ip],
            "clusterDomain": "cluster.local",
            "resolvConf": str(resolv),
            "staticPodPath": "",
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            # The machine's disk is shared: never evict the tests' pods for it.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # Faster status and ConfigMap propagation than production's defaults; the
            # tests time what a user sees, so these are noted where they matter.
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "volumePluginDir": str(self.folder / "volume-plugins"),
            # Not /var/log/pods: a kubelet removes the log folders of pods it does not
            # know, so a second node on the machine would delete this one's.
            "podLogsDir": str(self.folder / "pod-logs"),
            "logging": {"verbosity": 1},
        }  # fmt: skip
        config_path = self.folder / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        plane.spawn(
            "kubelet",
            [
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.folder / 'root'}",
                f"--cert-dir={self.folder / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
            ],
            program=binaries / "kubelet",
        )


class Scheduler:
    def start(self, plane: ControlPlane, binaries: Path, port: int) -> None:
        plane.spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={plane.kubeconfig}",
                f"--authentication-kubeconfig={plane.kubeconfig}",
                f"--authorization-kubeconfig={plane.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={plane.pki / 'scheduler-generated'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            program=binaries / "kube-scheduler",
        )


class KubeProxy:
    """kube-proxy in iptables mode; it touches no sysctl the namespace cannot set."""

    def __init__(self, folder: Path, *, node_name: str) -> None:
        self.folder = folder
        self.node_name = node_name

    def start(self, plane: ControlPlane, binaries: Path, metrics_port: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(plane.kubeconfig)},
            "hostnameOverride": self.node_name,
            "clusterCIDR": POD_CIDR,
            "bindAddress": "0.0.0.0",
            "healthzBindAddress": "",
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            # nf_conntrack_max is read-only in a non-initial namespace: leave every
            # conntrack sysctl as it is (0 = do not set).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            # The node's own processes reach NodePorts on loopback too.
            "iptables": {"localhostNodePorts": False},
        }
        path = self.folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        plane.spawn("kube-proxy", [f"--config={path}"], program=binaries / "kube-proxy")


class CoreDNS:
    """CoreDNS with the kubernetes plugin on the node IP (the kubelet's clusterDNS);
    no forwarding: names outside the cluster do not resolve, as nothing leaves."""

    def __init__(self, folder: Path, *, node_ip: str, binary: Path) -> None:
        self.folder = folder
        self.node_ip = node_ip
        self.binary = binary
        self.ready_port = 8181

    def start(self, plane: ControlPlane) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        corefile = self.folder / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {self.node_ip}
    errors
    ready {self.node_ip}:{self.ready_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {plane.kubeconfig} e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        )
        plane.spawn("coredns", ["-conf", str(corefile)], program=self.binary)
