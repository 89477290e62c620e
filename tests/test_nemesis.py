"""The nemesis over a table run (tests/nemesis.py): worker kills, pauses and partitions, Redis
failovers under Sentinel and manager kills, thrown together through one run of the user's
``send-tasks --input TABLE --output OUT.parquet``; then the checker.

Both runs are marked ``nemesis`` and deselected unless ``-m`` names them; ``.ci/run`` runs them
after the container tier, the short one (one fault of each kind, about 80 s: each kind also has
its own test in the suite) and the full one, 100,000 series and at least 20 faults::

    pytest -m nemesis tests/test_nemesis.py -s   # CRYPTO_ML_NEMESIS_SERIES / _FAULTS / _SEED

Each run prints its history (also written as JSON lines to ``history.jsonl``) and the verdict.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fault_helpers import META_PREFIX, cli_env
from nemesis import (
    HELD,
    KINDS,
    RECOVERY_LIMIT,
    Nemesis,
    NemesisCluster,
    check_output,
    done_times,
    group_of,
    recoveries,
    schedule,
    served,
)
from partition import Partitions, unavailable
from table_support import coin_windows, write_parquet

from crypto_ml.core.errors import ConfigError
from crypto_ml.ops.processes import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
MODEL, HORIZON, LENGTH = "theta", 7, 60


@pytest.fixture()
def partitions():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    made = Partitions()
    yield made
    made.close()


def run_nemesis(partitions: Partitions, real_data: Path, tmp_path: Path, *, series: int,
                faults: int, seed: int, held: dict[str, tuple[float, float]] = HELD,
                workers: int = 4) -> dict[str, object]:
    table = write_parquet(coin_windows(real_data, series, LENGTH), tmp_path / "table.parquet")
    with NemesisCluster(partitions, workers=workers) as cluster:
        env = cli_env(real_data)
        args = ["send-tasks", "--input", str(table), "--model", MODEL, "--horizon", str(HORIZON),
                "--broker", cluster.broker_url, "--timeout", "3600"]
        began = time.monotonic()
        reference = subprocess.run([sys.executable, "-m", "crypto_ml", *args, "--output",
                                    str(tmp_path / "reference.parquet")], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=3600)
        assert reference.returncode == 0, reference.stderr
        fault_free = time.monotonic() - began
        # every fault is over by 60 % of the fault-free time: what it hit has the rest of the
        # run (the run under faults only takes longer) to be seen serving again; on a machine
        # where the run is shorter, the holds shrink with it, down to half
        longest = max(high for _, high in held.values())
        scale = min(1.0, (0.6 * fault_free - 3) / longest)
        assert scale >= 0.5, \
            f"{series} series take {fault_free:.0f} s here: too few for faults held {longest:.0f} s"
        held = {kind: (low * scale, high * scale) for kind, (low, high) in held.items()}
        plan = schedule(faults, seed, span=0.6 * fault_free, held=held)
        out = tmp_path / "out.parquet"
        nemesis = Nemesis(cluster, [*args, "--output", str(out)], env, out, plan,
                          tmp_path / "history.jsonl")
        events = nemesis.run(timeout=max(1800.0, 6 * fault_free))
        took = nemesis.now()
        found = recoveries(events, done_times(cluster, nemesis.history), nemesis.progress)
        left = sum(1 for _ in cluster.client().scan_iter(f"{META_PREFIX}*", count=1000))
    table_ids = set(pd.read_parquet(table, columns=["unique_id"])["unique_id"])
    verdict = {
        "series": series, "fault_free_seconds": round(fault_free, 1),
        "nemesis_seconds": round(took, 1), "manager_runs": nemesis.manager.runs,
        "faults": len(found), "by_kind": {k: sum(f["kind"] == k for f in found) for k in KINDS},
        "slowest_recovery": max((1e9 if f["recovery"] is None else f["recovery"]
                                 for f in found), default=0.0),
        "problems": check_output(out, tmp_path / "reference.parquet", table_ids, HORIZON),
        "results_left_in_redis": left,
    }
    print("\n".join(json.dumps(e) for e in events))
    print("recoveries:", json.dumps(found))
    print("verdict:", json.dumps(verdict))
    assert all(f["recovery"] is not None and f["recovery"] <= RECOVERY_LIMIT for f in found), \
        f"a fault without recovery within {RECOVERY_LIMIT:.0f} s: {found}"
    assert verdict["problems"] == [], verdict
    return verdict


@pytest.mark.slow
@pytest.mark.nemesis  # the second tier: the suite has a test of each kind alone
def test_one_fault_of_each_kind_loses_doubles_and_changes_nothing(
        partitions: Partitions, real_data: Path, tmp_path: Path) -> None:
    # pauses and partitions of 10-11 s (the full run's: 10-40 s and 10-60 s), so that 32,000
    # series (about 40 s without faults on 2 cores) outlast them
    verdict = run_nemesis(partitions, real_data, tmp_path, series=32_000, faults=len(KINDS),
                          seed=int(os.environ.get("CRYPTO_ML_NEMESIS_SEED", "1")),
                          held={kind: (10.0, 11.0) for kind in HELD})
    assert verdict["by_kind"] == {kind: 1 for kind in KINDS}


@pytest.mark.nemesis
@pytest.mark.timeout(3600)
def test_twenty_mixed_faults_over_a_100k_series_run(
        partitions: Partitions, real_data: Path, tmp_path: Path) -> None:
    faults = int(os.environ.get("CRYPTO_ML_NEMESIS_FAULTS", "20"))
    verdict = run_nemesis(partitions, real_data, tmp_path,
                          series=int(os.environ.get("CRYPTO_ML_NEMESIS_SERIES", "100000")),
                          faults=faults, seed=int(os.environ.get("CRYPTO_ML_NEMESIS_SEED", "7")))
    assert verdict["faults"] >= faults and all(verdict["by_kind"].values())  # type: ignore[attr-defined]


@pytest.mark.nemesis
def test_a_worker_cut_off_for_a_minute_serves_again_within_seconds_of_the_heal(
        partitions: Partitions, real_data: Path, tmp_path: Path) -> None:
    # Over a cut link TCP backs off its retransmissions; after 60 s cut, the first one that
    # gets through comes about 40 s after the heal. The worker's Redis connections time out
    # instead (core/sentinel.py: link_options) and connect again as soon as they can.
    table = write_parquet(coin_windows(real_data, 100_000, LENGTH), tmp_path / "table.parquet")
    with NemesisCluster(partitions, workers=2) as cluster:
        cut, log = group_of(cluster.worker_names[0]), cluster.workdir / "worker1.log"
        manager = subprocess.Popen(
            [sys.executable, "-m", "crypto_ml", "send-tasks", "--input", str(table), "--model",
             MODEL, "--horizon", str(HORIZON), "--broker", cluster.broker_url, "--output",
             str(tmp_path / "out.parquet")], cwd=ROOT, env=cli_env(real_data),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: bool(served(log)), 120, "the worker's first chunk",
                       alive=lambda: manager.poll() is not None and "the run ended")
            partitions.cut(cut)
            time.sleep(60)  # the fault itself: a minute without a network
            partitions.heal(cut)
            healed = time.time()
            with contextlib.suppress(ConfigError):  # too late or never: said below, with why
                wait_until(lambda: any(t > healed for t in served(log)), 120,
                           "the worker serving again", alive=lambda: manager.poll() is not None
                           and "the run ended before the worker served again")
            back = min((t for t in served(log) if t > healed), default=math.inf) - healed
            said = [line for line in log.read_text(errors="replace").splitlines()
                    if "WARNING" in line or "ERROR" in line or "CRITICAL" in line]
        finally:
            manager.kill()
            manager.wait()
    assert back <= 20, (f"the worker served again {back:.1f} s after the link healed; its "
                        "warnings:\n" + "\n".join(said[-30:]))

