"""An embedded cluster whose Redis dies: nothing it held can come back, so the commands that own
it say so and stop, instead of waiting for a Redis that nobody will restart (a run until its
--timeout, an hour by default; `cluster up` for ever)."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, cli_env
from table_support import random_walks, write_parquet

from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until

pytestmark = pytest.mark.integration


def own(name: str, parent: int) -> list[psutil.Process]:
    """``parent``'s descendants called ``name``."""
    return [p for p in psutil.Process(parent).children(recursive=True) if p.name() == name]


def command(process: psutil.Process) -> str:
    """Its command line ("" once it has exited: a zombie, or gone)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_a_run_whose_own_redis_dies_stops_and_names_every_forecast_it_lost(
        price_data: Path) -> None:
    err = io.StringIO()
    manager = CryptoManager(settings=Settings(data_dir=price_data, workers=1, batch_size=1),
                            out=io.StringIO(), err=err)
    coins = [c for c in manager.loader.get_crypto_names() if len(manager.loader.get_df(c)) > 300]
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # (other tests' Redis)

    def started_here(name: str) -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and name in command(p)]

    def kill_redis(_: object) -> None:  # at the first result: the rest is still to come
        for redis in started_here("redis-server"):
            redis.kill()

    report = manager.run(["naive", "linear"], coins, on_result=kill_redis, timeout=600)
    assert report.wall_seconds < 60  # not the --timeout, nor a warm shutdown without Redis
    forecasts = {(c, m) for c, by in [*report.results.items(), *report.failed.items()]
                 for m in by}
    assert forecasts == {(c, m) for c in coins for m in ("naive", "linear")}
    reasons = [why for by in report.failed.values() for why in by.values()]
    assert reasons and all("the embedded cluster's Redis exited" in why for why in reasons)
    assert err.getvalue().count("crypto-ml: error: the embedded cluster's Redis exited") == 1
    wait_until(lambda: not started_here("redis-server") and not started_here("crypto_ml.worker"),
               30, "the cluster gone")


def test_cluster_up_says_a_lost_worker_and_flower_and_stops_when_its_redis_dies(
        tmp_path: Path) -> None:
    log = tmp_path / "cluster.log"
    proc = spawn([sys.executable, "-m", "crypto_ml", "cluster", "up", "--workers", "2",
                  "--flower"], log, env={**cli_env(), "CRYPTO_ML_FLOWER_PORT": str(free_port())},
                 cwd=ROOT)
    try:
        wait_until(lambda: "press Ctrl-C" in log.read_text(), 120, "the cluster up",
                   lambda: log.read_text() if proc.poll() is not None else None)
        children = psutil.Process(proc.pid).children()
        workers = [p for p in children if "worker" in command(p)]
        assert len(workers) == 2
        workers[0].send_signal(signal.SIGTERM)  # (SIGKILL would orphan its pool process)
        wait_until(lambda: "1 of 2 left" in log.read_text(), 30, "the lost worker said")
        [flower] = [p for p in children if "flower" in command(p)]
        flower.kill()
        wait_until(lambda: "warning: Flower exited with code -9" in log.read_text(), 30,
                   "Flower's exit said")
        assert proc.poll() is None  # the other worker still serves
        own("redis-server", proc.pid)[0].kill()
        assert proc.wait(timeout=30) == 1
        text = log.read_text()
        assert "crypto-ml: error: the embedded cluster's Redis exited" in text
        assert text.count("exited (code") == 2 and "Traceback" not in text
    finally:
        terminate(proc)


def test_a_table_run_whose_own_redis_dies_stops_in_one_line_and_resumes(tmp_path: Path) -> None:
    table = write_parquet(random_walks(20_000, 40), tmp_path / "walks.parquet")
    out, log = tmp_path / "out.parquet", tmp_path / "run.log"
    argv = [sys.executable, "-m", "crypto_ml.manager", "send-tasks", "--input", str(table),
            "--output", str(out), "--model", "linear", "--workers", "1", "--chunk-series", "500"]
    proc = spawn(argv, log, env=cli_env(), cwd=ROOT)
    try:
        parts = out.with_name(f".{out.name}.parts")
        wait_until(lambda: any(parts.glob("chunk-*")), 120, "a chunk written",
                   lambda: log.read_text() if proc.poll() is not None else None)
        own("redis-server", proc.pid)[0].kill()
        assert proc.wait(timeout=60) == 1, log.read_text()[-2000:]
    finally:
        terminate(proc)
    text = log.read_text()
    assert "crypto-ml: error: ClusterLost: the embedded cluster's Redis exited" in text
    assert "Traceback" not in text and not out.exists()
    again = subprocess.run(argv, cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "written by an earlier run" in again.stderr  # resumed: the chunks kept
    assert pq.read_metadata(out).num_rows == 20_000 * 10
