"""Fire-and-forget coroutines on the event loop, kept referenced until they end (asyncio holds
only a weak reference to a task: one nobody keeps can be collected before it runs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable


def spawn(work: Awaitable[None], running: set[asyncio.Task[None]]) -> None:
    """Run ``work`` as a task, in ``running`` until it ends."""
    task = asyncio.ensure_future(work)
    running.add(task)
    task.add_done_callback(running.discard)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
