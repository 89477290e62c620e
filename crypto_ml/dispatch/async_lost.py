"""Task messages the broker lost, found and sent again by an asyncio process (the HTTP API).

The same rule as the command line's (:mod:`crypto_ml.dispatch.lost`), on :mod:`redis.asyncio`:
every ``check_every`` seconds (``CRYPTO_ML_LOST_CHECK_SECONDS``) each message this process
sent and has not seen the end of is looked at. It is *consumed* once a worker has started it
(its delivery counter exists), stored a result for it, or its run has been answered (the run's
record is final: another replica may have read and freed its results). A message neither
consumed nor queued nor unacknowledged in two checks in a row was lost by the broker (a
consumer killed between kombu's ``BRPOP`` and its unacked record, a failover that dropped
the newest writes) and is pushed again under its own id, with the time it has left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from crypto_ml.dispatch.background import stop
from crypto_ml.dispatch.lost import in_flight_ids, read_in_flight
from crypto_ml.worker.deliveries import delivery_key

log = logging.getLogger(__name__)

#: Builds a message again: (task, kwargs, task id, seconds left) -> (queue, envelope).
Envelope = Callable[[str, dict[str, Any], str, float], tuple[str, bytes]]


@dataclass
class Sent:
    """A message sent and not yet seen consumed."""

    task: str
    kwargs: dict[str, Any]
    deadline: float  # unix time after which its workers discard it
    run_key: str | None  # its run's record (None: a message shared by several runs)


class LostWatch:
    """The messages this process sent, checked for loss while any is unconsumed."""

    def __init__(self, broker: aioredis.Redis, backend: aioredis.Redis,
                 result_key: Callable[[str], Any], envelope: Envelope, queues: Iterable[str],
                 check_every: float) -> None:
        self.broker, self.backend = broker, backend
        self.result_key, self.envelope = result_key, envelope
        self.queues = list(queues)
        self.check_every = check_every
        self.sent: dict[str, Sent] = {}
        self.suspects: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def record(self, task_id: str, task: str, kwargs: dict[str, Any], deadline: float,
               run_key: str | None = None) -> None:
        self.sent[task_id] = Sent(task, kwargs, deadline, run_key)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._checks())

    def forget(self, task_ids: Iterable[str]) -> None:
        """Messages whose end this process saw (read, discarded): never looked at again."""
        for task_id in task_ids:
            self.sent.pop(task_id, None)

    async def close(self) -> None:
        await stop(self._task)

    async def _checks(self) -> None:
        while self.sent:
            await asyncio.sleep(self.check_every)
            try:
                await self.check()
            except (RedisError, OSError) as exc:  # the broker is away: look again next time
                log.debug("lost-message check skipped: %s", exc)
            except Exception:  # a bug: say so, keep the API up, look again next time
                log.exception("lost-message check failed")

    async def check(self) -> list[str]:
        """Resend the messages found lost in this check and the one before; their ids."""
        now = time.time()
        for task_id in [t for t, s in self.sent.items() if s.deadline <= now]:
            del self.sent[task_id]  # expired: its workers would discard it anyway
        missing = await self._unconsumed()
        if missing:
            missing -= await self._queued()
        if missing:
            missing -= await self._answered(missing)
        lost = sorted(missing & self.suspects)
        self.suspects = missing - set(lost)
        for task_id in lost:
            await self._resend(task_id)
        return lost

    async def _unconsumed(self) -> set[str]:
        ids = list(self.sent)
        async with self.backend.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.exists(self.result_key(task_id), delivery_key(task_id))
            found = await pipe.execute()
        self.forget(t for t, n in zip(ids, found, strict=True) if n)
        return {t for t, n in zip(ids, found, strict=True) if not n}

    async def _queued(self) -> set[str]:
        async with self.broker.pipeline(transaction=False) as pipe:
            read_in_flight(pipe, self.queues)
            *lists, unacked = await pipe.execute()
        return in_flight_ids(lists, unacked)

    async def _answered(self, task_ids: set[str]) -> set[str]:
        """Those of ``task_ids`` whose run has been answered (its results read and freed)."""
        keyed = [(t, sent.run_key) for t in task_ids
                 if (sent := self.sent.get(t)) is not None and sent.run_key is not None]
        if not keyed:
            return set()
        async with self.backend.pipeline(transaction=False) as pipe:
            for _, key in keyed:  # GET each (the manager's ACL grants no MGET on runs)
                pipe.get(key)
            records = await pipe.execute()
        done = {t for (t, _), raw in zip(keyed, records, strict=True)
                if raw is not None and "final" in json.loads(raw)}
        self.forget(done)
        return done

    async def _resend(self, task_id: str) -> None:
        sent = self.sent.get(task_id)
        if sent is None:  # its run was answered while this check awaited Redis
            return
        queue, envelope = self.envelope(sent.task, sent.kwargs, task_id,
                                        max(1.0, sent.deadline - time.time()))
        await self.broker.lpush(queue, envelope)  # type: ignore[misc]
        log.warning("resent task %s: the broker lost its message", task_id)
