"""The API's task messages (crypto_ml.dispatch.envelope, pushed with one LPUSH on asyncio)
are the messages Celery's own ``send_task`` stores, key by key, on a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.engine import publish
from crypto_ml.dispatch.envelope import task_envelope
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import PARTS_TASK_NAME, TASK_NAME

pytestmark = pytest.mark.integration
#: what differs between two messages of the same task: when each was made, and a tag per send
PER_SEND = {"headers.expires", "properties.delivery_tag"}


@pytest.fixture(scope="module")
def bare() -> Iterator[LocalCluster]:
    """A Redis server whose worker never starts: the messages stay in their queues."""
    cluster = LocalCluster(workers=1)
    cluster.start_redis()
    yield cluster
    cluster.stop()


def flat(message: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in message.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize(("task", "kwargs", "queue"), [
    (PARTS_TASK_NAME, {"parts": [{"id": "p", "items": [{"coin": "a", "model": "linear",
                                                        "prices": [1.0, 2.0], "horizon": 3}]}]},
     "cpu"),
    (TASK_NAME, {"coin": "a", "model": "lstm", "prices": [1.0, 2.0], "horizon": 3}, "gpu"),
])
def test_the_api_message_is_the_one_send_task_stores(bare: LocalCluster, task: str,
                                                     kwargs: dict[str, Any], queue: str) -> None:
    app = create_app(Settings().with_broker(bare.broker_url))
    publish(app, task, kwargs, "task-1", 60.0)
    built_queue, built = task_envelope(app, task, kwargs, "task-1", 60.0)
    with bare.client() as redis_client:
        stored = json.loads(redis_client.rpop(queue))
    ours = json.loads(built)
    assert built_queue == queue
    assert {k: v for k, v in flat(ours).items() if k not in PER_SEND} == \
        {k: v for k, v in flat(stored).items() if k not in PER_SEND}
    assert ours["headers"]["expires"][:16] == stored["headers"]["expires"][:16]  # same minute
