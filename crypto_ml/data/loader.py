"""The loader: daily price history of many coins, by coin id, from a data folder or file.

Files are found by :mod:`~crypto_ml.data.layouts` and parsed by
:mod:`~crypto_ml.data.parsing`; a file that cannot be a price series is skipped
with one warning that names it.
"""

from __future__ import annotations

import difflib
import logging
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from crypto_ml.core.errors import CoinNotFound, DataNotFound
from crypto_ml.data.layouts import Source, discover
from crypto_ml.data.parsing import BadFile, coin_id

log = logging.getLogger(__name__)

HOW_TO_GET_DATA = (
    "download the top 100 coins' daily history there with `python -m crypto_ml.data download`, "
    "or put one CSV per coin there (the public 'Top 100 Cryptocurrency Historical Data' set), "
    "or point CRYPTO_ML_DATA_DIR / --data-dir at such a folder (see data/README.md)"
)


class CryptoLoader:
    """Daily price history of many coins, read from a folder of price files.

    The folder may hold one CSV or Parquet file per coin, or one consolidated
    CSV or Parquet file with a coin column (see :mod:`crypto_ml.data.layouts`);
    ``data_dir`` may also name such a file.

    ``data_dir`` is required here (the settings' ``data_dir`` at the edges);
    ``crypto_ml.data_loader.CryptoLoader()`` defaults it to ``CRYPTO_ML_DATA_DIR``.
    ``max_points`` keeps the newest N rows of each coin; ``from_date`` and
    ``to_date`` (inclusive, ISO strings or dates) cut the history first.
    """

    def __init__(
        self,
        data_dir: str | Path,
        max_points: int | None = None,
        from_date: str | date | None = None,
        to_date: str | date | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be at least 1, got {max_points}")
        self.max_points = max_points
        self.from_date = pd.Timestamp(from_date) if from_date is not None else None
        self.to_date = pd.Timestamp(to_date) if to_date is not None else None
        self._files: dict[str, Source] | None = None
        self._frames: dict[str, pd.DataFrame] = {}
        self._skipped: dict[str, str] = {}

    def _index(self) -> dict[str, Source]:
        if self._files is None:
            if not self.data_dir.exists():
                raise DataNotFound(f"data directory {self.data_dir} does not exist; "
                                   f"{HOW_TO_GET_DATA}")
            self._files = discover(self.data_dir)
        return self._files

    def _load(self, coin: str) -> pd.DataFrame | None:
        if coin in self._frames:
            return self._frames[coin]
        if coin in self._skipped:
            return None
        source = self._index()[coin]
        try:
            frame, dropped = source.read()
        except (BadFile, OSError) as exc:
            self._skipped[coin] = str(exc)
            log.warning("skipping %s: %s", source.label, exc)
            return None
        if dropped:
            log.warning("%s: dropped %d unparseable rows", source.label, dropped)
        self._frames[coin] = frame
        return frame

    def get_crypto_names(self) -> list[str]:
        """Sorted ids of every coin with a readable price file."""
        names = [c for c in self._index() if self._load(c) is not None]
        if not names:
            raise DataNotFound(f"no price files in {self.data_dir}; {HOW_TO_GET_DATA}")
        return names

    def coin_ids(self) -> list[str]:
        """Sorted ids of every coin the folder's files name, from the listing and the files'
        headers, without reading their rows (a file may still prove unreadable later)."""
        return list(self._index())

    def get_df(self, name: str) -> pd.DataFrame:
        """The coin's history oldest first: ``Date`` (datetime64) and float columns."""
        key = coin_id(name)
        index = self._index()
        frame = self._load(key) if key in index else None
        if frame is None:
            known = [c for c in index if c not in self._skipped]
            raise CoinNotFound.for_coin(name, difflib.get_close_matches(key, known, n=3, cutoff=0.6))
        if self.from_date is not None:
            frame = frame[frame["Date"] >= self.from_date]
        if self.to_date is not None:
            frame = frame[frame["Date"] <= self.to_date]
        if self.max_points is not None:
            frame = frame.iloc[-self.max_points :]
        return frame.reset_index(drop=True).copy()

    def get_prices(self, name: str) -> np.ndarray:
        """Closing prices oldest first as float64; missing closes are NaN."""
        return self.get_df(name)["Close"].to_numpy(dtype=np.float64)
