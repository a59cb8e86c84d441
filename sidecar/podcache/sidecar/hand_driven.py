"""Coroutines driven by hand (``coro.send(None)``) that may suspend after all.

The memory backend never waits, so the RESP server and the HTTP fast mode run its
coroutines with ``send(None)`` to their ``StopIteration``: no Task, no event loop turn.
Should one suspend anyway, ``resumed`` hands it, mid-flight, to a Task.
BEWARE: a coroutine driven by hand has no current Task, so it must not use
``asyncio.timeout``.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class _Resume:
    """Continues, inside a Task, a coroutine that suspended while driven by hand."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        pending = self._yielded
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # cancellation and errors go to the coroutine
                try:
                    pending = self._coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = self._coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def resumed(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    """Await the rest of ``coro``, which gave ``yielded`` when it suspended."""
    result: T = await _Resume(coro, yielded)
    return result
