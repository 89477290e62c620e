"""Redis at its memory cap (``maxmemory``, ``noeviction``, as compose and Kubernetes run it):
a table run whose messages Redis refuses stops at once with one line naming the limit and
exit code 2; once memory is freed, the same command finishes the run and loses nothing.
A real Redis with a small cap, a real worker, the CLI as a user runs it.

The worker does not consume while Redis is full: a full Redis refuses every command inside
MULTI, and kombu acknowledges a message in one, so a worker whose ack is refused exits
(``Unrecoverable error: OutOfMemoryError``; its messages are redelivered once it is
restarted). The README's failure table says so; this test shows the manager's side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import run_cli
from fault_helpers import app_for, stop_consuming
from table_support import random_walks, write_parquet

from crypto_ml.dispatch.cluster import LocalCluster

pytestmark = pytest.mark.integration
SERIES = 300


def fill(client: Any) -> None:
    """One string that takes Redis a megabyte past its cap (SETRANGE: a short command, so
    no large query buffer is refused on the way); every write after it is refused."""
    info = client.info("memory")
    client.setrange("ballast", info["maxmemory"] - info["used_memory"] + 2**20, b"x")
    info = client.info("memory")
    assert info["used_memory"] > info["maxmemory"] + 2**19, info


def test_a_full_redis_stops_the_run_with_one_line_and_a_rerun_loses_nothing(
        tmp_path: Path) -> None:
    table = write_parquet(random_walks(SERIES, 60), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    with LocalCluster(workers=1, maxmemory="8mb") as cluster:
        admin = cluster.client()
        assert admin.info("memory")["maxmemory_policy"] == "noeviction"
        app = app_for(cluster)
        worker = cluster.worker_names
        stop_consuming(app, worker)
        fill(admin)  # the operator's keys fill it past the cap
        args = ("send-tasks", "--input", str(table), "--output", str(out), "--model", "naive",
                "--horizon", "3", "--broker", cluster.url_for("manager"), "--chunk-series", "50")
        refused = run_cli(*args)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "Redis is full" in lines[0], refused.stderr
        assert "maxmemory" in lines[0] and not out.exists()

        admin.delete("ballast")
        assert app.control.add_consumer("cpu", destination=worker, reply=True)
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
    got = pd.read_parquet(out)
    assert sorted(got["unique_id"].unique()) == sorted(f"s{i:06d}" for i in range(SERIES))
    assert len(got) == SERIES * 3 and not got.duplicated(["unique_id", "ds"]).any()
