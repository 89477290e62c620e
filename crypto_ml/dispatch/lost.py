"""Task messages the broker lost, found and sent again by the manager (the HTTP API's
asyncio side: :mod:`crypto_ml.dispatch.async_lost`).

kombu's Redis transport takes a message with ``BRPOP`` and only then records it in
its ``unacked`` hash. A worker killed between the two (a window of milliseconds,
seen about once per hundred SIGKILLs of idle workers in the chaos test), or a Redis
failover that drops the newest writes, loses the message: no queue holds it, no
worker will run it, and no result will come. The manager knows every task it waits
for, so every ``check_every`` seconds (``CRYPTO_ML_LOST_CHECK_SECONDS``) it looks for
tasks that have no state in the result backend and whose message is neither queued nor
unacknowledged. A task missing in two checks in a row (a message in flight is never
missing for that long) is sent again under the same id; the delivery counter and the
duplicate-skip guard of the workers make a resend of a task that did run harmless.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from crypto_ml.core.settings import Settings
from crypto_ml.ops.queue_depth import queue_keys

log = logging.getLogger(__name__)

CHECK_EVERY = float(Settings.lost_check_seconds)


def task_id_of(envelope: Any) -> str | None:
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    return headers.get("id") if isinstance(headers, dict) else None


def in_flight(client: Any, queues: Iterable[str]) -> set[str]:
    """Ids of the tasks whose message is queued or unacknowledged in the broker now."""
    with client.pipeline(transaction=False) as pipe:
        read_in_flight(pipe, queues)
        *lists, unacked = pipe.execute()
    return in_flight_ids(lists, unacked)


def read_in_flight(pipe: Any, queues: Iterable[str]) -> None:
    """Queue on ``pipe`` (blocking or asyncio) the reads :func:`in_flight_ids` takes: each
    queue's lists, then the ``unacked`` hash's values."""
    for queue in queues:
        for key in queue_keys(queue):
            pipe.lrange(key, 0, -1)
    pipe.hvals("unacked")


def in_flight_ids(queued: Iterable[Iterable[bytes]], unacked: Iterable[bytes]) -> set[str]:
    """Task ids of the messages in kombu's queue lists and of its ``unacked`` hash's values."""
    ids = {str(task_id_of(json.loads(raw))) for items in queued for raw in items}
    return ids | {str(task_id_of(json.loads(raw)[0])) for raw in unacked}


class LostMessages:
    """Checks a run's pending tasks for lost messages and resends them with ``resend``."""

    def __init__(self, app: Any, pending: Mapping[str, Any], resend: Callable[[str], None],
                 queues: Iterable[str], check_every: float | None = None) -> None:
        self.app = app
        self.pending = pending
        self.resend = resend
        self.queues = list(queues)
        self.check_every = check_every or CHECK_EVERY
        self.next_check = time.monotonic() + self.check_every
        self.suspects: set[str] = set()

    def check(self) -> list[str]:
        """At most every ``check_every`` s: resend the tasks lost in two checks in a row."""
        if time.monotonic() < self.next_check or not self.pending:
            return []
        self.next_check = time.monotonic() + self.check_every
        try:
            lost = self._find()
        except Exception as exc:  # the broker is restarting: look again next time
            log.debug("lost-message check skipped: %s", exc)
            return []
        for task_id in lost:
            self.resend(task_id)
        return lost

    def _find(self) -> list[str]:
        backend = self.app.backend
        ids = list(self.pending)
        with backend.client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.exists(backend.get_key_for_task(task_id))
            has_state = pipe.execute()
        stateless = {t for t, known in zip(ids, has_state, strict=True) if not known}
        if not stateless:
            self.suspects = set()
            return []
        with self.app.connection_for_write() as conn, \
                conn.default_channel.conn_or_acquire() as client:
            missing = stateless - in_flight(client, self.queues)
        lost = sorted(missing & self.suspects)
        self.suspects = missing - set(lost)
        return lost
