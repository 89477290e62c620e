"""A checked long table as the per-coin loader's interface: what backtests read."""

from __future__ import annotations

import numpy as np
import pandas as pd

from crypto_ml.core.errors import InvalidTable
from crypto_ml.data.table import TableSource


class TableLoader:
    """A checked table as the per-coin loader's interface (``get_crypto_names``, ``get_df``,
    ``get_closes``, ``get_prices``): what backtests read. Unlike a table run it holds every
    series in memory (a backtest sends a task per series, model and origin, so it is for
    thousands of series, not millions). Integer times become days after 1970-01-01."""

    def __init__(self, source: TableSource) -> None:
        info = source.info or source.check()
        self.data_dir = source.path
        self.series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for chunk in source.chunks(10_000):
            ends = np.cumsum(chunk.lengths)
            assert chunk.times is not None  # chunks carry their rows' times
            times = _as_dates(chunk.times, info.time_kind)
            for uid, end, n in zip(chunk.ids, ends.tolist(), chunk.lengths.tolist(), strict=True):
                self.series[uid] = (times[end - n : end], chunk.values[end - n : end])

    def get_crypto_names(self) -> list[str]:
        return list(self.series)

    def coin_ids(self) -> list[str]:
        return list(self.series)

    def get_closes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.series:
            raise InvalidTable(f"--input {self.data_dir} has no series {name!r}")
        return self.series[name]

    def get_prices(self, name: str) -> np.ndarray:
        return self.get_closes(name)[1]

    def get_df(self, name: str) -> pd.DataFrame:
        dates, closes = self.get_closes(name)
        return pd.DataFrame({"Date": pd.to_datetime(dates), "Close": closes})


def _as_dates(times: np.ndarray, kind: str) -> np.ndarray:
    unit = "ns" if kind == "timestamp" else "D"
    return times.astype(f"datetime64[{unit}]")
