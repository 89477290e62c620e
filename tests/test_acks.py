"""A worker cut off from Redis while it acknowledges a message keeps taking work: kombu's Redis
QoS counted the message as held for good when Redis did not answer the ack, so the prefetch
limit (1 a process) was full and the worker never asked for another (a nemesis run: a worker
cut off for a minute never served again). Real Redis, real kombu channel."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection

from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.worker import acks

pytestmark = pytest.mark.integration


def test_an_ack_redis_does_not_answer_frees_the_prefetch_slot_all_the_same() -> None:
    acks.install()  # what every worker does at start (crypto_ml.worker.app)
    cluster = LocalCluster(workers=1)
    cluster.start_redis()
    try:
        with Connection(cluster.broker_url, transport_options={"socket_timeout": 2}) as conn:
            channel = conn.default_channel
            channel.basic_qos(0, 1, False)  # one message at a time, as a worker process
            channel.queue_declare("q-acks")
            channel.basic_publish(channel.prepare_message("x"), exchange="", routing_key="q-acks")
            message = channel.basic_get("q-acks", no_ack=False)
            assert message is not None and not channel.qos.can_consume()  # its slot is taken
            assert cluster.redis is not None
            cluster.redis.kill()  # Redis goes away before the ack
            cluster.redis.wait()
            with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
                message.ack()  # still an error, which kombu logs as "Couldn't ack"
            assert channel.qos.can_consume()  # the slot is free: the worker takes work again
    finally:
        cluster.stop()
