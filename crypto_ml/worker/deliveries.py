"""Bounded at-least-once delivery: how many times each task has been started.

Tasks are acknowledged late, so a task whose worker dies is delivered again:
at once when only the pool process died (the worker rejects the message back
to the queue), after the broker's visibility timeout when the whole worker
died. A task that kills every worker it runs on would loop forever, so each
start is counted in Redis (the result backend, shared by every worker) and a
delivery past the limit fails the task instead of running it.
"""

from __future__ import annotations

from typing import Any

KEY_PREFIX = "crypto_ml:deliveries:"


def delivery_key(task_id: str) -> str:
    """The Redis key that counts the starts of ``task_id``."""
    return f"{KEY_PREFIX}{task_id}"


def count_delivery(client: Any, task_id: str, ttl: int,
                   result_key: str | bytes) -> tuple[int, bytes | None]:
    """Count one more start of ``task_id``; returns how many there have been, this one
    included, and the task's stored result (``result_key``'s value, None when absent), read
    in the same round trip.

    The counter expires ``ttl`` seconds after the last start, so it never
    outlives the task's result.
    """
    pipe = client.pipeline()
    pipe.incr(delivery_key(task_id))
    pipe.expire(delivery_key(task_id), ttl)
    pipe.get(result_key)
    count, _, stored = pipe.execute()
    return int(count), stored
