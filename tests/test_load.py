"""Load: 10,000 cheap forecasts through the manager's public API, on real workers.

Every result arrives exactly once and the manager's memory stays proportional to the
results it returns: no Celery result objects pile up, nothing is left in Redis.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fault_helpers import app_for, wait_for_drained

from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.models import get_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_FORECASTS = 10_000
WINDOW = 30
HORIZON = 5
#: Memory the manager may grow by per forecast while it runs (request, result, bookkeeping)
BYTES_PER_FORECAST = 8_000


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class WindowLoader(CryptoLoader):
    """Many series from few files: series ``coin@k`` is the ``WINDOW`` closes from row ``k``."""

    def __init__(self, data_dir: Path, n: int) -> None:
        super().__init__(data_dir)
        base = CryptoLoader(data_dir)
        frames = {c: base.get_df(c) for c in base.get_crypto_names()}
        self.frames = {c: f for c, f in frames.items() if len(f) >= WINDOW + 100}
        coins = sorted(self.frames)
        self.ids = [f"{coins[i % len(coins)]}@{i // len(coins)}" for i in range(n)]

    def get_crypto_names(self) -> list[str]:
        return list(self.ids)

    def get_df(self, name: str) -> pd.DataFrame:
        coin, k = name.split("@")
        frame = self.frames[coin]
        start = int(k) % (len(frame) - WINDOW + 1)  # a small data set: windows wrap around
        return frame.iloc[start:start + WINDOW]


def test_ten_thousand_forecasts_arrive_once_each_in_bounded_memory(price_data: Path) -> None:
    loader = WindowLoader(price_data, N_FORECASTS)
    assert len(set(loader.ids)) == N_FORECASTS
    arrived: Counter[str] = Counter()
    with LocalCluster(workers=2, loglevel="WARNING") as cluster:
        app = app_for(cluster)
        manager = CryptoManager(loader=loader, app=app)
        gc.collect()
        baseline = peak = rss_bytes()

        def on_result(result: dict[str, Any]) -> None:
            nonlocal peak
            arrived.update([result["coin"]])
            if len(arrived) % 250 == 0:
                peak = max(peak, rss_bytes())

        report = manager.run("linear", horizon=HORIZON, timeout=1500, on_result=on_result)
        growth = max(peak, rss_bytes()) - baseline
        print(f"{N_FORECASTS} forecasts in {report.wall_seconds:.0f} s; "
              f"manager grew {growth / 1e6:.1f} MB")

        assert report.failed == {}
        assert len(arrived) == N_FORECASTS and set(arrived.values()) == {1}  # all, none twice
        assert len(report.results) == N_FORECASTS
        assert growth < N_FORECASTS * BYTES_PER_FORECAST, f"grew {growth / 1e6:.1f} MB"
        gc.collect()
        from celery.result import AsyncResult

        assert not [o for o in gc.get_objects() if isinstance(o, AsyncResult)]
        wait_for_drained(cluster)
        leftovers = [k for pattern in ("celery-task-meta-*", "crypto_ml:deliveries:*")
                     for k in cluster.client().scan_iter(match=pattern, count=1000)]
        assert leftovers == []  # results and delivery counters freed, not left to expire
    for name in loader.ids[::997]:  # spot-check the numbers against a local fit
        prices = loader.get_df(name)["Close"].to_numpy()
        expected = get_model("linear").fit(prices).forecast(HORIZON)
        np.testing.assert_allclose(report.results[name]["linear"]["forecast"], expected,
                                   rtol=1e-9)
