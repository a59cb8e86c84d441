"""Stopping background tasks reliably.

BEWARE: on Python 3.11 a single ``task.cancel()`` is not always enough. redis-py sends
and reads through ``asyncio.wait_for``, which swallows a cancellation that races with
the I/O completing (CPython gh-86296), and the task carries on as if nothing happened.
Every place that stops a task doing Redis calls goes through ``cancel_and_wait``.
"""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_EVERY = 0.02
"""Seconds between repeated cancellations: short, since a swallowed cancel costs a stop."""


async def cancel_and_wait(
    task: asyncio.Task[Any], *, recancel_every: float = RECANCEL_EVERY
) -> BaseException | None:
    """Cancel ``task`` until it has really finished; return the error it ended with, if any."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_every)
    return None if task.cancelled() else task.exception()
