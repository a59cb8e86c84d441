"""The Redis backend from pods: a redis-server on the node IP (started by this module
inside the node's namespace, with a password), a CacheConfig pointing at it with the
password in a Secret, and two pods of one Deployment sharing it.

Aspects:
- a key written through one pod's socket is read through the other's;
- a lock held through one pod is refused to the other until released, and the next
  holder's fence is larger;
- the CacheConfig's election: both sidecars campaign, both see the same holder, and
  exactly one of them leads.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.controlplane.harness import cache_config, cache_config_ready, create_cache_config
from tests.controlplane.harness import eventually as wait_until
from tests.node.harness import NodeCluster, app_deployment, wait_pods_ready

pytestmark = pytest.mark.timeout(600)
REDIS_PORT = 6379


@pytest.fixture(scope="module")
def redis(nodes: NodeCluster) -> Iterator[str]:
    """redis-server on the node IP; its password."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing (scripts/install-redis installs it)")
    password = secrets.token_hex(12)
    plane = nodes.node.plane
    plane.spawn(
        "redis-server",
        ["--bind", nodes.node.node_ip, "--port", str(REDIS_PORT), "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(plane.workdir)],
        program=binary,
    )  # fmt: skip

    def answers() -> bool:
        try:
            with nodes.node.netns.connect(nodes.node.node_ip, REDIS_PORT, timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"-NOAUTH")
        except OSError:
            return False

    wait_until(answers, timeout=20, what="redis-server on the node IP")
    yield password
    plane.stop_process("redis-server")


def in_pod(nodes: NodeCluster, namespace: str, pod: str, code: str) -> Any:
    """Run Python in the app container with a podcache client ``c``; its JSON output."""
    exit_code, out = nodes.exec(
        namespace, pod, "app", "python", "-c",
        "import json, podcache\nc = podcache.Client()\n" + code,
    )  # fmt: skip
    assert exit_code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_two_pods_share_keys_locks_and_an_election(
    release: NodeCluster, namespace: str, redis: str
) -> None:
    release.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="redis-auth"), string_data={"password": redis}
        ),
    )
    spec = {
        "backend": "redis",
        "redis": {
            "url": f"redis://{release.node.node_ip}:{REDIS_PORT}/0",
            "passwordSecretRef": {"name": "redis-auth", "key": "password"},
        },
        "leaderElection": {
            "elections": [{"name": "scheduler", "leaseDuration": "15s", "renewInterval": "2s"}]
        },
    }
    create_cache_config(release.cluster, namespace, cache_config("shared", spec))
    wait_until(lambda: cache_config_ready(release.cluster, namespace, "shared"), what="Ready")
    release.apps.create_namespaced_deployment(namespace, app_deployment("pair", "shared", 2))
    a, b = (p.metadata.name for p in wait_pods_ready(release, namespace, "app=pair", 2))

    in_pod(release, namespace, a, "c.set('cart', b'3 items', ttl=60); print(json.dumps(1))")
    assert in_pod(release, namespace, b, "print(json.dumps(c.get('cart').decode()))") == "3 items"

    held = in_pod(
        release, namespace, a,
        "l = c.acquire_lock('checkout', ttl=60)\n"
        "print(json.dumps({'token': l.token, 'fence': l.fence}))",
    )  # fmt: skip
    refused = in_pod(
        release, namespace, b,
        "try:\n"
        "    c.acquire_lock('checkout', ttl=60, wait=0); print(json.dumps('acquired'))\n"
        "except podcache.LockNotAcquired:\n"
        "    print(json.dumps('refused'))",
    )  # fmt: skip
    assert refused == "refused"
    in_pod(
        release,
        namespace,
        a,
        f"c.release_lock('checkout', token={held['token']!r}); print(json.dumps(1))",
    )
    fence = in_pod(
        release, namespace, b,
        "l = c.acquire_lock('checkout', ttl=60); print(json.dumps(l.fence))",
    )  # fmt: skip
    assert fence > held["fence"]

    def one_leader() -> list[dict[str, Any]] | None:
        code = (
            "s = c.leader('scheduler')\nprint(json.dumps({'leader': s.leader, 'holder': s.holder}))"
        )
        seen = [in_pod(release, namespace, pod, code) for pod in (a, b)]
        holders = {s["holder"] for s in seen}
        if len(holders) == 1 and None not in holders and sum(s["leader"] for s in seen) == 1:
            return seen
        return None

    seen = wait_until(one_leader, timeout=60, what="one leader seen alike by both pods")
    assert seen[0]["holder"] in (a, b)
