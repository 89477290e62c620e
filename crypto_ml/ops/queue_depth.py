"""Queue depth for autoscalers: tasks waiting plus tasks reserved by workers, per queue.

A queue's Redis list holds only the tasks nobody has taken yet. With
``task_acks_late`` and prefetch 1 each busy worker process also holds one task
that is no longer in the list: kombu keeps it, until the ack, in the ``unacked``
hash (field: delivery tag; value: JSON ``[message, exchange, routing_key]``).
An autoscaler that reads only the list length undercounts the load by the number
of busy processes and scales workers down while they still work. The depth
reported here is ``ready + reserved``.

Key names come from kombu's Redis transport: a queue's priority-0 messages are
in the list named like the queue, other priority steps in ``<queue>\\x06\\x16<step>``.

``crypto-ml queue-depth --port 9808`` serves ``GET /`` as JSON
(``{"cpu": {"ready": 3, "reserved": 2, "total": 5}, "gpu": {...}}``) for KEDA's
``metrics-api`` scaler, and ``GET /healthz``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from crypto_ml.core.sentinel import redis_problem

DEFAULT_PORT = 9808


def queue_keys(queue: str, steps: Iterable[int] = PRIORITY_STEPS) -> list[str]:
    """The Redis list keys kombu uses for ``queue``, one per priority step."""
    return [f"{queue}{Channel.sep}{step}" if step else queue for step in steps]


def reserved_counts(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """Unacknowledged (reserved or running) messages per queue, from kombu's ``unacked`` hash."""
    counts = dict.fromkeys(queues, 0)
    for _tag, raw in client.hscan_iter(Channel.unacked_key, count=200):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key in counts:
            counts[routing_key] += 1
    return counts


def queue_depths(client: redis.Redis, queues: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{queue: {"ready": n, "reserved": m, "total": n + m}}`` read from the broker now."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    reserved = reserved_counts(client, queues)
    depths = {}
    for i, queue in enumerate(queues):
        ready = int(sum(lengths[i * steps:(i + 1) * steps]))
        depths[queue] = {"ready": ready, "reserved": reserved[queue],
                         "total": ready + reserved[queue]}
    return depths


def make_server(client: redis.Redis, queues: Sequence[str], port: int,
                host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /`` with :func:`queue_depths` and ``GET /healthz``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/", "/healthz"):
                self._reply(404, {"error": f"no such path {self.path}; use / or /healthz"})
                return
            try:
                body: Any = queue_depths(client, queues)
            except redis.RedisError as exc:
                self._reply(503, {"error": f"broker unreachable: {redis_problem(exc)}"})
                return
            self._reply(200, {"ok": True} if self.path == "/healthz" else body)

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape would drown the logs

    return ThreadingHTTPServer((host, port), Handler)
