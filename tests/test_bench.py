"""The benchmark harness works end to end (its seconds-long smoke mode; figures live in bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration


def test_bench_smoke_writes_ratios(price_data: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--data-dir", str(price_data),
                          "--out", str(tmp_path), "--only", "startup,dispatch,small,curve"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "smoke.json").read_text())
    dispatch = results["benchmarks"]["dispatch"]
    assert dispatch["forecasts"] > 0 and dispatch["overhead_1w"] > 0
    assert results["benchmarks"]["startup"]["embedded_startup_seconds"] > 0
    assert "| dispatch | overhead_1w |" in (tmp_path / "smoke.md").read_text()
    small = results["benchmarks"]["small"]
    assert small["overhead"] > 0 and small["one_coin_p50_ms"] > 0
    assert small["default_overhead"] > 0  # the run send-tasks makes: window, intervals
    assert small["transport_floor_vs_points_in_process"] > 0  # the closes shipped, no fit
    for run in results["benchmarks"]["curve"].values():  # the manager's memory, per run
        assert run["manager_dispatch_peak_mib"] >= 0 and run["per_s"] > 0
    history = (tmp_path / "history.tsv").read_text().splitlines()
    assert len(history) == 1 and "small.one_coin_p50_ms=" in history[0]


def test_the_peers_log_table_holds_the_log_of_each_close_and_nothing_else(tmp_path: Path) -> None:
    """``--log-peers`` gives the peers log closes: the same fits as this project's models."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.table_vs_peers import log_table

    table = tmp_path / "t.parquet"
    rows = pa.table({"unique_id": ["a", "a", "b"], "ds": pa.array([0, 1, 0], pa.date32()),
                     "y": [1.0, np.e, 10.0]})
    pq.write_table(rows, table, row_group_size=2)  # two row groups: each converted
    logged = pq.read_table(log_table(table))
    assert logged.schema == rows.schema
    assert logged.column("unique_id").to_pylist() == ["a", "a", "b"]
    assert logged.column("ds").to_pylist() == rows.column("ds").to_pylist()
    np.testing.assert_allclose(logged.column("y").to_numpy(), [0.0, 1.0, np.log(10.0)])
