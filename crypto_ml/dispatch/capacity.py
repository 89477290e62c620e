"""How many messages a table run keeps queued or running: two per task slot of the workers
that beat now and take the run's queue (each says its pool's size and its queues in
``crypto_ml:slots`` with each heartbeat,
:mod:`crypto_ml.worker.liveness`), read again every few seconds, so workers added during a run
(``kubectl scale``, KEDA) get work and the queue KEDA scales on stays deep enough to scale it.
One computing and one waiting per slot keeps every pool process busy while Redis holds a
bounded number of chunks.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from crypto_ml.core import keys
from crypto_ml.dispatch.broker_errors import PUBLISH_ERRORS
from crypto_ml.worker.app import CPU_QUEUE

log = logging.getLogger(__name__)

PER_SLOT = 2
LEAST = 4
REREAD_SECONDS = 5.0
#: a beat older than this is a worker gone (beats come every 2 s; clocks of hosts differ a little)
FRESH_SECONDS = 30.0


def default_in_flight(slots: int) -> int:
    """Messages in flight for ``slots`` task slots: two per slot, at least 4."""
    return max(LEAST, PER_SLOT * slots)


def live_slots(client: Any, queue: str, fresh: float = FRESH_SECONDS) -> int:
    """The task slots of the workers that take ``queue`` and beat within ``fresh`` seconds (0
    when none did); a worker that stopped is dropped from the hash by its own shutdown or by
    the sweep."""
    now, slots = time.time(), 0
    for value in client.hgetall(keys.SLOTS).values():
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        size, beat, queues = [*text.split(" ", 2), "", ""][:3]
        try:
            if now - float(beat) <= fresh and (not queues or queue in queues.split(",")):
                slots += max(0, int(size))
        except ValueError:  # not what a worker writes: skipped
            continue
    return slots


class InFlight:
    """A callable limit for the dispatch engine (``max_in_flight``): :func:`default_in_flight`
    of the slots of the live workers that take ``queue``, read through ``app``'s broker at
    most every :data:`REREAD_SECONDS`. Until one is known (no worker beats yet, or the broker
    refused the read: a Redis user without this grant) ``fallback`` slots; a read that fails
    later keeps the last limit."""

    def __init__(self, app: Any, fallback: int, queue: str = CPU_QUEUE,
                 every: float = REREAD_SECONDS) -> None:
        self.app, self.queue, self.every = app, queue, every
        self.limit = default_in_flight(fallback)
        self._read_at: float | None = None

    def __call__(self) -> int:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.every:
            self._read_at = now
            slots = self._slots()
            if slots:
                self.limit = default_in_flight(slots)
        return self.limit

    def _slots(self) -> int:
        try:
            with self.app.connection_for_write() as conn, \
                    conn.default_channel.conn_or_acquire() as client:
                return live_slots(client, self.queue)
        except PUBLISH_ERRORS as exc:
            log.debug("could not read the workers' slots (%s); in flight: %d", exc, self.limit)
            return 0
