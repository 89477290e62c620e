"""Helpers for the fault-injection tests: watch real tasks in Redis, run the CLI in the
background, read worker logs. Nothing here fakes a broker or a worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.app import create_app
from crypto_ml.worker.deliveries import delivery_key

ROOT = Path(__file__).resolve().parents[1]
META_PREFIX = "celery-task-meta-"
#: Workers beating every second and dead after 3 s of silence (the defaults: 2 s and 10 s), for
#: tests whose faults wait on liveness: a dead worker's messages, or one held by no live worker
#: (after twice that), come back in seconds.
FAST_LIVENESS = {"CRYPTO_ML_HEARTBEAT_SECONDS": "1", "CRYPTO_ML_DEAD_AFTER_SECONDS": "3"}


def app_for(cluster: LocalCluster, **settings: Any) -> Celery:
    """A client-side Celery app for ``cluster``'s broker."""
    return create_app(Settings(**settings).with_broker(cluster.broker_url))


def cli_env(data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The user's environment without any CRYPTO_ML_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    if data_dir is not None:
        env["CRYPTO_ML_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def start_cli(*args: str, data_dir: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[str]:
    """Start ``python -m crypto_ml.manager ARGS`` in the background, as a user would."""
    return subprocess.Popen([sys.executable, "-m", "crypto_ml.manager", *args], cwd=ROOT,
                            env=env or cli_env(data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """Wait for a background CLI; its exit code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the CLI did not finish in {timeout:.0f} s:\n{out}\n{err}") from None
    return proc.returncode, out, err


@dataclass(frozen=True)
class Running:
    """A task that a worker has started: its id, the pool process running it, the worker."""

    task_id: str
    pid: int
    hostname: str


def stop_consuming(app: Celery, workers: list[str], timeout: float = 20) -> None:
    """Make ``workers`` take no new message from the ``cpu`` queue (what they hold, they keep;
    ``add_consumer`` undoes it), once every one of them has answered: a worker just started
    may not be listening for control commands yet, and a broadcast it misses is lost."""
    wait_until(lambda: len(app.control.cancel_consumer("cpu", destination=workers, reply=True)
                           or []) == len(workers), timeout, f"{workers} answering cancel_consumer")


def task_ids(app: Celery) -> list[str]:
    """Ids of every task with a state in the result backend."""
    keys = app.backend.client.scan_iter(match=f"{META_PREFIX}*", count=1000)
    return [k.decode()[len(META_PREFIX):] for k in keys]


def running_tasks(app: Celery) -> Iterator[Running]:
    """Tasks in state STARTED now (``task_track_started`` stores the pid and worker)."""
    for task_id in task_ids(app):
        meta = app.backend.get_task_meta(task_id, cache=False)
        if meta["status"] == "STARTED" and isinstance(meta.get("result"), dict):
            yield Running(task_id, int(meta["result"]["pid"]), meta["result"]["hostname"])


def deliveries(app: Celery, task_id: str) -> int:
    """How many times ``task_id`` has been started (the counter ForecastTask keeps)."""
    return int(app.backend.client.get(delivery_key(task_id)) or 0)


def trains(pid: int) -> bool:
    """Whether process ``pid`` has TensorFlow loaded, i.e. it is past import and training."""
    try:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def wait_for_running(app: Celery, timeout: float = 120, *, training: bool = False,
                     skip_pids: frozenset[int] = frozenset(), delivery: int = 1,
                     cli: subprocess.Popen[str] | None = None) -> Running:
    """The first task that is running (in a pool process not in ``skip_pids``) and has
    counted its ``delivery``-th start; with ``training``, once TensorFlow is loaded in it."""
    found: list[Running] = []

    def ready() -> bool:
        for task in running_tasks(app):
            if task.pid in skip_pids or deliveries(app, task.task_id) < delivery:
                continue
            if training and not trains(task.pid):
                continue
            found.append(task)
            return True
        return False

    wait_until(ready, timeout, "a running task", lambda: cli_exited(cli))
    return found[0]


def cli_exited(cli: subprocess.Popen[str] | None) -> str | None:
    """Why a background CLI is no longer running (its exit code and output), or None."""
    if cli is None or cli.poll() is None:
        return None
    return f"the CLI exited early with {cli.returncode}: {cli.communicate()}"


def worker_logs(cluster: LocalCluster) -> str:
    """Every worker's log of ``cluster``, joined."""
    return "\n".join(p.read_text(errors="replace")
                     for p in sorted(cluster.workdir.glob("worker*.log")))


def logs_with(cluster: LocalCluster, pattern: str, count: int = 1, timeout: float = 30) -> str:
    """The workers' logs once ``pattern`` is in them ``count`` times: a worker logs a task's
    "done" line in ``on_success``, after it stored the result that a client may already have."""
    wait_until(lambda: len(re.findall(pattern, worker_logs(cluster))) >= count, timeout,
               f"{count} worker log line(s) matching {pattern!r}")
    return worker_logs(cluster)


def coin_of(task_id: str, logs: str) -> str:
    """The coin of a finished task, from the worker's one log line per task."""
    found = re.search(rf"task {re.escape(task_id)} done: coin=(\S+) ", logs)
    assert found, f"no log line says task {task_id} finished"
    return found.group(1)


def worker_process(cluster: LocalCluster, hostname: str) -> subprocess.Popen[bytes]:
    """The Popen of the worker named ``hostname``."""
    return cluster.workers[cluster.worker_names.index(hostname)]


def queue_length(cluster: LocalCluster, queue: str) -> int:
    return int(cluster.client().llen(queue))


def unacked(cluster: LocalCluster) -> int:
    """Messages delivered to a worker and not yet acknowledged (kombu's Redis hash)."""
    return int(cluster.client().hlen("unacked"))


def wait_for_drained(cluster: LocalCluster, timeout: float = 60) -> None:
    """Until no queue holds a message and none is waiting for an acknowledgement."""
    wait_until(lambda: queue_length(cluster, "cpu") + queue_length(cluster, "gpu")
               + unacked(cluster) == 0, timeout, "draining the queues")
