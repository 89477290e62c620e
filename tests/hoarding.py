"""The prefetch-drift experiment: thousands of tasks through one worker, with failures,
rejections, expired tasks, a killed pool process and a broker restart, while a sampler watches how many
messages each worker holds. Used by tests/test_reliability_hoarding.py and runnable by
hand to compare with the hoarding configuration of before:

    python tests/hoarding.py            # the shipped configuration (no prefetch)
    python tests/hoarding.py --before   # worker_disable_prefetch off, as before issue 12
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fault_helpers import app_for, stop_consuming  # noqa: E402

from crypto_ml.core import keys  # noqa: E402
from crypto_ml.dispatch.cluster import LocalCluster  # noqa: E402
from crypto_ml.ops.processes import wait_until  # noqa: E402
from crypto_ml.ops.queue_depth import queue_depths  # noqa: E402
from crypto_ml.worker.liveness import held_key  # noqa: E402
from crypto_ml.worker.requests import TASK_NAME, ForecastRequest  # noqa: E402

PRICES = [float(x) for x in range(1, 60)]


class Cluster(LocalCluster):
    """A LocalCluster whose workers run ``celery -A APP_MODULE`` (crypto_ml by default)."""

    def __init__(self, workers: int = 1, app_module: str = "crypto_ml",
                 liveness: dict[str, str] | None = None) -> None:
        env = {**os.environ, **(liveness or {}),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
        super().__init__(workers=workers, env=env, appendonly=True)
        self.app_module = app_module

    def worker_command(self, name: str) -> list[str]:
        # the embedded launcher runs crypto_ml.app; another app goes through `celery -A`
        options = super().worker_command(name)[3:]  # after: python -m crypto_ml.worker.launch
        return [sys.executable, "-m", "celery", "-A", self.app_module, "worker", *options]


@dataclass
class Samples:
    """What the sampler saw: the most messages held per worker, in all, and by nobody."""

    max_unacked: int = 0
    max_held: Counter[str] = field(default_factory=Counter)
    max_unheld_seconds: float = 0.0  # the longest a message sat in `unacked` held by nobody
    over_limit: list[str] = field(default_factory=list)
    count: int = 0


class Sampler(threading.Thread):
    """Reads the broker every few ms: each worker's held deliveries (at most its pool
    size), the unacked messages, how long any of them has been held by no worker (an
    orphan, until the sweeper gives it back), and the queue-depth exporter."""

    def __init__(self, cluster: LocalCluster, limit: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client()
        self.limit = limit  # worker -> concurrency (set by the caller as workers join)
        self.samples = Samples()
        self.done = threading.Event()
        self.paused = threading.Event()
        self.unheld_since: dict[bytes, float] = {}

    def run(self) -> None:
        while not self.done.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
                continue
            try:
                self.sample()
            except redis.RedisError:  # the broker restart
                time.sleep(0.05)
                continue
            time.sleep(0.005)

    def sample(self) -> None:
        s = self.samples
        depth = queue_depths(self.client, ["cpu"])["cpu"]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hkeys("unacked").smembers(keys.WORKERS)
            unacked, members = pipe.execute()
        held: set[bytes] = set()
        for member in members:
            tags = self.client.hkeys(held_key(member.decode()))
            worker = member.decode().split("/")[0]
            s.max_held[worker] = max(s.max_held[worker], len(tags))
            held.update(tags)
        s.count += 1
        s.max_unacked = max(s.max_unacked, len(unacked))
        now = time.monotonic()
        unheld = set(unacked) - held
        self.unheld_since = {t: self.unheld_since.get(t, now) for t in unheld}
        s.max_unheld_seconds = max([s.max_unheld_seconds,
                                    *(now - t for t in self.unheld_since.values())])
        allowed = sum(self.limit.values())
        if len(held) > allowed:
            s.over_limit.append(f"{len(held)} held with {allowed} pool process(es)")
        # the exporter's reserved = running + orphans being recovered, never a hoard
        if depth["reserved"] > allowed + len(unheld) or depth["total"] < depth["ready"]:
            s.over_limit.append(f"exporter {depth}, {len(unheld)} held by nobody")


def send_workload(app: Celery, n: int, bad_every: int = 50, unknown_every: int = 97,
                  expired_every: int = 89) -> list[str]:
    """``n`` messages: cheap forecasts, with some failing ones (bad horizon), some for an
    unknown task (the worker rejects them) and some already expired (acked unrun).
    Returns the ids of the forecast tasks expected to succeed or fail."""
    ids = []
    good = ForecastRequest("coin", "naive", PRICES, 3).as_kwargs()
    with app.producer_or_acquire() as producer:
        for i in range(1, n + 1):
            if i % unknown_every == 0:
                app.send_task("crypto_ml.no_such_task", kwargs={}, queue="cpu",
                              producer=producer)
                continue
            if i % expired_every == 0:
                app.send_task(TASK_NAME, kwargs={**good, "coin": f"c{i}"}, expires=0.001,
                              producer=producer)
                continue
            kwargs = {**good, "coin": f"c{i}"}
            if i % bad_every == 0:
                kwargs["horizon"] = 10_000  # InvalidTaskInput
            ids.append(app.send_task(TASK_NAME, kwargs=kwargs, producer=producer).id)
    return ids


def finished(app: Celery, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Meta of every task in ``ids`` that has finished (success or failure); {} while the
    broker is restarting."""
    try:
        return _finished(app, ids)
    except redis.ConnectionError:
        return {}


