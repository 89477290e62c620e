"""A 100,000-series table run through the compose stack: the table on a volume, the manager
container's own entry point, the stack's worker containers, the Parquet output checked."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from crypto_ml.models import get_model

from . import docker_support as ds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from table_support import coin_windows, write_parquet

SERIES, LENGTH = 100_000, 200


def test_a_100k_series_table_runs_through_the_worker_containers(
        stack: ds.Compose, data_dir: Path, tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    tables.mkdir()
    table = write_parquet(coin_windows(data_dir, SERIES, LENGTH), tables / "windows.parquet",
                          row_group_size=1_000_000)
    tmp_path.chmod(0o755)
    tables.chmod(0o755)
    table.chmod(0o644)
    start = time.monotonic()
    run = stack("run", "--rm", "-T", "-v", f"{tables}:/tables:ro", "manager", "send-tasks",
                "--input", "/tables/windows.parquet", "--output", "/results/windows.parquet",
                "--model", "naive,linear", "--overwrite", timeout=1200, check=False)
    wall = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == "" and f"summary: {SERIES} series" in run.stderr
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    ds.docker("run", "--rm", "-v", f"{stack.volume('results')}:/results:ro", "-v",
              f"{out}:/out", "--entrypoint", "sh", ds.CPU_IMAGE, "-c",
              "cp /results/windows.parquet /results/windows.failures.parquet /out/")
    got = pq.read_table(out / "windows.parquet").to_pandas()
    assert len(got) == SERIES * 10 and got["unique_id"].nunique() == SERIES
    assert not got.duplicated(["unique_id", "ds"]).any()
    assert pq.read_table(out / "windows.failures.parquet").num_rows == 0
    source = pq.read_table(table).to_pandas()
    for uid in got["unique_id"].drop_duplicates().sample(5, random_state=1):
        closes = source.loc[source["unique_id"] == uid, "y"].to_numpy()
        rows = got[got["unique_id"] == uid]
        alone = get_model("linear").fit(closes).predict(10)
        np.testing.assert_allclose(rows["linear"], alone.forecast, rtol=1e-9, err_msg=uid)
        np.testing.assert_allclose(rows["linear-hi-95"], alone.bands["95"][1], rtol=1e-9)
        assert (rows["naive"] == closes[-1]).all()
    ds.record("compose", {"table_run_series": SERIES, "table_run_wall_seconds": round(wall, 1),
                          "table_run_series_per_second": round(SERIES / wall)})
