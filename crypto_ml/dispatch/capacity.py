"""How many messages a table run keeps queued or running: two per task slot of the workers
that beat now and take the run's queue (each says its pool's size and its queues in
``crypto_ml:slots`` with each heartbeat,
:mod:`crypto_ml.worker.liveness`), read again every few seconds, so workers added during a run
(``kubectl scale``, KEDA) get work and the queue KEDA scales on stays deep enough to scale it.
One computing and one waiting per slot keeps every pool process busy while Redis holds a
bounded number of chunks. The API's coalescing window follows the same slots, one shared
message per slot (:class:`Sizing`, :mod:`~crypto_ml.dispatch.runs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from crypto_ml.core import keys
from crypto_ml.dispatch.broker_errors import PUBLISH_ERRORS
from crypto_ml.dispatch.envelope import task_queue
from crypto_ml.dispatch.planning import Message
from crypto_ml.worker.app import CPU_QUEUE

log = logging.getLogger(__name__)

PER_SLOT = 2
LEAST = 4
REREAD_SECONDS = 5.0
#: a beat older than this is a worker gone (beats come every 2 s; clocks of hosts differ a little)
FRESH_SECONDS = 30.0
#: how long a run waits with no outcome before it looks for workers that take its queues
UNSERVED_SECONDS = 10.0


def default_in_flight(slots: int) -> int:
    """Messages in flight for ``slots`` task slots: two per slot, at least 4."""
    return max(LEAST, PER_SLOT * slots)


def live_slots(client: Any, queue: str, fresh: float = FRESH_SECONDS) -> int:
    """The task slots of the workers that take ``queue`` and beat within ``fresh`` seconds (0
    when none did); a worker that stopped is dropped from the hash by its own shutdown or by
    the sweep."""
    return slots_in(client.hgetall(keys.SLOTS), queue, fresh)


def slots_in(entries: Mapping[Any, Any], queue: str, fresh: float = FRESH_SECONDS) -> int:
    """:func:`live_slots` of the hash's ``entries`` (worker: "<slots> <beat time> <queues>")."""
    now, slots = time.time(), 0
    for value in entries.values():
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        size, beat, queues = [*text.split(" ", 2), "", ""][:3]
        try:
            if now - float(beat) <= fresh and (not queues or queue in queues.split(",")):
                slots += max(0, int(size))
        except ValueError:  # not what a worker writes: skipped
            continue
    return slots


class Sizing:
    """A limit that follows the live slots: ``per_slot`` each, at least ``least``; ``fallback``
    until :meth:`learn` is given a count (a failed or empty read keeps the last limit). The
    caller reads the slots when :meth:`due`, at most every ``every`` seconds."""

    def __init__(self, fallback: int, per_slot: int = PER_SLOT, least: int = LEAST,
                 every: float = REREAD_SECONDS) -> None:
        self.per_slot, self.least, self.every = per_slot, least, every
        self.limit = fallback
        self._read_at: float | None = None

    def due(self) -> bool:
        """Whether to read the slots now (then it is not due again for ``every`` seconds)."""
        now = time.monotonic()
        if self._read_at is not None and now - self._read_at < self.every:
            return False
        self._read_at = now
        return True

    def learn(self, slots: int) -> int:
        if slots:
            self.limit = max(self.least, self.per_slot * slots)
        return self.limit


class InFlight(Sizing):
    """A callable limit for the dispatch engine (``max_in_flight``): :func:`default_in_flight`
    of the slots of the live workers that take ``queue``, read through ``app``'s broker at
    most every :data:`REREAD_SECONDS`. Until one is known (no worker beats yet, or the broker
    refused the read: a Redis user without this grant) ``fallback`` slots; a read that fails
    later keeps the last limit."""

    def __init__(self, app: Any, fallback: int, queue: str = CPU_QUEUE,
                 every: float = REREAD_SECONDS) -> None:
        super().__init__(default_in_flight(fallback), every=every)
        self.app, self.queue = app, queue

    def __call__(self) -> int:
        return self.learn(self._slots()) if self.due() else self.limit

    def _slots(self) -> int:
        entries = read_slots(self.app)
        return slots_in(entries, self.queue) if entries is not None else 0


def read_slots(app: Any) -> Mapping[Any, Any] | None:
    """The workers' ``crypto_ml:slots`` hash through ``app``'s broker; None when the broker
    refused the read (a Redis user without this grant) or is away."""
    try:
        with app.connection_for_write() as conn, conn.default_channel.conn_or_acquire() as client:
            return dict(client.hgetall(keys.SLOTS))
    except PUBLISH_ERRORS as exc:
        log.debug("could not read the workers' slots (%s)", exc)
        return None


class Unserved:
    """Says once per queue, after ``after`` seconds with no outcome, that the run's messages
    wait on a queue no live worker takes (none started, all gone, or started with other
    ``-Q`` queues), instead of the run waiting out its ``--timeout`` without a word. A read
    the broker refuses (a Redis user without the grant) says nothing."""

    def __init__(self, app: Any, say: Callable[[str], None],
                 after: float = UNSERVED_SECONDS) -> None:
        self.app, self.say, self.after = app, say, after
        self.told: set[str] = set()
        self._sizing = Sizing(0, every=REREAD_SECONDS)

    def check(self, pending: Iterable[Message], quiet_for: float) -> None:
        """``pending``: the run's messages pending (a view, read only when it is time to
        look); ``quiet_for``: seconds since the last outcome (or the first message)."""
        if quiet_for < self.after or not self._sizing.due():
            return
        waiting = {task_queue(self.app, m.task, m.kwargs) for m in pending} - self.told
        if not waiting:
            return
        entries = read_slots(self.app)
        if entries is None:
            return
        for queue in sorted(q for q in waiting if not slots_in(entries, q)):
            self.told.add(queue)
            self.say(f"waiting: no live worker takes queue {queue!r} (none beat in the last "
                     f"{FRESH_SECONDS:g} s); its tasks stay queued until one starts "
                     f"(celery -A crypto_ml worker -Q {queue}) or --timeout gives up")
