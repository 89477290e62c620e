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
A message that fails as a whole (its worker died too often, a time limit) stores
its failure under its own id, which callers watch beside their part's.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import states

from crypto_ml.core.errors import BrokerUnavailable

#: A message not finished after this long stops counting against the window (lost, or a
#: long backlog in the broker: then more messages join it there).
SLOT_SECONDS = 10.0

Publish = Callable[[str, dict[str, Any]], None]  # (message id, kwargs)
Watch = Callable[[str, Callable[[str, "dict[str, Any] | None"], None], float], None]


@dataclass
class _Part:
    id: str
    items: list[dict[str, Any]]
    sent: threading.Event = field(default_factory=threading.Event)
    envelope: str | None = None
    error: BaseException | None = None


class Coalescer:
    """Sends parts (one run's cheap forecasts each) in shared messages, ``window`` at a time.

    ``publish(message_id, kwargs)`` sends a ``forecast_parts`` message; ``watch(message_id,
    callback, timeout)`` calls ``callback(message_id, meta)`` when its result is stored (meta
    None after ``timeout`` s); ``forget(message_id)`` deletes a finished message's result.
    """

    def __init__(self, publish: Publish, watch: Watch, forget: Callable[[str], None],
                 window: int = 4, max_items: int = 64, slot_seconds: float = SLOT_SECONDS) -> None:
        self.window, self.max_items, self.slot_seconds = window, max_items, slot_seconds
        self._publish, self._watch, self._forget = publish, watch, forget
        self._cond = threading.Condition()
        self._pending: deque[_Part] = deque()
        self._in_flight: dict[str, float] = {}  # message id: when it was sent (monotonic)
        self._closed = False
        self.messages = self.parts = 0  # sent so far (tests and benchmarks read them)
        self._thread = threading.Thread(target=self._loop, name="crypto-ml-coalesce", daemon=True)
        self._thread.start()

    def submit(self, part_id: str, items: list[dict[str, Any]]) -> str:
        """Queue one part; returns the id of the message that carries it once it is published,
        or raises BrokerUnavailable if that message could not be."""
        part = _Part(part_id, items)
        with self._cond:
            if self._closed:
                raise BrokerUnavailable("the API is stopping; nothing of this request was queued")
            self._pending.append(part)
            self._cond.notify_all()
        part.sent.wait()
        if isinstance(part.error, BrokerUnavailable):
            raise part.error
        if part.error is not None or part.envelope is None:
            raise BrokerUnavailable(f"could not queue the forecasts ({type(part.error).__name__}: "
                                    f"{part.error}); nothing of this request was queued")
        return part.envelope

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._live()

    @property
    def waiting(self) -> int:
        """Parts waiting for a message."""
        with self._cond:
            return len(self._pending)

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

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._ready():
                    self._cond.wait(1.0 if self._pending else None)
                if self._closed:
                    for part in self._pending:
                        part.error = BrokerUnavailable("the API stopped before this request "
                                                       "was queued")
                        part.sent.set()
                    self._pending.clear()
                    return
                parts = self._take()
                message_id = str(uuid.uuid4())
                self._in_flight[message_id] = time.monotonic()
            self._send(message_id, parts)

    def _send(self, message_id: str, parts: list[_Part]) -> None:
        try:
            self._publish(message_id, {"parts": [{"id": p.id, "items": p.items} for p in parts]})
            self._watch(message_id, self._finished, self.slot_seconds)
        except Exception as exc:  # kombu and redis raise many connection errors
            with self._cond:
                self._in_flight.pop(message_id, None)
            for part in parts:
                part.error = exc
                part.sent.set()
            return
        with self._cond:
            self.messages += 1
            self.parts += len(parts)
        for part in parts:
            part.envelope = message_id
            part.sent.set()

    def _finished(self, message_id: str, meta: dict[str, Any] | None) -> None:
        with self._cond:
            self._in_flight.pop(message_id, None)
            self._cond.notify_all()
        if meta is not None and meta.get("status") == states.SUCCESS:
            self._forget(message_id)  # a failure stays: its callers read its reason
