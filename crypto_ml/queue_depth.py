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

``python -m crypto_ml.queue_depth --port 9808`` serves ``GET /`` as JSON
(``{"cpu": {"ready": 3, "reserved": 2, "total": 5}, "gpu": {...}}``) for KEDA's
``metrics-api`` scaler, and ``GET /healthz``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from crypto_ml.acl import check_credentials
from crypto_ml.celery_app import CPU_QUEUE, GPU_QUEUE
from crypto_ml.errors import ConfigError
from crypto_ml.settings import Settings

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
                self._reply(503, {"error": f"broker unreachable: {exc}"})
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crypto_ml.queue_depth",
        description="Serve per-queue depth (waiting + reserved tasks) of the broker as JSON.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"({DEFAULT_PORT})")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--queues", default=f"{CPU_QUEUE},{GPU_QUEUE}",
                        help="comma list of queues to report (cpu,gpu)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"crypto-ml: error: {exc}", file=sys.stderr)
        return 2
    if not settings.broker_url:
        print("crypto-ml: error: set CRYPTO_ML_BROKER_URL to the Redis broker to watch",
              file=sys.stderr)
        return 2
    try:
        check_credentials(settings.broker_url)  # wrong user or password: say so and stop
    except ConfigError as exc:
        print(f"crypto-ml: error: {exc}", file=sys.stderr)
        return 2
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5,
                                  socket_timeout=5)
    try:
        server = make_server(client, queues, args.port, args.host)
    except OSError as exc:
        print(f"crypto-ml: error: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 2
    print(f"serving queue depth of {', '.join(queues)} on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
