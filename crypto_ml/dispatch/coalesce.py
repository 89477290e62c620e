"""Concurrent runs' cheap forecasts in shared messages: what many small API requests cost.

A task message costs a worker about 2.5 ms of CPU whatever it carries (the broker
round trips, the prefork hand-over, the acknowledgement), ten times a linear fit.
With many small requests at once, one message per request spends the workers'
cores on messages. :class:`Coalescer` keeps at most ``window`` messages of its
process in flight; while they are, the parts that arrive wait and then leave
together in one ``crypto_ml.forecast_parts`` message (up to ``max_items``
forecasts; more waiting parts than that go at once, so a backlog still queues in
the broker, where autoscalers see it). An idle server sends each part at once:
coalescing adds no delay, it only replaces queueing in the broker.

Each part keeps its own result id, where the worker stores that part's results,
so callers share a message, never a result (see :class:`~crypto_ml.dispatch.runs.RunQueue`).
The message itself stores no result (the task ignores its own, which saves the worker a read
and a write per message), so its slot frees when its parts' results have all arrived. A
message that fails as a whole (its worker died too often, a time limit) stores its failure
under its own id, which frees the slot too, and which callers watch beside their part's.

It runs on the API's event loop: callers await :meth:`Coalescer.submit`, one task sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeoutError

from crypto_ml.core.errors import BrokerUnavailable
from crypto_ml.core.sentinel import SOCKET_TIMEOUT
from crypto_ml.dispatch.background import stop

#: A broker that did not answer in time: the parts that waited meanwhile are refused with the
#: message that failed, not sent one after another into the same wait (a paused Redis held the
#: fourth of four concurrent requests for four socket timeouts); a failure that came at once
#: (refused, a wrong password) refuses only its own message's
UNREACHABLE = (TimeoutError, RedisTimeoutError)
#: A message not finished after this long stops counting against the window (lost, or a
#: long backlog in the broker: then more messages join it there).
SLOT_SECONDS = 10.0

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]  # (message id, kwargs)
#: (part ids, callback, timeout, ends): call back once the parts have all finished, or one of
#: ``ends`` (the message's own id: its failure) has, or after ``timeout`` seconds
Watch = Callable[[list[str], Callable[[], None], float, list[str]], Awaitable[None]]


@dataclass
class _Part:
    id: str
    items: list[dict[str, Any]]
    sent: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Coalescer:
    """Sends parts (one run's cheap forecasts each) in shared messages, ``window`` at a time.

    ``publish(message_id, kwargs)`` sends a ``forecast_parts`` message; ``watch(part_ids,
    callback, timeout, [message_id])`` calls ``callback()`` when the message is done with
    (see :data:`Watch`).
    """

    def __init__(self, publish: Publish, watch: Watch, window: int = 4,
                 max_items: int = 64, slot_seconds: float = SLOT_SECONDS) -> None:
        self.window, self.max_items, self.slot_seconds = window, max_items, slot_seconds
        self._publish, self._watch = publish, watch
        self._pending: deque[_Part] = deque()
        self._in_flight: dict[str, float] = {}  # message id: when it was sent (monotonic)
        self._wake: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self.messages = self.parts = 0  # sent so far (tests, benchmarks and /metrics read them)

    async def submit(self, part_id: str, items: list[dict[str, Any]]) -> str:
        """Queue one part; returns the id of the message that carries it once it is published,
        or raises BrokerUnavailable if that message could not be."""
        if self._closed:
            raise BrokerUnavailable("the API is stopping; nothing of this request was queued")
        part = _Part(part_id, items)
        self._pending.append(part)
        self._start().set()
        return await part.sent

    async def close(self) -> None:
        self._closed = True
        await stop(self._sender)
        for part in self._pending:
            if not part.sent.done():
                part.sent.set_exception(BrokerUnavailable(
                    "the API stopped before this request was queued"))
        self._pending.clear()

    @property
    def in_flight(self) -> int:
        return self._live()

    @property
    def waiting(self) -> int:
        """Parts waiting for a message."""
        return len(self._pending)

    def _start(self) -> asyncio.Event:
        if self._wake is None or self._sender is None:
            self._wake = asyncio.Event()
            self._sender = asyncio.create_task(self._loop(), name="crypto-ml-coalesce")
        return self._wake

    def _live(self) -> int:
        cutoff = time.monotonic() - self.slot_seconds
        for message_id in [m for m, sent in self._in_flight.items() if sent < cutoff]:
            del self._in_flight[message_id]
        return len(self._in_flight)

    def _pending_items(self) -> int:
        return sum(len(p.items) for p in self._pending)

    def _ready(self) -> bool:
        return bool(self._pending) and (self._live() < self.window
                                        or self._pending_items() >= self.max_items)

    def _take(self) -> list[_Part]:
        """The next message's parts: the waiting parts shared over the free slots, at most
        ``max_items`` forecasts (but always at least one part)."""
        free = max(1, self.window - self._live())
        count = math.ceil(len(self._pending) / free)
        taken = [self._pending.popleft()]
        size = len(taken[0].items)
        while self._pending and len(taken) < count and \
                size + len(self._pending[0].items) <= self.max_items:
            size += len(self._pending[0].items)
            taken.append(self._pending.popleft())
        return taken

    async def _loop(self) -> None:
        wake = self._start()
        while True:
            while not self._ready():
                wake.clear()
                with contextlib.suppress(TimeoutError):  # a slot also frees by its age
                    await asyncio.wait_for(wake.wait(), 1.0 if self._pending else None)
            parts = self._take()
            message_id = str(uuid.uuid4())
            self._in_flight[message_id] = time.monotonic()
            await self._send(message_id, parts)

    async def _send(self, message_id: str, parts: list[_Part]) -> None:
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT):  # its two steps, each of which may wait
                await self._watch([p.id for p in parts], lambda: self._finished(message_id),
                                  self.slot_seconds, [message_id])
                await self._publish(message_id, {"parts": [{"id": p.id, "items": p.items}
                                                           for p in parts]})
        except Exception as exc:  # the broker's connection errors vary
            self._in_flight.pop(message_id, None)
            error = exc if isinstance(exc, BrokerUnavailable) else BrokerUnavailable(
                f"could not queue the forecasts ({type(exc).__name__}: {exc}); nothing of "
                "this request was queued")
            if isinstance(exc, UNREACHABLE):  # those that came meanwhile waited as long
                parts, self._pending = [*parts, *self._pending], deque()
            for part in parts:
                if not part.sent.done():
                    part.sent.set_exception(error)
            return
        self.messages += 1
        self.parts += len(parts)
        for part in parts:
            if not part.sent.done():
                part.sent.set_result(message_id)

    def _finished(self, message_id: str) -> None:
        self._in_flight.pop(message_id, None)
        if self._wake is not None:
            self._wake.set()
