"""Task messages built without a connection, as kombu's Redis transport stores them.

Celery's own publishing (``send_task``) is blocking I/O. An asyncio server (the HTTP API)
builds the same message here, from Celery's own ``as_task_v2``, and pushes it itself with
one ``LPUSH`` on :mod:`redis.asyncio`: the workers cannot tell the two apart (a test
compares them key by key). What differs: no ``task-sent`` event is published (Flower shows
such a task from its ``task-received``), and no priority (every message of the product has
the default one).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from celery import Celery
from kombu.serialization import dumps

from crypto_ml.ops.flower import send_options
from crypto_ml.worker.app import route_task


def task_queue(app: Celery, task: str, kwargs: dict[str, Any]) -> str:
    """The queue the product's router sends ``task`` with ``kwargs`` to."""
    route = route_task(task, (), kwargs, {}) or {}
    return str(route.get("queue") or app.conf.task_default_queue)


def task_envelope(app: Celery, task: str, kwargs: dict[str, Any], task_id: str,
                  expires: float | None) -> tuple[str, bytes]:
    """``(queue, message)``: what ``app.send_task(task, kwargs=kwargs, task_id=task_id,
    expires=expires)`` would push onto the Redis list ``queue``."""
    queue = task_queue(app, task, kwargs)
    shown = send_options(kwargs)
    message = app.amqp.as_task_v2(task_id, task, (), kwargs, expires=expires, ignore_result=None,
                                  reply_to=app.thread_oid, **shown)
    content_type, encoding, body = dumps(message.body, serializer=app.conf.task_serializer)
    raw = body if isinstance(body, bytes) else body.encode()
    properties = {**message.properties, **shown, "delivery_mode": 2,
                  "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                  "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
    if expires is not None:
        properties["expiration"] = str(int(expires * 1000))
    envelope = {"body": base64.b64encode(raw).decode(), "content-encoding": encoding,
                "content-type": content_type, "headers": message.headers,
                "properties": properties}
    return queue, json.dumps(envelope).encode()
