"""Messages handed out wrongly: one the broker lost (a consumer killed between kombu's BRPOP
and its unacked record, or a failover that dropped the newest writes) is found and sent again
by the manager; one handed out again after its run ended is skipped. Real Redis, a real
worker; the loss is injected by removing the message, the redelivery by sending it again."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import pytest
from api_support import client, write_coins
from fault_helpers import META_PREFIX, app_for, stop_consuming, wait_for_drained, worker_logs

from crypto_ml.api.app import create_app
from crypto_ml.api.service import QueueRuns
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.engine import Dispatcher, publish
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.planning import plan_messages
from crypto_ml.dispatch.report import RunReport
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.app import create_app as celery_app
from crypto_ml.worker.deliveries import delivery_key
from crypto_ml.worker.requests import ForecastRequest

pytestmark = pytest.mark.integration


def test_a_message_the_broker_lost_is_sent_again() -> None:
    with LocalCluster(workers=1) as cluster:
        app = app_for(cluster)
        worker = cluster.worker_names[0]
        stop_consuming(app, [worker])
        err = io.StringIO()
        manager = CryptoManager(app=app, settings=Settings(batch_size=1, lost_check_seconds=1),
                                err=err)
        requests = [ForecastRequest("bitcoin", "naive", [float(x) for x in range(1, 60)], 3)]
        reports: list[RunReport] = []
        run = threading.Thread(target=lambda: reports.append(
            manager.dispatch(requests, timeout=60)))
        run.start()
        client = cluster.client()
        wait_until(lambda: client.llen("cpu") == 1, 20, "the message queued")
        assert client.rpop("cpu")  # lost, as when its consumer dies right after BRPOP
        assert app.control.add_consumer("cpu", destination=[worker], reply=True)
        run.join(60)
        assert reports and reports[0].failed == {} and "bitcoin" in reports[0].results
        assert "resent task" in err.getvalue() and "the broker lost its message" in err.getvalue()
        wait_for_drained(cluster)


@pytest.mark.parametrize("coalesce", [0, 1], ids=["own-message", "shared-message"])
def test_the_api_sends_a_message_the_broker_lost_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, coalesce: int) -> None:
    """The same for a run submitted over HTTP: its message (a run's own, or one that
    concurrent requests share) is lost after the 202; the API process sends it again, and
    the run's id then reads done with the forecast."""
    data = write_coins(tmp_path / "prices")
    with LocalCluster(workers=1) as cluster:
        app = app_for(cluster)
        worker = cluster.worker_names[0]
        stop_consuming(app, [worker])
        settings = Settings(data_dir=data, lost_check_seconds=1,
                            api_coalesce=coalesce).with_broker(cluster.broker_url)
        runs = QueueRuns(celery_app(settings), settings)
        redis_client = cluster.client()
        try:
            with client(create_app(settings, runs)) as api, \
                    caplog.at_level(logging.WARNING, "crypto_ml.dispatch.async_lost"):
                reply = api.post("/v1/forecasts", json={"coins": ["alpha"], "model": "linear",
                                                        "horizon": 3})
                assert reply.status_code == 202, reply.text
                wait_until(lambda: redis_client.llen("cpu") == 1, 20, "the message queued")
                assert redis_client.rpop("cpu")  # lost, as when its consumer dies after BRPOP
                wait_until(lambda: redis_client.llen("cpu") == 1, 20, "the message sent again")
                assert app.control.add_consumer("cpu", destination=[worker], reply=True)
                status = reply.json()["status_url"]
                wait_until(lambda: api.get(status).json()["status"] == "done", 30, "the run")
                assert api.get(status).json()["results"]["alpha"]["linear"]["horizon"] == 3
            assert "the broker lost its message" in caplog.text
            wait_for_drained(cluster)
        finally:
            runs.close()


class _Told(Exception):
    """Ends a run once the notice a test waits for was said."""


def test_a_run_whose_queue_no_live_worker_takes_says_so_instead_of_waiting_silently() -> None:
    """A worker that takes the cpu queue only: the cheap forecast arrives, and for the deep
    one (gpu queue) the run says, once, that no live worker takes its queue and how to start
    one, rather than waiting out its timeout without a word."""
    with LocalCluster(workers=1, queues=("cpu",)) as cluster:
        app = app_for(cluster)
        closes = [float(x) for x in range(1, 60)]
        messages = plan_messages([ForecastRequest("bitcoin", "naive", closes, 3),
                                  ForecastRequest("bitcoin", "lstm", closes, 3)], batch_size=1)
        said: list[str] = []
        arrived: list[tuple[str, str]] = []

        def told() -> None:
            if arrived and any("'gpu'" in line for line in said):
                raise _Told

        dispatcher = Dispatcher(app, said.append, told, unserved_after=0.5)
        with pytest.raises(_Told):
            for outcome in dispatcher.run(messages, timeout=120):
                arrived += outcome.message.items
        assert arrived == [("bitcoin", "naive")]
        assert said == ["waiting: no live worker takes queue 'gpu' (none beat in the last 30 s); "
                        "its tasks stay queued until one starts (celery -A crypto_ml worker -Q "
                        "gpu) or --timeout gives up"]


def test_a_redelivery_after_its_run_ended_is_skipped_not_computed() -> None:
    """The first worker stored the result and died before its ack; the run read the result,
    freed it and ended; then the broker hands the message out again. The worker skips it:
    no forecast computed for nobody, no result or delivery counter left in Redis."""
    with LocalCluster(workers=1) as cluster:
        app = app_for(cluster)
        request = ForecastRequest("bitcoin", "naive", [float(x) for x in range(1, 60)], 3)
        [message] = plan_messages([request], batch_size=1)
        dispatcher = Dispatcher(app)
        [outcome] = dispatcher.run([message], timeout=60)
        assert outcome.meta is not None and outcome.meta["status"] == "SUCCESS"
        client = cluster.client()
        assert not client.exists(META_PREFIX + outcome.task_id)  # read, so freed

        publish(app, message.task, message.kwargs, outcome.task_id, None, message.serializer,
                dispatcher.run_id)  # the same message, handed out again
        wait_until(lambda: f"task {outcome.task_id}: its run" in worker_logs(cluster), 30,
                   "the worker to skip the redelivery")
        wait_for_drained(cluster)
        assert not client.exists(META_PREFIX + outcome.task_id, delivery_key(outcome.task_id))
        assert worker_logs(cluster).count(f"task {outcome.task_id} done") == 1
