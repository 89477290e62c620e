"""A task message the broker lost (a consumer killed between kombu's BRPOP and its unacked
record, or a failover that dropped the newest writes) is found and sent again by the
manager. Real Redis, a real worker; the loss is injected by removing the message."""

from __future__ import annotations

import io
import threading

import pytest
from fault_helpers import app_for, wait_for_drained

import crypto_ml.dispatch.lost
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.report import RunReport
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.requests import ForecastRequest

pytestmark = pytest.mark.integration


def test_a_message_the_broker_lost_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto_ml.dispatch.lost, "CHECK_EVERY", 1.0)
    with LocalCluster(workers=1) as cluster:
        app = app_for(cluster)
        worker = cluster.worker_names[0]
        app.control.cancel_consumer("cpu", destination=[worker], reply=True)
        err = io.StringIO()
        manager = CryptoManager(app=app, settings=Settings(batch_size=1), err=err)
        requests = [ForecastRequest("bitcoin", "naive", [float(x) for x in range(1, 60)], 3)]
        reports: list[RunReport] = []
        run = threading.Thread(target=lambda: reports.append(
            manager.dispatch(requests, timeout=60)))
        run.start()
        client = cluster.client()
        wait_until(lambda: client.llen("cpu") == 1, 20, "the message queued")
        assert client.rpop("cpu")  # lost, as when its consumer dies right after BRPOP
        app.control.add_consumer("cpu", destination=[worker], reply=True)
        run.join(60)
        assert reports and reports[0].failed == {} and "bitcoin" in reports[0].results
        assert "resent task" in err.getvalue() and "the broker lost its message" in err.getvalue()
        wait_for_drained(cluster)
