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