def _finished(app: Celery, ids: list[str]) -> dict[str, dict[str, Any]]:
    client = app.backend.client
    metas = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for task_id, raw in zip(chunk, client.mget([app.backend.get_key_for_task(t)
                                                    for t in chunk]), strict=True):
            if raw:
                meta = app.backend.decode_result(raw)
                if meta["status"] in ("SUCCESS", "FAILURE"):
                    metas[task_id] = meta
    return metas


def kill_a_pool_process(cluster: LocalCluster, worker: str) -> int:
    """SIGKILL the pool process of ``worker`` (it is replaced; its task is requeued)."""
    parent = psutil.Process(cluster.workers[cluster.worker_names.index(worker)].pid)
    wait_until(lambda: bool(parent.children()), 30, "a pool process")  # (one being replaced)
    child = parent.children()[0]
    child.send_signal(signal.SIGKILL)
    return int(child.pid)


def prefetch_count(app: Celery, worker: str) -> Any:
    """The worker's prefetch window now (``celery inspect stats``)."""
    for _ in range(3):  # a pooled connection may still be the one the restart closed
        try:
            stats = app.control.inspect(destination=[worker], timeout=5).stats() or {}
            return stats.get(worker, {}).get("prefetch_count")
        except redis.ConnectionError:
            continue
    return None


def join_mid_backlog(cluster: LocalCluster, app: Celery, first: str,
                     limit: dict[str, int]) -> str:
    """Start a second worker while the backlog waits: the first stops taking new messages
    (what it already holds, it keeps) until the second has registered, so a fast machine
    cannot drain the queue during the second's start-up. Its name."""
    stop_consuming(app, [first])
    limit[f"extra{len(cluster.workers) + 1}"] = 1  # it may take a task before it answers
    second = cluster.add_worker()
    wait_until(lambda: any(m.decode().startswith(f"{second}/") for m in
                           cluster.client().smembers(keys.WORKERS)), 60, "the second worker")
    return second


def experiment(n: int, app_module: str = "crypto_ml", join_at: float = 0.3,
               liveness: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``n`` messages through one worker; a second joins after ``join_at`` of them.
    ``liveness``: heartbeat settings of the workers (none: the defaults)."""
    with Cluster(workers=1, app_module=app_module, liveness=liveness) as cluster:
        first = cluster.worker_names[0]
        app = app_for(cluster)
        limit = {first: 1}
        sampler = Sampler(cluster, limit)
        sampler.start()
        started = time.monotonic()
        ids = send_workload(app, n)
        sent_seconds = time.monotonic() - started
        wait_until(lambda: len(finished(app, ids)) >= len(ids) // 10, 300, "a tenth done")
        killed = kill_a_pool_process(cluster, first)
        wait_until(lambda: len(finished(app, ids)) >= len(ids) // 5, 300, "a fifth done")
        # a broker restart (AOF keeps the queue): celery's reconnect path resets the window
        sampler.paused.set()
        cluster.restart_redis()
        sampler.client = cluster.client()
        sampler.paused.clear()
        app = app_for(cluster)  # fresh connections (the old pool's are closed by the restart)
        wait_until(lambda: len(finished(app, ids)) >= len(ids) * join_at, 300, "backlog part")
        second = join_mid_backlog(cluster, app, first, limit)
        done_at_join = finished(app, ids)
        assert app.control.add_consumer("cpu", destination=[first], reply=True)
        wait_until(lambda: len(finished(app, ids)) == len(ids), 600, "every task finished")
        total_seconds = time.monotonic() - started
        drift = {w: prefetch_count(app, w) for w in (first, second)}
        sampler.done.set()
        sampler.join()
        metas = finished(app, ids)
        after = [m for t, m in metas.items() if t not in done_at_join]
        by_worker = Counter(m["result"]["worker"] for m in after if m["status"] == "SUCCESS")
        s = sampler.samples
        return {
            "messages": n, "forecast_tasks": len(ids), "send_seconds": round(sent_seconds, 1),
            "seconds": round(total_seconds, 1), "killed_pool_pid": killed,
            "failed": sum(m["status"] == "FAILURE" for m in metas.values()),
            "remaining_at_join": len(ids) - len(done_at_join),
            "done_after_join": {"first": by_worker[first], "second": by_worker[second]},
            "second_share": round(by_worker[second] / max(1, sum(by_worker.values())), 3),
            "prefetch_count_at_end": drift, "max_unacked": s.max_unacked,
            "max_unheld_seconds": round(s.max_unheld_seconds, 1),
            "max_held": dict(s.max_held), "samples": s.count,
            "violations": s.over_limit[:5], "violation_count": len(s.over_limit),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", action="store_true",
                        help="workers with worker_disable_prefetch off (hoarding_app)")
    parser.add_argument("-n", type=int, default=3000)
    args = parser.parse_args()
    module = "hoarding_app" if args.before else "crypto_ml"
    print(json.dumps(experiment(args.n, module), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
