"""Opt-in: evict labelled pods that no webhook saw, so their controller re-creates them
with the sidecar (``Settings.restart_pods_without_sidecar``, the chart's
``operator.restartPodsWithoutSidecar``).

Which pods: those ``bare_pods.unseen_and_replaceable`` picks — admitted while no
operator replica answered (``failurePolicy: Ignore``), and owned by a controller. A pod
the webhook saw but could not inject carries ``podcache.io/not-injected`` and is left
alone: a new one would come back the same.

Why evict rather than delete: the Eviction API honours PodDisruptionBudgets (a 429 is
retried at the next turn), so a workload never loses more replicas than its owner allows.
When: only while this replica's webhook listens (else the replacement would be bare too),
and at most one pod per CacheConfig every ``interval`` seconds, so that a webhook the
apiserver cannot reach after all (a NetworkPolicy, say) slows the churn to a trickle
instead of recycling a whole Deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

Key = tuple[str, str]
"""(namespace, CacheConfig name)."""

logger = logging.getLogger(__name__)


class BarePodRestarts:
    """Pods waiting for their eviction, one worker per CacheConfig while any wait."""

    def __init__(
        self,
        *,
        interval: float,
        evict: Callable[[str, str], Awaitable[bool]],
        webhook_ready: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._evict = evict
        self._webhook_ready = webhook_ready
        self._clock = clock
        self._waiting: dict[Key, dict[str, None]] = {}  # insertion-ordered pod names
        self._next: dict[Key, float] = {}
        self._workers: dict[Key, asyncio.Task[None]] = {}

    def offer(self, key: Key, pod: str) -> None:
        """``pod`` lacks the sidecar and may be replaced."""
        self._waiting.setdefault(key, {})[pod] = None
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(
                self._work(key), name=f"podcache-restarts-{key[0]}/{key[1]}"
            )

    def withdraw(self, key: Key, pod: str) -> None:
        """``pod`` is gone or has its sidecar after all."""
        self._waiting.get(key, {}).pop(pod, None)

    async def stop(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _work(self, key: Key) -> None:
        try:
            while waiting := self._waiting.get(key):
                delay = self._next.get(key, 0.0) - self._clock()
                if delay > 0 or not self._webhook_ready():
                    await asyncio.sleep(max(delay, min(self._interval, 1.0)))
                    continue
                pod = next(iter(waiting))
                self._next[key] = self._clock() + self._interval
                try:
                    gone = not await self._evict(key[0], pod)
                except Exception as exc:  # a PDB's 429, a timeout: try again next turn
                    logger.warning("Could not evict pod %s/%s yet: %r", key[0], pod, exc)
                    continue  # it stays first in line
                waiting.pop(pod, None)
                if not gone:
                    logger.warning(
                        "Evicted pod %s/%s (no webhook saw it, so it has no podcache sidecar;"
                        " its controller re-creates it with one)", key[0], pod,
                    )
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
            if not self._waiting.get(key):
                self._waiting.pop(key, None)
