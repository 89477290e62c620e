"""A message's bulk (a table chunk's values), stored in Redis beside the message under the
task's id (:func:`~crypto_ml.worker.chunks.payload_key`), where the worker reads it."""

from __future__ import annotations

import redis
from celery import Celery
from redis.connection import PythonRespSerializer

from crypto_ml.worker.chunks import payload_key

PACK_CUTOFF = 6000  # bytes: a larger value is sent as its own buffer, not copied


def store_payload(app: Celery, task_id: str, payload: bytes, seconds: int) -> None:
    """Store a message's bulk beside it for ``seconds``
    (:func:`~crypto_ml.dispatch.engine.payload_seconds`).

    The command is packed by redis-py's pure-Python packer, which sends a large value as it
    is; the hiredis packer that ``SET`` would use copies it three times (a fifth of the
    manager's CPU on a million-series run)."""
    pool = app.backend.client.connection_pool
    connection = pool.get_connection()
    packer = PythonRespSerializer(PACK_CUTOFF, connection.encoder.encode)
    try:
        connection.send_packed_command(packer.pack(
            "SET", payload_key(task_id), payload, "EX", seconds))
        connection.read_response()  # raises what Redis answered no with (OOM, NOPERM)
    except (redis.ConnectionError, redis.TimeoutError):
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
