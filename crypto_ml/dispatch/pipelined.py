"""Redis commands of many coroutines, sent in one pipeline per turn of the event loop.

Under load, a burst of an API's requests finishes together (one shared message's parts
arrive at once); each stores its answer and frees its results. :class:`Pipelined` sends
what they ask for in the same turn as one pipeline: one write and one read for all of
them, instead of one round trip each. A caller awaits its own commands' replies (or the
pipeline's error).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from crypto_ml.dispatch.background import spawn

Command = tuple[str, tuple[Any, ...], dict[str, Any]]  # (method of the pipeline, args, kwargs)


class Pipelined:
    """Queue commands on ``client``; each turn's commands go as one pipeline."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._queued: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def run(self, *commands: Command) -> list[Any]:
        """Send ``commands`` (with this turn's others); their replies, in order."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((list(commands), done))
        if len(self._queued) == 1:
            loop.call_soon(self._flush)
        return await done

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        spawn(self._send(queued), self._flushing)

    async def _send(self, queued: list[tuple[list[Command], asyncio.Future[list[Any]]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for commands, _ in queued:
            for name, args, kwargs in commands:
                getattr(pipe, name)(*args, **kwargs)
        try:
            replies = await pipe.execute()
        except Exception as exc:  # every caller of this turn gets the pipeline's error
            for _, done in queued:
                if not done.done():
                    done.set_exception(exc)
            return
        at = 0
        for commands, done in queued:
            if not done.done():
                done.set_result(replies[at : at + len(commands)])
            at += len(commands)
