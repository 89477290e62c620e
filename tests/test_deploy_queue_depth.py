"""The queue depth KEDA scales on: tasks waiting (every priority list) plus tasks reserved by
workers (kombu's ``unacked`` hash), read from a real Redis that real kombu producers and
consumers use."""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Consumer

from crypto_ml.core.sentinel import redis_client
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until
from crypto_ml.ops.queue_depth import make_server, queue_depths, queue_keys
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import TASK_NAME

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[LocalCluster]:
    """A real redis-server (no workers: the test plays the worker with a kombu consumer)."""
    server = LocalCluster(workers=1)
    server.start_redis()
    yield server
    server.stop()


def send(app: Any, model: str, priority: int | None = None) -> None:
    kwargs = {"coin": "bitcoin", "model": model, "prices": [1.0, 2.0, 3.0], "horizon": 1}
    app.send_task(TASK_NAME, kwargs=kwargs, priority=priority)


def test_depth_counts_every_priority_list_and_reserved_tasks(broker: LocalCluster) -> None:
    app = create_app(Settings().with_broker(broker.broker_url))
    client = broker.client()
    for _ in range(3):
        send(app, "linear")
    for _ in range(2):
        send(app, "linear", priority=5)
    send(app, "lstm")
    # the keys the exporter reads are the ones kombu really wrote
    lengths = [client.llen(key) for key in queue_keys("cpu")]
    assert sum(lengths) == 5 and lengths[0] == 3 and max(lengths[1:]) == 2
    assert client.llen("gpu") == 1
    assert queue_depths(client, ["cpu", "gpu"]) == {
        "cpu": {"ready": 5, "reserved": 0, "total": 5},
        "gpu": {"ready": 1, "reserved": 0, "total": 1}}

    received: list[Any] = []
    with app.connection_for_read() as conn, Consumer(
            conn, queues=[app.amqp.queues["cpu"]], accept=["json", "msgpack"],
            callbacks=[lambda body, message: received.append(message)]) as consumer:
        consumer.qos(prefetch_count=1)  # as a worker with prefetch 1 and acks_late
        conn.drain_events(timeout=10)
        assert len(received) == 1
        assert client.hlen("unacked") == 1
        depth = queue_depths(client, ["cpu", "gpu"])
        assert depth["cpu"] == {"ready": 4, "reserved": 1, "total": 5}  # list length alone: 4
        assert depth["gpu"]["reserved"] == 0
        received[0].ack()
    assert queue_depths(client, ["cpu"])["cpu"] == {"ready": 4, "reserved": 0, "total": 4}


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_endpoint_serves_depths_and_reports_a_lost_broker(broker: LocalCluster) -> None:
    client = redis.Redis.from_url(broker.broker_url, socket_connect_timeout=1, socket_timeout=1)
    server = make_server(client, ["cpu", "gpu"], port=0, host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        send(create_app(Settings().with_broker(broker.broker_url)), "gru")
        status, body = get(base + "/")
        assert status == 200
        assert body["gpu"] == {"ready": 1, "reserved": 0, "total": 1}
        assert body["cpu"]["total"] == 0
        assert get(base + "/healthz") == (200, {"ok": True})
        assert get(base + "/metrics")[0] == 404
        broker.stop()
        status, body = get(base + "/")
        assert status == 503 and "broker unreachable" in body["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_503_from_sentinels_that_do_not_answer_names_no_password() -> None:
    """redis-py's MasterNotFoundError prints the client, the Sentinels' password with it, and
    the 503 body quoted it to anyone (the exporter listens on 0.0.0.0 by default)."""
    client = redis_client(f"sentinel://:master-pw@127.0.0.1:{free_port()}", "mymaster",
                          "sentinel-pw", socket_connect_timeout=1, socket_timeout=1)
    server = make_server(client, ["cpu"], port=0, host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, body = get(f"http://127.0.0.1:{server.server_address[1]}/")
        assert status == 503 and body["error"] == (
            "broker unreachable: no Sentinel there names the master; check the URL and "
            "CRYPTO_ML_SENTINEL_MASTER")
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_watches_the_broker_given_with_broker(broker: LocalCluster,
                                                          tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    proc = spawn([sys.executable, "-m", "crypto_ml", "queue-depth", "--broker", broker.broker_url,
                  "--host", "127.0.0.1", "--port", str(port)], tmp_path / "exporter.log",
                 env=env)
    try:
        send(create_app(Settings().with_broker(broker.broker_url)), "linear")

        def answers() -> bool:
            try:
                return get(f"http://127.0.0.1:{port}/")[1]["cpu"]["ready"] == 1
            except OSError:
                return False

        wait_until(answers, 30, "queue-depth --broker answering",
                   lambda: (tmp_path / "exporter.log").read_text() if proc.poll() else None)
    finally:
        terminate(proc)
