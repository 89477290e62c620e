"""An acknowledgement Redis did not answer frees its prefetch slot all the same; and a message
recorded as taken goes back to its queue only while no one has taken it since
(:func:`restore_if_held`, the liveness sweep's).

kombu's Redis ``QoS.ack`` removes the message from Redis (``unacked``, ``unacked_index``)
and then from its own count of messages held. When the first part fails (Redis cut off: the
worker's 10 s read timeout, ``crypto_ml/core/sentinel.py``), the second never runs: the
message still counts against the prefetch limit (1 a process), so ``can_consume()`` stays
false and the worker never takes another message, though its heartbeat is back and it looks
alive. The nemesis caught it (``tests/test_nemesis.py``: a worker cut off for a minute never
served again). Here the local count is always updated and the error still raised, so kombu
still logs ``Couldn't ack``. The message stays in Redis as taken; this worker no longer
holds it, so no beat refreshes it, and the orphan sweep (:mod:`crypto_ml.worker.liveness`)
gives it back after twice the dead-after time: run twice at worst, never lost, never a
worker that stops taking work. ``reject`` (a task that asks to be retried, or a lost pool
process) is done the same way.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

SCORE_TOLERANCE = 1e-3  # scores are delivery times; another delivery differs by far more


def _ack(qos: Any, delivery_tag: str) -> None:
    try:
        qos._remove_from_indices(delivery_tag).execute()
    finally:
        virtual.QoS.ack(qos, delivery_tag)


def _reject(qos: Any, delivery_tag: str, requeue: bool = False) -> None:
    if not requeue:  # as kombu's: a reject that does not requeue is an ack
        _ack(qos, delivery_tag)
        return
    try:
        qos.restore_by_tag(delivery_tag, leftmost=True)
    finally:
        virtual.QoS.ack(qos, delivery_tag)


def install() -> None:
    """Make kombu's Redis QoS free a slot whatever Redis answers (once per process)."""
    kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
    kombu_redis.QoS.reject = _reject  # type: ignore[method-assign]


def restore_if_held(channel: Any, client: Any, tag: bytes | str, score: bytes | str) -> bool:
    """Move message ``tag`` from kombu's unacked hash back to the front of its queue,
    only if its delivery score is still ``score`` (no one else has taken it since)."""
    expected = float(score)
    index, unacked = channel.unacked_index_key, channel.unacked_key
    done: list[bool] = []

    def transaction(pipe: Any) -> None:
        done.clear()
        current = pipe.zscore(index, tag)
        raw = pipe.hget(unacked, tag)
        pipe.multi()
        if current is None or raw is None or abs(float(current) - expected) > SCORE_TOLERANCE:
            return
        pipe.zrem(index, tag)
        pipe.hdel(unacked, tag)
        message, exchange, routing_key = loads(bytes_to_str(raw))
        channel._do_restore_message(message, exchange, routing_key, pipe, leftmost=False)
        done.append(True)

    client.transaction(transaction, unacked, index)
    return bool(done)
