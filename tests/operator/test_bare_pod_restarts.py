"""Which pods the operator evicts when asked to restart pods without the sidecar, and how
fast (``bare_pod_restarts``). The eviction itself, through a real apiserver and its
ReplicaSet controller, is in tests/controlplane/test_bare_pod_restarts_e2e.py.

Aspects:
- only labelled pods that lack the sidecar, that no webhook saw, and that a controller owns;
- one eviction per CacheConfig per interval, none while the webhook does not listen;
- a pod withdrawn (deleted, or found with its sidecar) is not evicted;
- a refused eviction (a PodDisruptionBudget's 429) is tried again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from podcache_operator import bare_pods, injection
from podcache_operator.bare_pod_restarts import BarePodRestarts
from tests.operator import samples

OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u",
         "controller": True}  # fmt: skip


def owned_pod(**annotations: str) -> dict[str, Any]:
    pod = samples.pod()
    pod["metadata"]["ownerReferences"] = [OWNER]
    pod["metadata"]["annotations"] = dict(annotations)
    return pod


def test_an_unseen_owned_bare_pod_is_replaceable() -> None:
    assert bare_pods.unseen_and_replaceable(owned_pod())


def test_a_pod_the_webhook_saw_is_not() -> None:
    assert not bare_pods.unseen_and_replaceable(
        owned_pod(**{injection.NOT_INJECTED_ANNOTATION: "no CacheConfig web"})
    )


def test_a_pod_without_a_controller_is_not() -> None:
    pod = owned_pod()
    pod["metadata"]["ownerReferences"] = [dict(OWNER, controller=False)]
    assert not bare_pods.unseen_and_replaceable(pod)


def test_a_pod_with_its_sidecar_is_not() -> None:
    assert not bare_pods.unseen_and_replaceable(
        owned_pod(**{injection.INJECTED_ANNOTATION: "native"})
    )


class Evictions:
    def __init__(self, refuse_first: int = 0) -> None:
        self.done: list[tuple[str, float]] = []
        self.refuse = refuse_first

    async def __call__(self, namespace: str, name: str) -> bool:
        if self.refuse:
            self.refuse -= 1
            raise RuntimeError("429: the PodDisruptionBudget forbids it")
        self.done.append((name, time.monotonic()))
        return True


async def until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_one_eviction_per_cacheconfig_per_interval() -> None:
    evict = Evictions()
    restarts = BarePodRestarts(interval=0.3, evict=evict, webhook_ready=lambda: True)
    for name in ("a", "b", "c"):
        restarts.offer(("ns", "web"), name)
    restarts.offer(("ns", "other"), "d")  # another CacheConfig: its own pace
    await until(lambda: len(evict.done) == 4)
    await restarts.stop()
    names = [name for name, _ in evict.done]
    assert sorted(names[:2]) == ["a", "d"]
    assert names[2:] == ["b", "c"]
    times = dict(evict.done)
    assert times["b"] - times["a"] >= 0.29
    assert times["c"] - times["b"] >= 0.29


async def test_nothing_while_the_webhook_does_not_listen() -> None:
    evict = Evictions()
    listening = False
    restarts = BarePodRestarts(interval=0.05, evict=evict, webhook_ready=lambda: listening)
    restarts.offer(("ns", "web"), "a")
    await asyncio.sleep(0.3)
    assert evict.done == []
    listening = True
    await until(lambda: len(evict.done) == 1)
    await restarts.stop()


async def test_a_withdrawn_pod_is_left_alone() -> None:
    evict = Evictions()
    restarts = BarePodRestarts(interval=0.2, evict=evict, webhook_ready=lambda: True)
    restarts.offer(("ns", "web"), "a")
    restarts.offer(("ns", "web"), "b")
    restarts.withdraw(("ns", "web"), "b")
    await until(lambda: len(evict.done) == 1)
    await asyncio.sleep(0.4)
    await restarts.stop()
    assert [name for name, _ in evict.done] == ["a"]


@pytest.mark.parametrize("refusals", [1, 2])
async def test_a_refused_eviction_is_tried_again(refusals: int) -> None:
    evict = Evictions(refuse_first=refusals)
    restarts = BarePodRestarts(interval=0.05, evict=evict, webhook_ready=lambda: True)
    restarts.offer(("ns", "web"), "a")
    await until(lambda: len(evict.done) == 1)
    await restarts.stop()
    assert evict.refuse == 0
