"""Real multi-process Redis topologies for the fault tests: Sentinel and Cluster.

``SentinelTopology`` starts one primary, its replicas and three sentinels;
``ClusterTopology`` starts a Redis Cluster (primaries, optionally one replica each)
and lets ``redis-cli --cluster create`` assign the slots. Every process listens on
a free loopback port, lives in its own temporary directory and is SIGKILLed on
``close()``. Both can kill, pause (SIGSTOP) and resume nodes, and wait for the
topology to heal, so tests wait on conditions instead of sleeping.

Beware: sentinel timeouts are shortened (``down-after-milliseconds 1000``,
``failover-timeout 3000``) so a failover takes a few seconds, not minutes; and a
cluster node also needs ``port + 10000`` free for its bus, which ``free_port``
does not check, hence ``_free_cluster_port``.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from podcache.config import Config, RedisSettings
from tests.redis_server import RedisServer, RedisUnavailable, free_port

LOOPBACK = "127.0.0.1"


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _answers_anything(port: int) -> bool:
    """Whether something speaking RESP listens (a password-protected server answers -NOAUTH)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


def _ephemeral_port_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _free_cluster_port() -> int:
    """A port p such that p and p + 10000 (the cluster bus) are both free.

    Both below the kernel's ephemeral range, so that no outgoing connection (the nodes'
    own gossip among them) takes a port between this check and the node's start."""
    ephemeral_low = _ephemeral_port_low()
    for _ in range(200):
        port = random.randint(10000, max(10001, ephemeral_low - 10001))
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((LOOPBACK, port))
                b.bind((LOOPBACK, port + 10000))
                return port
        except OSError:
            continue
    raise RedisUnavailable("no free port pair for a cluster node")


