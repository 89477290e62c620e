"""Bounded at-least-once delivery: how many times each task has been started.

Tasks are acknowledged late, so a task whose worker dies is delivered again:
at once when only the pool process died (the worker rejects the message back
to the queue), after the broker's visibility timeout when the whole worker
died. A task that kills every worker it runs on would loop forever, so each
start is counted in Redis (the result backend, shared by every worker) and a
delivery past the limit fails the task instead of running it.

A delivery can also come after the run that sent it has ended: the first worker stored
the result and died before its ack, the run read the result, freed it and finished, and
the message is handed out again. The dispatch engine marks each of its messages with its
run's id (header :data:`RUN_HEADER`) and, when the run ends, sets :func:`closed_key` for
as long as a redelivery can still come; a worker skips a message of a closed run, so no
forecast is computed, and no result stored, for nobody.
"""

from __future__ import annotations

from typing import Any

from crypto_ml.core import keys

#: The message header that names the dispatch run a task belongs to.
RUN_HEADER = "crypto_ml_run"


def delivery_key(task_id: str) -> str:
    """The Redis key that counts the starts of ``task_id``."""
    return keys.DELIVERIES + task_id


def closed_key(run_id: str) -> str:
    """The Redis key that says dispatch run ``run_id`` has ended."""
    return keys.CLOSED + run_id


def count_delivery(client: Any, task_id: str, ttl: int, result_key: str | bytes,
                   run_id: str | None = None) -> tuple[int, bytes | None, bool]:
    """Count one more start of ``task_id``; returns how many there have been, this one
    included, the task's stored result (``result_key``'s value, None when absent) and
    whether its run (``run_id``) has ended, all read in the same round trip.

    The counter expires ``ttl`` seconds after the last start, so it never
    outlives the task's result.
    """
    pipe = client.pipeline()
    pipe.incr(delivery_key(task_id))
    pipe.expire(delivery_key(task_id), ttl)
    pipe.get(result_key)
    if run_id:
        pipe.exists(closed_key(run_id))
    count, _, stored, *closed = pipe.execute()
    return int(count), stored, bool(closed and closed[0])
