"""Chaos: 20,000 forecasts while workers are killed at five points of the run, new ones start
and Redis restarts once. Every forecast arrives exactly once, no task runs more than
CRYPTO_ML_MAX_DELIVERIES times, Redis is left as it was and the manager's memory stays
bounded. Real Redis (AOF on, as shipped), real workers, real SIGKILLs.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil
import pytest
import redis
from fault_helpers import FAST_LIVENESS, app_for, wait_for_drained, worker_logs

from crypto_ml.core import keys
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.engine import redelivery_bound
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.app import UNACKED_MUTEX_SECONDS
from crypto_ml.worker.liveness import held_key
from crypto_ml.worker.requests import ForecastRequest

pytestmark = pytest.mark.integration

FORECASTS = 20_000
# faults keyed to progress (the share of forecasts arrived), not to time: the 20,000 take
# 4-15 s depending on the machine, and each fault must land within the run (the run's result
# callback waits for the faults due so far: Chaos.keep_up)
KILLS_AT = (0.10, 0.25, 0.40, 0.70, 0.85)
RESTART_AT = 0.55
WORKERS = 4


def live_workers(cluster: LocalCluster) -> list[int]:
    return [i for i, p in enumerate(cluster.workers) if p.poll() is None]


class Chaos(threading.Thread):
    """Kills a random worker (one running a task, if any) at each share of :data:`KILLS_AT`
    of the forecasts arrived, and starts a new one; restarts Redis once, at
    :data:`RESTART_AT`."""

    def __init__(self, cluster: LocalCluster, progress: Callable[[], float]) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.progress = progress
        self.stop = threading.Event()
        # processes started by a thread are ended when it exits (PR_SET_PDEATHSIG is per
        # thread), so this one lives until the cluster has been stopped
        self.exit = threading.Event()
        self.idle = threading.Event()
        self.kills = 0
        self.started = 0
        self.redis_restarts = 0
        self.random = random.Random(12)
        self.faults = sorted([(at, "kill") for at in KILLS_AT] + [(RESTART_AT, "restart")])
        self.landed = 0  # faults done so far
        self.landing = threading.Condition()

    def keep_up(self) -> None:
        """Hold the caller (the run's result callback) until every fault due at this progress
        has landed, so that a fast machine cannot finish the run ahead of its faults."""
        with self.landing:
            self.landing.wait_for(lambda: self.stop.is_set() or self.landed >= sum(
                at <= self.progress() for at, _ in self.faults), timeout=60)

    def holds_a_task(self, name: str) -> bool:
        """Whether worker ``name`` has recorded a delivery (running or reserved) right now."""
        try:
            client = self.cluster.client()
            return any(client.hlen(held_key(m.decode())) for m in client.smembers(keys.WORKERS)
                       if m.decode().startswith(f"{name}/"))
        except redis.RedisError:
            return False

    def run(self) -> None:
        for at, fault in self.faults:
            while not self.stop.is_set() and self.progress() < at:
                self.stop.wait(0.02)
            if self.stop.is_set():
                break
            if fault == "restart":
                self.cluster.restart_redis()  # SIGTERM, as an orchestrator; AOF keeps the queue
                self.redis_restarts += 1
            else:
                self.kill_one()
            with self.landing:
                self.landed += 1
                self.landing.notify_all()
        self.idle.set()
        self.exit.wait()

    def kill_one(self) -> None:
        alive = live_workers(self.cluster)
        if len(alive) > 1:
            busy = [i for i in alive if self.holds_a_task(self.cluster.worker_names[i])]
            victim = self.cluster.workers[self.random.choice(busy or alive)]
            os.killpg(victim.pid, signal.SIGKILL)  # node lost: worker and pool at once
            victim.wait(10)
            self.kills += 1
        if len(live_workers(self.cluster)) < WORKERS:
            self.cluster.add_worker()
            self.started += 1


def redis_state(cluster: LocalCluster) -> tuple[int, Counter[str]]:
    """used_memory and the keys by kind (their name up to the first ':' or digit run)."""
    client = cluster.client()
    kinds = Counter(re.sub(r"[:.].*", "", k.decode()) for k in client.scan_iter(count=1000)
                    if b"pidbox" not in k)  # the reply queue of the start-up ping expires
    return int(client.info("memory")["used_memory"]), kinds


def lasting_keys(cluster: LocalCluster, bound: int) -> Counter[str]:
    """The keys by kind, less the two that must expire on their own: kombu's restore lock
    (a worker killed during its restore sweep leaves it behind) within
    UNACKED_MUTEX_SECONDS, and the mark of a finished run (a redelivery after the run's
    end is skipped, not computed) within the redelivery bound."""
    kinds = redis_state(cluster)[1]
    client = cluster.client()
    if kinds.pop("unacked_mutex", 0):
        ttl = client.ttl("unacked_mutex")
        assert ttl == -2 or 0 < ttl <= UNACKED_MUTEX_SECONDS, f"unacked_mutex ttl {ttl}"
    for key in client.scan_iter(keys.pattern(keys.CLOSED)):
        kinds["crypto_ml"] -= 1
        assert 0 < client.ttl(key) <= bound, f"{key!r} ttl {client.ttl(key)}"
    return +kinds


@pytest.mark.slow
def test_chaos_every_forecast_exactly_once() -> None:
    requests = [ForecastRequest(f"c{i:05d}", "naive", [1.0 + (i % 7), 2.0, 3.0, 4.0], 2)
                for i in range(FORECASTS)]
    chaos: list[Chaos] = []
    try:
        # fast liveness: a killed worker's tasks come back within seconds, so the five kills
        # cost seconds, not a minute
        with LocalCluster(workers=WORKERS, appendonly=True, env={**os.environ, **FAST_LIVENESS}
                          ) as cluster:
            app = app_for(cluster)
            bound = redelivery_bound(app)
            wait_until(lambda: cluster.client().scard(keys.WORKERS) == WORKERS, 30, "heartbeats")
            memory_before, keys_before = redis_state(cluster)
            me = psutil.Process()
            rss_before = me.memory_info().rss
            peak = [rss_before]
            sampling = threading.Event()

            def sample_rss() -> None:
                while not sampling.wait(0.2):
                    peak[0] = max(peak[0], me.memory_info().rss)

            threading.Thread(target=sample_rss, daemon=True).start()
            arrived: Counter[tuple[str, str]] = Counter()
            chaos.append(Chaos(cluster, progress=lambda: len(arrived) / FORECASTS))
            chaos[0].start()
            started = time.monotonic()
            err = io.StringIO()
            # lost messages (about one per hundred kills) looked for every 3 s, not 15
            manager = CryptoManager(app=app, settings=Settings(batch_size=20, lost_check_seconds=3),
                                    err=err)

            def arrive(result: dict[str, Any]) -> None:
                arrived.update([(result["coin"], result["model"])])
                chaos[0].keep_up()

            report = manager.dispatch(requests, timeout=300, on_result=arrive)
            seconds = time.monotonic() - started
            chaos[0].stop.set()
            assert chaos[0].idle.wait(60)
            sampling.set()

            logs = worker_logs(cluster)
            runs = [int(n) for n in re.findall(r": delivery (\d+) of at most", logs)]
            counts = {
                "forecasts": len(arrived), "failed": len(report.failed), "seconds": round(seconds),
                "kills": chaos[0].kills, "workers_started": chaos[0].started,
                "redis_restarts": chaos[0].redis_restarts, "redelivered_messages": len(runs),
                "max_delivery": max(runs, default=1),
                "resent_lost_messages": err.getvalue().count("resent task"),
                "manager_rss_growth_mb": round((peak[0] - rss_before) / 2**20),
            }
            print(counts)
            assert report.failed == {}, list(report.failed.items())[:3]
            assert len(arrived) == FORECASTS and set(arrived.values()) == {1}  # each exactly once
            assert chaos[0].kills >= 3 and chaos[0].redis_restarts == 1
            assert max(runs, default=1) <= 3 and "TooManyDeliveries" not in logs
            assert counts["manager_rss_growth_mb"] < 300

            # Redis back to where it started: nothing queued or held, no results or counters
            # left, and the killed workers' heartbeat keys swept away
            wait_for_drained(cluster, timeout=60)
            alive = len(live_workers(cluster))
            wait_until(lambda: cluster.client().scard(keys.WORKERS) == alive, 60,
                       "the dead workers swept")
            # a worker's held hash is rewritten at its next beat (2 s) after its last ack
            with contextlib.suppress(ConfigError):  # the assertion below names the keys
                wait_until(lambda: lasting_keys(cluster, bound) == keys_before, 15,
                           "keys as before")
            memory_after, keys_after = redis_state(cluster)[0], lasting_keys(cluster, bound)
            print({"redis_used_memory_before": memory_before, "after": memory_after,
                   "keys_before": dict(keys_before), "keys_after": dict(keys_after)})
            assert keys_after == keys_before, (keys_before, keys_after)
            assert memory_after < memory_before + 512 * 1024
    finally:
        for thread in chaos:
            thread.exit.set()
