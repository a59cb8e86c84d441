"""The node's network namespace: the only network the e2e cluster has.

The kubelet refuses a loopback node IP, and nothing the cluster does may reach beyond
this machine, so every process of the cluster runs inside a namespace made here: a
bridge holding the node IP, a route for the service CIDR (without it a process on the
node gets ENETUNREACH for every ClusterIP before kube-proxy's DNAT is applied), and NO
default route. Processes enter it with ``nsenter --net=`` (``ip netns exec`` would
remount /sys and hide the cgroup mounts from the kubelet).

The test process itself stays outside: ``open_socket()`` makes a socket inside the namespace
from a thread that entered it (a namespace is per thread, and a socket keeps the one it
was made in), and ``forward()`` serves a port of the root namespace's loopback from a
port inside, so clients outside speak to the apiserver at the same 127.0.0.1:port.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
T = TypeVar("T")


class NetworkUnavailable(RuntimeError):
    """The namespace could not be made (no root, no iproute2)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")


class NetworkNamespace:
    """A named network namespace with the node's bridge; ``delete()`` removes it."""

    def __init__(
        self,
        *,
        node_cidr: str = "10.200.0.1/24",
        service_cidr: str = "10.96.0.0/16",
        name: str | None = None,
    ) -> None:
        self.name = name or f"podcache-{uuid.uuid4().hex[:8]}"
        self.path = NETNS_DIR / self.name
        self.node_cidr = node_cidr
        self.node_ip = node_cidr.split("/")[0]
        self.service_cidr = service_cidr
        self.bridge = "node0"
        self.launcher = ["nsenter", f"--net={self.path}"]
        """The prefix that runs a command inside (nsenter execs it: the PID is the program's)."""
        self._forwarders: list[_Forwarder] = []

    def create(self) -> None:
        if os.geteuid() != 0:
            raise NetworkUnavailable("the node needs root (network namespace, mounts, cgroups)")
        _ip("netns", "add", self.name)
        try:
            inside = ("-n", self.name)
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "link", "add", self.bridge, "type", "bridge")
            _ip(*inside, "addr", "add", self.node_cidr, "dev", self.bridge)
            _ip(*inside, "link", "set", self.bridge, "up")
            _ip(*inside, "route", "add", self.service_cidr, "dev", self.bridge)
            # Pods reach Services backed by other pods through the node: forwarding on,
            # and bridged traffic seen by iptables (kube-proxy's rules).
            self.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        except BaseException:
            self.delete()
            raise

    def run(self, *argv: str, timeout: float = 30.0) -> str:
        """Run a short command inside; its stdout, or raise with its stderr."""
        done = subprocess.run(
            [*self.launcher, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise NetworkUnavailable(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def inside(self, call: Callable[[], T]) -> T:
        """Run ``call`` on a thread that has entered the namespace; its result."""
        result: list[T] = []
        error: list[BaseException] = []

        def body() -> None:
            try:
                self._enter_this_thread()
                result.append(call())
            except BaseException as exc:  # re-raised on the caller's thread
                error.append(exc)

        thread = threading.Thread(target=body, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    def open_socket(
        self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket that lives inside (usable from any thread)."""
        return self.inside(lambda: socket.socket(family, kind))

    def connect(self, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        sock = self.open_socket()
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    def forward(self, port: int) -> None:
        """Serve 127.0.0.1:port of the root namespace from 127.0.0.1:port inside."""
        forwarder = _Forwarder(self, port)
        forwarder.start()
        self._forwarders.append(forwarder)

    def delete(self) -> None:
        for forwarder in self._forwarders:
            forwarder.stop()
        self._forwarders.clear()
        if self.path.exists():
            # Deleting the namespace destroys the bridge and every veth end inside it.
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)

    def _enter_this_thread(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns({self.path}): {os.strerror(errno)}")
        finally:
            os.close(fd)


class _Forwarder:
    """A TCP relay: accepts on the root namespace's loopback, connects inside.

    The accept loop runs on a thread that entered the namespace after its listening
    socket was made outside, so each upstream connection it opens lives inside; two
    threads per connection copy bytes both ways (kube clients keep few connections).
    """

    def __init__(self, netns: NetworkNamespace, port: int) -> None:
        self.netns = netns
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"forward-{port}", daemon=True)
        self.connections: set[socket.socket] = set()
        """Open relayed sockets, closed by ``stop`` (a watch may never end by itself)."""

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for sock in list(self.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        self.netns._enter_this_thread()
        while not self.stopped.is_set():
            try:
                downstream, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                downstream.close()  # the client sees a reset and retries
                continue
            upstream.settimeout(None)
            downstream.settimeout(None)
            threading.Thread(target=self._relay, args=(downstream, upstream), daemon=True).start()

    def _relay(self, downstream: socket.socket, upstream: socket.socket) -> None:
        """Copy both ways until both ends are done, then close both."""
        pair = (downstream, upstream)
        self.connections.update(pair)
        back = threading.Thread(target=_pump, args=(upstream, downstream), daemon=True)
        back.start()
        _pump(downstream, upstream)
        back.join()
        for sock in pair:
            self.connections.discard(sock)
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
