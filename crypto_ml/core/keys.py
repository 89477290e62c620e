"""The Redis keys crypto-ml keeps beside Celery's and kombu's, each prefix named once.

The modules that read and write them build their keys from these names, and
:mod:`crypto_ml.core.acl` grants each role the matching patterns (``prefix*``), so a
key and the permission to touch it cannot drift apart."""

from __future__ import annotations

DELIVERIES = "crypto_ml:deliveries:"  # + task id: its starts (the delivery limit)
CLOSED = "crypto_ml:closed:"  # + run id: a dispatch run that has ended
RUN = "crypto_ml:run:"  # + run id: a run the HTTP API saved
JOB = "crypto_ml:job:"  # + job id: a table job of the HTTP API (and its cancel flag)
MODEL = "crypto_ml:model:"  # + digest: a trained model in the model store
PAYLOAD = "crypto_ml:payload:"  # + task id: a table chunk's values, beside its message
WORKERS = "crypto_ml:workers"  # the set of workers that beat
WORKER = "crypto_ml:worker:"  # + worker id + ":alive" / ":held": one worker's heartbeat
SLOTS = "crypto_ml:slots"  # hash: worker id -> "<pool processes> <last beat> <queues>"


def pattern(prefix: str) -> str:
    """The pattern (ACL, SCAN) of every key under ``prefix``."""
    return prefix + "*"
