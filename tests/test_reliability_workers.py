"""Workers that die or are stopped while an LSTM trains: nothing is lost, nothing loops forever.

Every test starts its own real Redis and real `celery worker` processes (LocalCluster),
runs the real CLI against them, and injects the fault with real signals.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import (
    app_for,
    cli_env,
    coin_of,
    finish,
    logs_with,
    start_cli,
    wait_for_drained,
    wait_for_running,
    worker_logs,
    worker_process,
)

from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.ops.processes import wait_until

pytestmark = pytest.mark.integration

# long enough (a few seconds of training) that a fault lands mid-training
LSTM = ("send-tasks", "--model", "lstm", "--max-points", "400", "--epochs", "10",
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
        logs = logs_with(cluster, rf"task {re.escape(victim.task_id)} done")
        assert f"task {victim.task_id}: delivery 2 of at most 3" in logs
        # as if nothing happened: the redelivered run gives the forecast an undisturbed run gives
        killed_coin = coin_of(victim.task_id, logs)
        again = CryptoManager(loader=CryptoLoader(price_data), app=app).run(
            "lstm", [killed_coin], horizon=5, max_points=400, epochs=10, timeout=120,
            on_result=lambda r: None)
        np.testing.assert_array_equal(report["results"][killed_coin]["lstm"]["forecast"],
                                      again.results[killed_coin]["lstm"]["forecast"])
        wait_for_drained(cluster)


@pytest.mark.slow
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
    """The broker config a worker gets: the visibility timeout, the last-resort net for
    messages no beating worker holds (a dead worker's come back sooner: see
    test_reliability_liveness.py), is swept every 10 s at most."""
    from crypto_ml.core.settings import Settings
    from crypto_ml.worker.app import celery_config

    env = cli_env(CRYPTO_ML_BROKER_URL="redis://localhost:6379/0",
                  CRYPTO_ML_HARD_TIME_LIMIT="600", CRYPTO_ML_SOFT_TIME_LIMIT="500")
    transport = celery_config(Settings.from_env(env))["broker_transport_options"]
    assert transport["visibility_timeout"] == 660
    assert transport["unacked_restore_interval"] * transport["unacked_restore_throttle"] == 10


@pytest.mark.slow
def test_pool_process_over_its_memory_cap_is_replaced_and_forecasts_go_on() -> None:
    """Pool processes are replaced for their memory (CRYPTO_ML_MAX_CHILD_MEMORY_MB), not after
    a count of tasks: with a 1 MB cap every task is followed by a fresh process, and every
    forecast still arrives."""
    from crypto_ml.worker.requests import ForecastRequest

    closes = list(np.linspace(100.0, 120.0, 60))
    with LocalCluster(workers=1, env=cluster_env(CRYPTO_ML_MAX_CHILD_MEMORY_MB="1")) as cluster:
        app = app_for(cluster)
        manager = CryptoManager(app=app)

        def pool_pids() -> set[int]:
            stats = app.control.inspect(timeout=5, limit=1).stats() or {}
            return {pid for s in stats.values() for pid in s["pool"]["processes"]}

        seen = pool_pids()
        for i in range(3):
            report = manager.dispatch([ForecastRequest(f"c{i}", "linear", closes, 5)])
            assert list(report.results) == [f"c{i}"] and not report.failed
            before = frozenset(seen)
            wait_until(lambda before=before: bool(pool_pids() - before), 30,  # type: ignore[misc]
                       "a fresh pool process")
            seen |= pool_pids()
        assert len(seen) >= 4  # the first process and one new one after each task
