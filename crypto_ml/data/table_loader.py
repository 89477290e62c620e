"""A checked long table as the per-coin loader's interface: what backtests read."""

from __future__ import annotations

import numpy as np
import pandas as pd

from crypto_ml.core.errors import InvalidTable
from crypto_ml.data.table import TableSource

#: The dates pandas holds (nanoseconds from 1970 in an int64), as a backtest reads them.
FIRST_DATE, LAST_DATE = np.datetime64("1677-09-22", "D"), np.datetime64("2262-04-10", "D")


class TableLoader:
    """A checked table as the per-coin loader's interface (``get_crypto_names``, ``get_df``,
    ``get_closes``, ``get_prices``): what backtests read. Unlike a table run it holds every
    series in memory (a backtest sends a task per series, model and origin, so it is for
    thousands of series, not millions). Integer times become days after 1970-01-01."""

    def __init__(self, source: TableSource, until: str | None = None) -> None:
        info = source.info or source.check()
        self.data_dir = source.path
        self.series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        last = None if until is None else np.datetime64(until, "ns")
        for chunk in source.chunks(10_000):
            ends = np.cumsum(chunk.lengths)
            assert chunk.times is not None  # chunks carry their rows' times
            times = _as_dates(chunk.times, info.time_kind)
            if len(times) and (times.min() < FIRST_DATE or times.max() > LAST_DATE):
                raise InvalidTable(f"--input: the times of a series among {chunk.ids[:3]} lie "
                                   f"outside {FIRST_DATE} to {LAST_DATE}, the dates a backtest "
                                   "reads (integer times count days from 1970-01-01)")
            for uid, end, n in zip(chunk.ids, ends.tolist(), chunk.lengths.tolist(), strict=True):
                dates, values = times[end - n : end], chunk.values[end - n : end]
                if last is not None:  # --until, inclusive, as for the data folder
                    keep = dates <= last
                    dates, values = dates[keep], values[keep]
                self.series[uid] = (dates, values)

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
