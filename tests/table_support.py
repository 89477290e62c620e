"""Long-format tables for the table-run tests: windows of a price folder's coins, or a random walk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crypto_ml.data.loader import CryptoLoader


def random_walks(series: int, length: int, seed: int = 0, start: str = "2017-01-01") -> pd.DataFrame:
    """``series`` positive random walks of ``length`` daily closes, sorted by id then date."""
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"s{i:06d}" for i in range(series)], length)
    dates = np.tile(pd.date_range(start, periods=length).values, series)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (series, length)), axis=1))
    return pd.DataFrame({"unique_id": ids, "ds": dates, "y": closes.ravel()})


def coin_windows(data_dir: Path, series: int, length: int) -> pd.DataFrame:
    """``series`` windows of ``length`` real closes (and their dates), taken in turn from
    each coin of ``data_dir`` that has them, each coin's newest window first, then one day
    older, and so on; ids ``<coin>-<n>`` sort in the order made."""
    loader = CryptoLoader(data_dir, cache_dir=None)
    coins = []
    for name in loader.get_crypto_names():
        dates, closes = loader.get_closes(name)
        ok = np.isfinite(closes) & (closes > 0)
        if ok.sum() >= length:
            coins.append((name, dates[ok].astype("datetime64[ns]"), closes[ok]))
    ids, ds, ys = [], [], []
    for k, (name, dates, closes) in enumerate(coins):
        count = len(range(k, series, len(coins)))
        span = len(closes) - length + 1
        ends = len(closes) - np.arange(count) % span  # newest window first
        index = ends[:, None] - length + np.arange(length)[None, :]
        ids.append(np.repeat([f"{name}-{i:07d}" for i in range(k, series, len(coins))], length))
        ds.append(dates[index].ravel())
        ys.append(closes[index].ravel())
    frame = pd.DataFrame({"unique_id": np.concatenate(ids), "ds": np.concatenate(ds),
                          "y": np.concatenate(ys)})
    return frame.sort_values(["unique_id", "ds"], ignore_index=True, kind="stable")


def write_parquet(frame: pd.DataFrame, path: Path, row_group_size: int = 5000) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path,
                   row_group_size=row_group_size)
    return path
