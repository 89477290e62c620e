"""Faults during an LSTM run on the compose stack: nothing is lost (every coin's forecast
arrives and ``compose run --rm manager`` exits 0).

* scale-down 3 -> 1 workers (``up --scale worker=1``: SIGTERM, warm shutdown, the running
  tasks finish, prefetched ones go back to the queue);
* ``docker kill -s KILL`` of a worker busy with a task (redelivered after the visibility
  timeout, 190 s here: see compose.test.yml);
* restart of the Redis container (the queue and the results survive in the append-only file);
* a worker busy with a task cut off the network for 20 s (``docker network disconnect``, then
  ``connect``): it lives on; after 10 s of silence its task goes to another worker; healed, it
  answers again, and its late result is not taken twice.

Each run is small (8 coins, 1 epoch, 300 points) to keep the tier's time down.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from . import docker_support as ds
from .conftest import WORKERS
from .test_compose import finished_tasks, printed_forecasts

COINS = ["bitcoin", "ethereum", "ripple", "litecoin", "dash", "monero", "dogecoin", "zcash"]
RECEIVED = re.compile(r"Task crypto_ml\.\S+\[([0-9a-f-]+)\] received")
SUCCEEDED = re.compile(r"Task crypto_ml\.\S+\[([0-9a-f-]+)\] succeeded")


def ensure_workers(stack: ds.Compose, n: int) -> None:
    """Exactly ``n`` running workers, each answering its own health check command."""
    stack.scale_workers(n)
    for container in stack.containers("worker"):
        wait_answering(container, 180, interval=2)


def wait_answering(container: str, timeout: float, interval: float) -> None:
    """Until worker ``container`` answers its own health check command (a ping)."""
    ds.wait_for(lambda: ds.docker("exec", container, "python", "workers/worker.py", "ping",
                                  "--timeout", "3", check=False).returncode == 0,
                timeout, f"{container} answering a ping", interval=interval)


def busy_worker(stack: ds.Compose, before: dict[str, int]) -> str:
    """A worker container that has received a task of this run and not finished it."""

    def find() -> str | None:
        for container in stack.containers("worker"):
            text = ds.logs(container)[before.get(container, 0):]
            running = set(RECEIVED.findall(text)) - set(SUCCEEDED.findall(text))
            if running:
                return container
        return None

    return ds.wait_for(find, 180, "a worker running a task of this run", interval=0.5)


def scale_down(stack: ds.Compose, busy: str) -> dict[str, object]:
    stack.scale_workers(1)
    return {"workers_after": len(stack.containers("worker"))}


def kill_worker(stack: ds.Compose, busy: str) -> dict[str, object]:
    ds.docker("kill", "-s", "KILL", busy)
    return {"killed": busy}


def restart_redis(stack: ds.Compose, busy: str) -> dict[str, object]:
    [redis] = stack.containers("redis")
    ds.docker("restart", redis, timeout=120)
    ds.wait_healthy([redis], timeout=120)
    return {"redis_restarted": redis}


PARTITION_SECONDS = 20  # past the 10 s after which a silent worker's messages are given back


def partition_worker(stack: ds.Compose, busy: str) -> dict[str, object]:
    """Cut the busy worker off the network Redis is on (``docker network disconnect``): it
    lives on, holding its task; its messages go to the others. Then connect it again."""
    networks = json.loads(ds.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}",
                                    busy).stdout)
    [backend] = [name for name in networks if name.endswith("backend")]
    ds.docker("network", "disconnect", backend, busy)
    time.sleep(PARTITION_SECONDS)  # the fault's length, not a wait for a condition
    ds.docker("network", "connect", backend, busy)
    healed = time.monotonic()
    wait_answering(busy, 120, interval=1)
    return {"partitioned": busy, "partition_seconds": PARTITION_SECONDS,
            "answers_again_after_seconds": round(time.monotonic() - healed, 1)}


FAULTS: dict[str, Callable[[ds.Compose, str], dict[str, object]]] = {
    "scale-down-3-to-1": scale_down,
    "kill-9-one-worker": kill_worker,
    "restart-redis": restart_redis,
    "partition-one-worker": partition_worker,
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_lstm_run_survives(stack: ds.Compose, data_dir: object, fault: str) -> None:
    ensure_workers(stack, WORKERS)
    before = {c: len(ds.logs(c)) for c in stack.containers("worker")}
    start = time.monotonic()
    manager = stack.manager("send-tasks", "--model", "lstm", "--epochs", "1", "--max-points",
                            "300", "--horizon", "5", "--coins", ",".join(COINS), "-v",
                            "--retrain")  # train: an earlier fault's run stored these models
    try:
        busy = busy_worker(stack, before)
        assert manager.poll() is None, "the run ended before the fault"
        facts = FAULTS[fault](stack, busy)
        stdout, stderr = manager.communicate(timeout=600)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.communicate()
    wall = time.monotonic() - start
    assert manager.returncode == 0, stderr[-3000:]
    printed = printed_forecasts(stdout)
    assert sorted(printed) == sorted(COINS)
    assert all(len(values) == 5 for values in printed.values())
    arrived = finished_tasks(stderr)
    assert sorted(coin for _, coin, _, _ in arrived) == sorted(COINS)
    ds.record("faults", {fault: {"coins_sent": len(COINS), "forecasts_arrived": len(printed),
                                 "exit_code": manager.returncode, "wall_seconds": round(wall, 1),
                                 "workers_that_forecast": len({w for *_, w in arrived}),
                                 **facts}})
    ensure_workers(stack, WORKERS)  # leave the stack as the other tests expect it

