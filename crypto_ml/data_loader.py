"""Read daily price history, one CSV file per coin, as published in the
"Top 100 Cryptocurrency Historical Data" set (CoinMarketCap export).

Real files are untidy, so the loader finds columns by name (any case, any
order), accepts a BOM and CRLF line ends, parses quoted thousands
(``"1,194,830,000"``), ``-`` as missing, abbreviated and full month names and
spreadsheet serial dates, sorts rows oldest first and keeps one row per date.
A file that cannot be a price series (the ``100 List.csv`` ranking, an empty or
header-only file, something that is not CSV) is skipped with one warning that
names it; rows whose date or close cannot be parsed are dropped with a count.
"""

from __future__ import annotations

import difflib
import io
import logging
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from crypto_ml.errors import CoinNotFound, DataNotFound

if TYPE_CHECKING:
    from crypto_ml.layouts import Source

log = logging.getLogger(__name__)

REQUIRED = ("Date", "Close")
NUMERIC = ("Open", "High", "Low", "Close", "Volume", "Market Cap")
DATE_FORMATS = ("%b %d, %Y", "%B %d, %Y", "%Y-%m-%d", "%d/%m/%Y")
SPREADSHEET_EPOCH = pd.Timestamp("1899-12-30")
HOW_TO_GET_DATA = (
    "download the top 100 coins' daily history there with `python -m crypto_ml.data download`, "
    "or put one CSV per coin there (the public 'Top 100 Cryptocurrency Historical Data' set), "
    "or point CRYPTO_ML_DATA_DIR / --data-dir at such a folder (see data/README.md)"
)


class BadFile(Exception):
    """Internal: a file that is not a price series; carries the reason."""


def coin_id(stem: str) -> str:
    """``Bitcoin Cash`` -> ``bitcoin_cash``: the id a coin's file name gives it."""
    return "_".join(stem.strip().lower().split())


def _parse_dates(raw: pd.Series) -> pd.Series:
    text = raw.str.strip()
    parsed = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    for fmt in DATE_FORMATS:
        todo = parsed.isna()
        if not todo.any():
            break
        parsed[todo] = pd.to_datetime(text[todo], format=fmt, errors="coerce")
    serial = parsed.isna() & text.str.fullmatch(r"\d{5}(\.0+)?", na=False)
    if serial.any():
        days = pd.to_numeric(text[serial]).astype("int64")
        parsed[serial] = SPREADSHEET_EPOCH + pd.to_timedelta(days, unit="D")
    return parsed


def _parse_numbers(raw: pd.Series) -> pd.Series:
    text = raw.str.strip().str.replace(r"[,$\s]", "", regex=True)
    text = text.mask(text.isin(["-", "", "null", "NaN", "nan"]))
    return pd.to_numeric(text, errors="coerce").astype("float64")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise BadFile("the file is empty")
    if b"\x00" in data[:4096]:
        raise BadFile("the file is binary, not CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadFile("the file is not UTF-8 text") from None


def read_raw_csv(path: Path) -> pd.DataFrame:
    """A CSV file as text cells, exactly as written; BadFile if it is not CSV text."""
    text = _read_text(path)
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                           skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadFile(f"it is not CSV ({exc})") from None


def parse_price_csv(path: Path) -> tuple[pd.DataFrame, int]:
    """Parse one coin file into a tidy frame; returns it with the number of dropped rows."""
    return tidy_prices(read_raw_csv(path))


def tidy_prices(raw: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Text cells of one coin (columns found by name) -> tidy frame and dropped-row count."""
    by_name = {str(c).strip().lower(): c for c in raw.columns}
    missing = [c for c in REQUIRED if c.lower() not in by_name]
    if missing:
        raise BadFile(f"no {' or '.join(missing)} column, so it is not a price series")
    if raw.empty:
        raise BadFile("it has a header but no rows")
    frame = pd.DataFrame({"Date": _parse_dates(raw[by_name["date"]].astype(str))})
    for col in NUMERIC:
        if col.lower() in by_name:
            frame[col] = _parse_numbers(raw[by_name[col.lower()]].astype(str))
    close_text = raw[by_name["close"]].astype(str).str.strip()
    bad = frame["Date"].isna() | (frame["Close"].isna() & ~close_text.isin(["-", ""]))
    frame = frame[~bad]
    frame = frame.drop_duplicates(subset="Date", keep="first").sort_values("Date", kind="stable")
    return frame.reset_index(drop=True), int(bad.sum())


class CryptoLoader:
    """Daily price history of many coins, read from a folder of price files.

    The folder may hold one CSV or Parquet file per coin, or one consolidated
    CSV or Parquet file with a coin column (see :mod:`crypto_ml.layouts`);
    ``data_dir`` may also name such a file.

    ``data_dir`` defaults to the settings' ``CRYPTO_ML_DATA_DIR`` (``data/crypto``).
    ``max_points`` keeps the newest N rows of each coin; ``from_date`` and
    ``to_date`` (inclusive, ISO strings or dates) cut the history first.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        max_points: int | None = None,
        from_date: str | date | None = None,
        to_date: str | date | None = None,
    ) -> None:
        if data_dir is None:
            from crypto_ml.settings import get_settings

            data_dir = get_settings().data_dir
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
            from crypto_ml.layouts import discover  # layouts builds on this module's parsers

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
