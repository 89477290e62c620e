"""Redis Sentinel: the master dies mid-run; workers and the manager fail over by themselves.

One master, one replica, three sentinels (real redis-server processes), two real workers and
the real CLI, all reaching Redis through ``sentinel://`` URLs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from api_support import client
from celery import Celery
from fault_helpers import FAST_LIVENESS, cli_env, cli_exited, finish, start_cli, worker_logs
from sentinel_support import MASTER_NAME, SentinelCluster

from crypto_ml.api.app import create_app as api_app
from crypto_ml.api.service import QueueRuns
from crypto_ml.core import keys
from crypto_ml.core.settings import Settings
from crypto_ml.core.urls import parse
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.connect import check_broker
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import BATCH_TASK_NAME, TASK_NAME

pytestmark = pytest.mark.integration


def test_sentinel_urls_reach_the_master_and_set_the_master_name() -> None:
    settings = Settings.from_env({"CRYPTO_ML_BROKER_URL": "sentinel://:pw@h1:26379/0;"
                                  "sentinel://:pw@h2:26379/0", "CRYPTO_ML_SENTINEL_MASTER": "m"})
    conf = create_app(settings).conf
    assert conf.broker_transport_options["master_name"] == "m"
    assert conf.result_backend_transport_options["master_name"] == "m"
    assert conf.result_backend.startswith("sentinel://")


def test_a_sentinel_url_keeps_the_masters_user_name() -> None:
    hosts, password, db, user = parse("sentinel://manager:p%40ss@h1:26379/2;sentinel://h2")
    assert (hosts, password, db, user) == ([("h1", 26379), ("h2", 26379)], "p@ss", 2, "manager")
    assert parse("sentinel://:pw@h1:26379")[2:] == (0, None)  # the operator's: user default


@pytest.mark.slow
def test_master_killed_mid_run_everything_fails_over(price_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    # fast liveness: a message held at the failover by no live worker comes back after 6 s, not
    # 20; the manager looks for lost messages every 3 s, not 15
    with SentinelCluster(workers=2, env={**os.environ, **FAST_LIVENESS}) as cluster:
        url = cluster.broker_url
        check_broker(url)  # the manager's check finds the master through the sentinels
        before = cluster.master_port()
        queued = lambda: cluster.client().llen("cpu")  # noqa: E731
        throttle(create_app(Settings().with_broker(url)), workers=2)
        cli = start_cli("send-tasks", "--model", "naive,linear", "--broker", url, "--output",
                        str(out), "--timeout", "180", data_dir=price_data,
                        env=cli_env(price_data, CRYPTO_ML_BATCH_SIZE="1",
                                    CRYPTO_ML_LOST_CHECK_SECONDS="3", **FAST_LIVENESS))
        # mid-run: 20 of the 66 messages taken, most still to come (the manager frees each
        # result as it reads it, so the queue, not the result keys, tells how far it got)
        wait_until(lambda: queued() >= 40, 120, "the messages queued", lambda: cli_exited(cli))
        wait_until(lambda: queued() <= 46, 120, "the first results", lambda: cli_exited(cli))
        assert cli.poll() is None
        cluster.kill_master()
        killed = time.monotonic()
        wait_until(lambda: cluster.master_port() not in (0, before), 30, "a sentinel failover")
        failover = time.monotonic() - killed

        code, _, stderr = finish(cli, timeout=200)
        assert code == 0, f"{stderr}\n{cluster.logs()}"
        report = json.loads(out.read_text())
        forecasts = sum(len(by_model) for by_model in report["results"].values())
        print(f"failover in {failover:.1f} s; {forecasts} forecasts, {len(report['failed'])} "
              f"failed; {worker_logs(cluster).count('delivery 2')} delivered twice")
        assert report["failed"] == {}
        assert forecasts == 2 * len(CryptoLoader(price_data).get_crypto_names())
        for proc in cluster.workers:  # the workers rode it out
            assert proc.poll() is None


def throttle(app: Celery, workers: int, per_second: int = 4) -> None:
    """Slow every worker to ``per_second`` forecasts with Celery's own rate limit, so that the
    run (66 one-forecast tasks) lasts about 8 s and the master dies while most are to come,
    however fast the machine is (unthrottled, the run can end before the test looks)."""
    for name in (TASK_NAME, BATCH_TASK_NAME):
        replies = app.control.rate_limit(name, f"{per_second}/s", reply=True, timeout=5,
                                         limit=workers)
        assert len(replies) == workers, f"rate limit {name}: {replies}"


def test_the_api_answers_through_sentinel_urls(price_data: Path) -> None:
    """The HTTP API's own connections (asyncio publishing, pub/sub results, saved runs, health)
    find the master through the sentinels, as the workers and the manager do."""
    with SentinelCluster(workers=1) as cluster:
        settings = Settings(data_dir=price_data).with_broker(cluster.broker_url)
        runs = QueueRuns(create_app(settings), settings)
        try:
            with client(api_app(settings, runs)) as api:
                answer = api.post("/v1/forecasts?wait=30", json={"coins": ["bitcoin"],
                                                                 "model": "naive,linear"})
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == "done"
                assert api.get(f"/v1/forecasts/{answer.json()['id']}").json() == answer.json()
                assert api.get("/healthz").json()["broker"] is True
        finally:
            runs.close()


class _StoreBySentinel(SentinelCluster):
    """Workers whose model store is a ``sentinel://`` URL (database 2 of the same master)."""

    def worker_env(self) -> dict[str, str]:
        store = ";".join(one.rsplit("/", 1)[0] + "/2" for one in self.broker_url.split(";"))
        return {**super().worker_env(), "CRYPTO_ML_MODEL_STORE": store}


def test_a_model_store_at_a_sentinel_url_keeps_and_serves_fits(price_data: Path) -> None:
    """``CRYPTO_ML_MODEL_STORE=sentinel://...``: the workers find the master through the
    sentinels (redis-py's from_url knows no such scheme) and keep fits there."""
    body = {"coins": ["bitcoin"], "model": "lstm", "horizon": 3,
            "params": {"epochs": 1, "window": 8}}
    with _StoreBySentinel(workers=1) as cluster:
        settings = Settings(data_dir=price_data).with_broker(cluster.broker_url)
        runs = QueueRuns(create_app(settings), settings)
        try:
            with client(api_app(settings, runs)) as api:
                answers = []
                for _ in range(2):
                    reply = api.post("/v1/forecasts?wait=60", json=body)
                    assert reply.status_code == 200, reply.text
                    answers.append(reply.json()["results"]["bitcoin"]["lstm"])
        finally:
            runs.close()
        assert [a["from_store"] for a in answers] == [False, True]
        assert answers[1]["forecast"] == answers[0]["forecast"]
        store = cluster.sentinels().master_for(MASTER_NAME, password=cluster.password, db=2,
                                               socket_timeout=2)
        assert len(store.keys(keys.MODEL + "*")) == 1
