"""Workers that die or are stopped while an LSTM trains: nothing is lost, nothing loops forever.

Every test starts its own real Redis and real `celery worker` processes (LocalCluster),
runs the real CLI against them, and injects the fault with real signals.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import (
    app_for,
    cli_env,
    coin_of,
    finish,
    start_cli,
    unacked,
    wait_for_drained,
    wait_for_running,
    worker_logs,
    worker_process,
)

from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager

pytestmark = pytest.mark.integration

# long enough (a few seconds of training) that a fault lands mid-training
LSTM = ("send-tasks", "--model", "lstm", "--max-points", "400", "--epochs", "20",
        "--horizon", "5")


def cluster_env(**settings: str) -> dict[str, str]:
    return {**os.environ, **settings}


@pytest.mark.slow
def test_killed_pool_process_task_is_redelivered_and_forecast_unchanged(price_data: Path,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    with LocalCluster(workers=2) as cluster:
        app = app_for(cluster)
        cli = start_cli(*LSTM, "--coins", "bitcoin,ethereum", "--broker", cluster.broker_url,
                        "--output", str(out), "--timeout", "180", data_dir=price_data)
        victim = wait_for_running(app, training=True, cli=cli)
        os.kill(victim.pid, signal.SIGKILL)  # the pool process dies mid-training (OOM killer)

        code, _, stderr = finish(cli, timeout=200)
        assert code == 0, stderr
        report = json.loads(out.read_text())
        assert sorted(report["results"]) == ["bitcoin", "ethereum"] and report["failed"] == {}
        logs = worker_logs(cluster)
        assert f"task {victim.task_id}: delivery 2 of at most 3" in logs
        assert f"task {victim.task_id} done" in logs
        # as if nothing happened: the redelivered run gives the forecast an undisturbed run gives
        killed_coin = coin_of(victim.task_id, logs)
        again = CryptoManager(loader=CryptoLoader(price_data), app=app).run(
            "lstm", [killed_coin], horizon=5, max_points=400, epochs=20, timeout=120,
            on_result=lambda r: None)
        np.testing.assert_array_equal(report["results"][killed_coin]["lstm"]["forecast"],
                                      again.results[killed_coin]["lstm"]["forecast"])
        wait_for_drained(cluster)


@pytest.mark.slow
def test_killed_worker_task_is_redelivered_to_another_after_visibility_timeout(
        price_data: Path, tmp_path: Path) -> None:
    # Short limits so the test need not wait out the default visibility timeout (hard + 60 s).
    # The redelivered run (TensorFlow import + training) must fit the soft limit even on a
    # busy machine, and the visibility timeout must exceed the hard limit.
    limits = {"CRYPTO_ML_SOFT_TIME_LIMIT": "40", "CRYPTO_ML_HARD_TIME_LIMIT": "45",
              "CRYPTO_ML_VISIBILITY_TIMEOUT": "50"}
    out = tmp_path / "run.json"
    with LocalCluster(workers=2, env=cluster_env(**limits)) as cluster:
        app = app_for(cluster)
        cli = start_cli(*LSTM, "--coins", "bitcoin", "--broker", cluster.broker_url,
                        "--output", str(out), "--timeout", "170", data_dir=price_data)
        victim = wait_for_running(app, training=True, cli=cli)
        dead = worker_process(cluster, victim.hostname)
        os.killpg(dead.pid, signal.SIGKILL)  # the whole worker dies: node lost, pod evicted
        dead.wait(10)
        # the message waits in kombu's unacked hash, not lost
        assert unacked(cluster) == 1, worker_logs(cluster)[-3000:]

        code, _, stderr = finish(cli, timeout=200)
        assert code == 0, stderr
        result = json.loads(out.read_text())["results"]["bitcoin"]["lstm"]
        assert result["worker"] != victim.hostname
        assert f"task {victim.task_id}: delivery 2 of at most 3" in worker_logs(cluster)
        wait_for_drained(cluster)


def test_task_that_keeps_killing_its_worker_fails_clearly(price_data: Path) -> None:
    env = cluster_env(CRYPTO_ML_MAX_DELIVERIES="2")
    with LocalCluster(workers=1, env=env) as cluster:
        app = app_for(cluster)
        cli = start_cli(*LSTM, "--coins", "bitcoin", "--broker", cluster.broker_url,
                        "--timeout", "120", data_dir=price_data)
        killed: set[int] = set()
        for delivery in (1, 2):  # every run of this task dies with its pool process
            victim = wait_for_running(app, skip_pids=frozenset(killed), delivery=delivery,
                                      cli=cli)
            os.kill(victim.pid, signal.SIGKILL)
            killed.add(victim.pid)

        code, _, stderr = finish(cli, timeout=150)
        assert code == 1
        assert "failed: bitcoin lstm: TooManyDeliveries: " in stderr
        assert "delivered 3 times" in stderr and "CRYPTO_ML_MAX_DELIVERIES=2" in stderr
        assert cluster.workers[0].poll() is None  # the worker itself survived
        wait_for_drained(cluster)  # the poison message is gone, not requeued forever

        rerun = CryptoManager(loader=CryptoLoader(price_data), app=app).run(
            "linear", ["bitcoin"], timeout=60, on_result=lambda r: None)
        assert rerun.ok and "bitcoin" in rerun.results


@pytest.mark.slow
def test_sigterm_lets_the_running_task_finish_and_loses_nothing(price_data: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    coins = ["bitcoin", "ethereum", "litecoin"]
    with LocalCluster(workers=2) as cluster:
        app = app_for(cluster)
        cli = start_cli(*LSTM, "--coins", ",".join(coins), "--broker", cluster.broker_url,
                        "--output", str(out), "--timeout", "180", data_dir=price_data)
        victim = wait_for_running(app, training=True, cli=cli)
        stopping = worker_process(cluster, victim.hostname)
        stopping.send_signal(signal.SIGTERM)  # to the main process only, as Kubernetes does

        assert stopping.wait(120) == 0  # warm shutdown: finished its task, then exited cleanly
        code, _, stderr = finish(cli, timeout=200)
        assert code == 0, stderr
        results = json.loads(out.read_text())["results"]
        assert sorted(results) == coins
        logs = worker_logs(cluster)
        coin = coin_of(victim.task_id, logs)
        assert results[coin]["lstm"]["worker"] == victim.hostname  # finished before it left
        assert "delivery 2" not in logs  # nothing had to be run twice
        wait_for_drained(cluster)


def test_redelivery_knob_is_the_documented_one() -> None:
    """The broker config a worker gets: dead workers' tasks come back within the
    visibility timeout plus a sweep of at most 10 s, and never before a task's hard limit."""
    from crypto_ml.core.settings import Settings
    from crypto_ml.worker.app import celery_config

    env = cli_env(CRYPTO_ML_BROKER_URL="redis://localhost:6379/0",
                  CRYPTO_ML_HARD_TIME_LIMIT="600", CRYPTO_ML_SOFT_TIME_LIMIT="500")
    transport = celery_config(Settings.from_env(env))["broker_transport_options"]
    assert transport["visibility_timeout"] == 660
    assert transport["unacked_restore_interval"] * transport["unacked_restore_throttle"] == 10