class Node(RedisServer):
    """A redis-server (or sentinel) with arbitrary arguments and password-aware readiness."""

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        password: str | None = None,
        config_text: str | None = None,
    ) -> None:
        super().__init__(port=port, extra_args=extra_args)
        self.password = password
        self.config_text = config_text
        """When set, the process runs as a sentinel from this config file."""

    @property
    def is_sentinel(self) -> bool:
        return self.config_text is not None

    def _args(self) -> list[str]:
        if self.config_text is not None:
            conf = self.workdir / "sentinel.conf"
            if not conf.exists():  # sentinel rewrites it; keep its state across restarts
                conf.write_text(self.config_text)
            return [self.binary, str(conf), "--sentinel"]
        args = [
            self.binary, "--port", str(self.port), "--bind", LOOPBACK,
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--protected-mode", "no",
            # Full syncs start at once instead of waiting 5 s for more replicas to join.
            "--repl-diskless-sync-delay", "0",
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args + list(self.extra_args)

    def start(self, *, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            self._args(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RedisUnavailable(f"redis-server exited with {code}: {self.log_tail()}")
            if _answers_anything(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on port {self.port} within {timeout}s")

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, *, timeout: float = 1.0) -> redis.Redis:
        """A short-lived synchronous client for inspecting this node; close it after use."""
        return redis.Redis(
            host=LOOPBACK, port=self.port, password=self.password,
            socket_timeout=timeout, socket_connect_timeout=timeout,
            protocol=2,  # flat replies, whatever redis-py's default protocol is
        )

    def command(self, *args: Any, timeout: float = 1.0) -> Any:
        """Run one command and return Redis's reply unparsed (bytes, ints, lists)."""
        with self.client(timeout=timeout) as conn:
            conn.response_callbacks.clear()  # raw replies: CLUSTER NODES text, SENTINEL lists
            return conn.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as conn:
            return dict(conn.info(section))


class SentinelTopology:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels watching them."""

    def __init__(
        self,
        *,
        master_name: str = "podcache",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RedisUnavailable("redis-server is not on PATH (apt-get install -y redis-server)")
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: list[Node] = [Node(password=password)]
        self.servers += [Node(password=password) for _ in range(replicas)]
        self.sentinels: list[Node] = []
        self._sentinel_count = sentinels
        self._quorum = sentinels // 2 + 1

    # --- lifecycle -------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> SentinelTopology:
        primary, *replicas = self.servers
        primary.start()
        for replica in replicas:
            replica.extra_args = ("--replicaof", LOOPBACK, str(primary.port))
            replica.start()
        for replica in replicas:
            wait_until(lambda r=replica: r.info("replication").get("master_link_status") == "up",
                       timeout=timeout, what=f"replica {replica.address} in sync")
        for _ in range(self._sentinel_count):
            port = free_port()
            sentinel = Node(port=port, password=self.sentinel_password,
                            config_text=self._sentinel_conf(port, primary.port))
            sentinel.start()
            self.sentinels.append(sentinel)
        self.wait_healthy(timeout=timeout)
        return self

    def _sentinel_conf(self, port: int, primary_port: int) -> str:
        name = self.master_name
        lines = [
            f"port {port}",
            f"bind {LOOPBACK}",
            "protected-mode no",
            f"sentinel monitor {name} {LOOPBACK} {primary_port} {self._quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        return "\n".join(lines) + "\n"

    def wait_healthy(self, *, timeout: float = 30.0) -> None:
        """Wait until every sentinel sees the primary, the replicas and its peers."""
        replicas = len(self.servers) - 1

        def ready(sentinel: Node) -> bool:
            state = self._master_state(sentinel)
            return (
                state is not None
                and int(state["num-other-sentinels"]) >= len(self.sentinels) - 1
                and int(state["num-slaves"]) >= replicas
                and "s_down" not in state["flags"] and "o_down" not in state["flags"]
            )

        for sentinel in self.sentinels:
            if sentinel.running:
                wait_until(lambda s=sentinel: ready(s), timeout=timeout,
                           what=f"sentinel {sentinel.address} ready")

    def close(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.close()

    def __enter__(self) -> SentinelTopology:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inspection ------------------------------------------------------------------

    def _master_state(self, sentinel: Node) -> dict[str, Any] | None:
        masters = sentinel.command("SENTINEL", "MASTERS")
        for raw in masters:
            fields = [x.decode() if isinstance(x, bytes) else x for x in raw]
            state = dict(zip(fields[::2], fields[1::2], strict=True))
            if state.get("name") == self.master_name:
                return state
        return None

    def primary_port(self) -> int:
        """The primary's port as the (first answering) sentinel reports it."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with contextlib.suppress(redis.RedisError):
                reply = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                return int(reply[1])
        raise RedisUnavailable("no sentinel answered")

    def primary(self) -> Node:
        port = self.primary_port()
        return next(node for node in self.servers if node.port == port)

    def replicas(self) -> list[Node]:
        port = self.primary_port()
        return [node for node in self.servers if node.port != port]

    # --- faults ----------------------------------------------------------------------

    def kill_primary(self) -> Node:
        """SIGKILL the current primary (no shutdown, no final save)."""
        primary = self.primary()
        primary.stop()
        return primary

    def wait_for_failover(self, old_port: int, *, timeout: float = 30.0) -> Node:
        """Wait until the sentinels name a new primary that accepts writes; return it."""
        wait_until(lambda: self.primary_port() != old_port, timeout=timeout,
                   what="sentinels to elect a new primary")
        new = self.primary()
        wait_until(lambda: new.info("replication").get("role") == "master", timeout=timeout,
                   what=f"{new.address} to become a primary")
        return new

    # --- what podcache is given ------------------------------------------------------

    def config(self, **extra: Any) -> dict[str, Any]:
        """The podcache ``config:`` map for this topology."""
        sentinel: dict[str, Any] = {
            "masterName": self.master_name,
            "addresses": [s.address for s in self.sentinels],
        }
        if self.sentinel_password:
            sentinel["password"] = self.sentinel_password
        sentinel.update(extra.pop("sentinel", {}))
        raw: dict[str, Any] = {"sentinel": sentinel}
        if self.password:
            raw["password"] = self.password
        raw.update(extra)
        return raw

    def settings(self, **extra: Any) -> RedisSettings:
        settings = Config(type="redis", config=self.config(**extra)).settings
        assert isinstance(settings, RedisSettings)
        return settings


class ClusterTopology:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each."""

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        password: str | None = None,
    ) -> None:
        if shutil.which("redis-cli") is None:
            raise RedisUnavailable("redis-cli is not on PATH (apt-get install -y redis-tools)")
        self.password = password
        self.replicas_per_primary = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[Node] = [self._new_node() for _ in range(primaries * (1 + replicas))]

    def _new_node(self) -> Node:
        return Node(
            port=_free_cluster_port(),
            password=self.password,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # A replica may be promoted even after a short link loss, so the fault tests
                # are not at the mercy of replica validity checks.
                "--cluster-replica-validity-factor", "0",
            ),
        )

    def start(self, *, timeout: float = 30.0) -> ClusterTopology:
        for node in self.nodes:
            node.start()
        args = ["redis-cli", "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"]
        if self.password:
            args += ["-a", self.password, "--no-auth-warning"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            output = f"{done.stdout[-1500:]} {done.stderr[-500:]}"
            raise RedisUnavailable(f"redis-cli --cluster create failed: {output}")
        self.wait_healthy(timeout=timeout)
        return self

    def wait_healthy(self, *, timeout: float = 30.0) -> None:
        """Wait until every running node reports cluster_state:ok and knows every node."""
        running = [n for n in self.nodes if n.running]

        def ok(node: Node) -> bool:
            info = node.command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text and len(self._nodes_view(node)) == len(self.nodes)

        for node in running:
            try:
                wait_until(lambda n=node: ok(n), timeout=timeout, what=f"node {node.address} ok")
            except TimeoutError as exc:  # name what each node saw: a CI run met this once
                raise TimeoutError(f"{exc}; {self._describe(running)}") from None

    def _describe(self, nodes: list[Node]) -> str:
        """Each node's cluster_state and view of the others (port and flags), for errors."""
        seen = []
        for node in nodes:
            try:
                info = node.command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                state = next((line for line in text.splitlines() if "cluster_state" in line), "?")
                view = ", ".join(
                    f"{peer['port']}:{'/'.join(peer['flags'])}" for peer in self._nodes_view(node)
                )
                seen.append(f"{node.port} {state.strip()} sees [{view}]")
            except (redis.RedisError, OSError) as exc:
                seen.append(f"{node.port} unreachable: {exc!r}")
        return "; ".join(seen)

    def add_primary(self, *, timeout: float = 30.0) -> Node:
        """Start one more node and join it to the cluster as a primary without slots
        (``migrate_slot`` gives it some)."""
        node = self._new_node()
        self.nodes.append(node)
        node.start()
        seed = next(n for n in self.nodes if n.running and n is not node)
        node.command("CLUSTER", "MEET", LOOPBACK, seed.port)
        self.wait_healthy(timeout=timeout)
        return node

    def _nodes_view(self, node: Node) -> list[dict[str, Any]]:
        raw = node.command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        view = []
        for line in text.strip().splitlines():
            parts = line.split()
            view.append({
                "id": parts[0], "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                "flags": parts[2].split(","), "master": parts[3], "slots": parts[8:],
            })
        return view

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> ClusterTopology:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node_at(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def primaries(self) -> list[Node]:
        """Running primaries that own slots, as a running node sees the cluster now."""
        observer = next(n for n in self.nodes if n.running)
        ports = [e["port"] for e in self._nodes_view(observer)
                 if "master" in e["flags"] and "fail" not in e["flags"] and e["slots"]]
        return [self.node_at(port) for port in ports if self.node_at(port).running]

    def node_id(self, node: Node) -> str:
        return str(node.command("CLUSTER", "MYID").decode())

    def primary_for_key(self, key: str) -> Node:
        observer = next(n for n in self.nodes if n.running)
        slot = int(observer.command("CLUSTER", "KEYSLOT", key))
        for entry in self._nodes_view(observer):
            if "master" not in entry["flags"] or "fail" in entry["flags"]:
                continue
            for span in entry["slots"]:
                if span.startswith("["):
                    continue  # a slot being imported or migrated
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return self.node_at(entry["port"])
        raise LookupError(f"no primary owns slot {slot}")

    def replicas_of(self, primary: Node) -> list[Node]:
        primary_id = self.node_id(primary)
        view = self._nodes_view(primary)
        return [self.node_at(e["port"]) for e in view if e["master"] == primary_id]

    def kill(self, node: Node) -> list[Node]:
        """SIGKILL ``node``; return the replicas that may take over its slots."""
        replicas = self.replicas_of(node)
        node.stop()
        return replicas

    def wait_for_failover(self, replicas: list[Node], *, timeout: float = 30.0) -> Node:
        """Wait until one of ``replicas`` (of a killed primary) is a primary, cluster ok."""
        wait_until(lambda: any(r.info("replication").get("role") == "master" for r in replicas),
                   timeout=timeout, what="a replica to be promoted")
        new = next(r for r in replicas if r.info("replication").get("role") == "master")
        self.wait_until_ok(timeout=timeout)
        return new

    def wait_until_ok(self, *, timeout: float = 30.0) -> None:
        for node in self.nodes:
            if node.running:
                wait_until(lambda n=node: b"cluster_state:ok" in n.command("CLUSTER", "INFO"),
                           timeout=timeout, what=f"{node.address} cluster_state:ok")

    def migrate_slot(self, slot: int, target: Node, *, batch: int = 100) -> None:
        """Move one slot, keys included, to ``target`` (the protocol redis-cli reshard uses)."""
        source = next(p for p in self.primaries() if self._owns(p, slot))
        if source.port == target.port:
            return
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            auth = ["AUTH", self.password] if self.password else []
            source.command("MIGRATE", LOOPBACK, target.port, "", 0, 5000, *auth, "KEYS", *keys,
                           timeout=10)
        # The target first (as redis-cli does): it may own no slot yet, so primaries()
        # would not list it.
        for node in [target, *(p for p in self.primaries() if p.port != target.port)]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        # Replicas learn the new owner by gossip; until then they may still redirect back.
        for node in self.nodes:
            if node.running:
                wait_until(lambda n=node: self._owner_seen_by(n, slot) == target.port,
                           timeout=10, what=f"{node.address} to see slot {slot} moved")

    def _owner_seen_by(self, observer: Node, slot: int) -> int | None:
        for entry in self._nodes_view(observer):
            if "master" not in entry["flags"]:
                continue
            for span in entry["slots"]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(entry["port"])
        return None

    def _owns(self, node: Node, slot: int) -> bool:
        for entry in self._nodes_view(node):
            if entry["port"] != node.port:
                continue
            for span in entry["slots"]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return True
        return False

    def config(self, **extra: Any) -> dict[str, Any]:
        raw: dict[str, Any] = {"cluster": {"nodes": [n.address for n in self.nodes]}}
        if self.password:
            raw["password"] = self.password
        raw.update(extra)
        return raw

    def settings(self, **extra: Any) -> RedisSettings:
        settings = Config(type="redis", config=self.config(**extra)).settings
        assert isinstance(settings, RedisSettings)
        return settings


def workdirs(topology: SentinelTopology | ClusterTopology) -> list[Path]:
    """Where the processes of a topology keep their logs (for failure messages)."""
    if isinstance(topology, ClusterTopology):
        nodes = topology.nodes
    else:
        nodes = [*topology.servers, *topology.sentinels]
    return [node.workdir for node in nodes]
