"""A run interrupted after its broker went away says its queued tasks could not be revoked,
where it used to say they were. A real Redis, killed; a real ``send-tasks`` process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env

from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.ops.processes import wait_until
from crypto_ml.worker.app import CPU_QUEUE

pytestmark = pytest.mark.integration


def test_ctrl_c_after_the_broker_died_says_the_queued_tasks_were_not_revoked(
        price_data: Path) -> None:
    cluster = LocalCluster(workers=1)
    cluster.start_redis()  # its broker alone, no worker: the tasks stay queued
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "crypto_ml", "send-tasks", "--coins", "bitcoin,dash",
             "--model", "naive", "--broker", cluster.broker_url], cwd=ROOT,
            env=cli_env(price_data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = cluster.client()
        try:
            wait_until(lambda: client.llen(CPU_QUEUE) == 2 or run.poll() is not None, 120,
                       "two tasks queued")
            assert cluster.redis is not None
            cluster.redis.kill()
            cluster.redis.wait()
            run.send_signal(signal.SIGINT)
        finally:
            _, err = run.communicate(timeout=60)
    finally:
        cluster.stop()
    assert run.returncode == 130, err
    assert re.search(r"could not revoke 2 queued task\(s\) \(.*\); if the broker comes back "
                     r"with them, workers run them for nobody$", err, re.M), err
    assert err.splitlines()[-1] == "crypto-ml: interrupted", err
    assert "revoked 2" not in err and "Traceback" not in err, err
