"""What bounds a runaway Lua script: every consuming role may run EVALSHA (kombu's scripts),
so a role's script could loop. Redis answers every other client BUSY once a script has run
``lua-time-limit`` ms (``busy-reply-threshold`` in Redis 7; 5,000 by default, as the
deployments run it) instead of making them wait, and the operator's ``SCRIPT KILL`` ends
it. Real Redis (the embedded server), the worker's own ACL user."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.ops.processes import wait_until

pytestmark = pytest.mark.integration
THRESHOLD_SECONDS = 5.0  # Redis's default lua-time-limit / busy-reply-threshold


def test_a_runaway_script_gets_busy_answers_then_the_operator_kills_it() -> None:
    with LocalCluster(workers=1) as cluster:
        worker = redis.Redis.from_url(cluster.url_for("worker"))
        sha = worker.script_load("while true do end")
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                worker.evalsha(sha, 0)
            except redis.RedisError as exc:
                outcome.append(exc)

        started = time.monotonic()
        threading.Thread(target=run, daemon=True).start()
        operator = cluster.client()
        busy: list[float] = []

        def answered_busy() -> bool:
            try:
                operator.ping()
            except redis.exceptions.ResponseError as exc:
                if "BUSY" in str(exc):
                    busy.append(time.monotonic() - started)
                    return True
                raise
            return False

        wait_until(answered_busy, 30, "Redis to answer BUSY")
        assert THRESHOLD_SECONDS - 0.5 <= busy[0] <= THRESHOLD_SECONDS + 5, busy
        assert operator.script_kill()
        wait_until(lambda: bool(outcome), 10, "the script to end")
        assert "killed" in str(outcome[0]).lower(), outcome
        assert operator.ping()
