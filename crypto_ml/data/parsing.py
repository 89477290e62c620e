"""Read daily price history, one CSV file per coin, as published in the
"Top 100 Cryptocurrency Historical Data" set (CoinMarketCap export).

Real files are untidy, so the loader finds columns by name (any case, any
order), accepts a BOM and CRLF line ends, parses quoted thousands
(``"1,194,830,000"``), ``-`` as missing, abbreviated and full month names, dates with slashes in
the file's own order (day/month or month/day: the one that reads them, or whose
days follow each other) and spreadsheet serial dates, sorts rows oldest first and keeps one row per date.
A file that cannot be a price series (the ``100 List.csv`` ranking, an empty or
header-only file, something that is not CSV) is skipped with one warning that
names it; rows whose date or close cannot be parsed, closes below zero, rows dated after
tomorrow and a date's later rows with another close than its first are dropped with a count.
This module turns one file's text cells into a tidy frame; :mod:`~crypto_ml.data.layouts`
finds the files and :mod:`~crypto_ml.data.loader` serves them by coin.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crypto_ml.data.names import coin_id

__all__ = ["BadFile", "coin_id", "parse_price_csv", "read_raw_csv", "tidy_prices"]

REQUIRED = ("Date", "Close")
NUMERIC = ("Open", "High", "Low", "Close", "Volume", "Market Cap")
DATE_FORMATS = ("%b %d, %Y", "%B %d, %Y", "%Y-%m-%d", "%Y/%m/%d")
#: Dates with slashes, in either order: a file's own order is the one that reads all of them.
SLASH_ORDERS = ("%d/%m/%Y", "%m/%d/%Y")
SPREADSHEET_EPOCH = pd.Timestamp("1899-12-30")


class BadFile(Exception):
    """Internal: a file that is not a price series; carries the reason."""


def _parse_dates(raw: pd.Series) -> pd.Series:
    text = raw.str.strip()
    parsed = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    for fmt in DATE_FORMATS:
        todo = parsed.isna()
        if not todo.any():
            break
        parsed[todo] = pd.to_datetime(text[todo], format=fmt, errors="coerce")
    slashed = parsed.isna() & text.str.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", na=False)
    if slashed.any():
        parsed[slashed] = _slash_dates(text[slashed])
    serial = parsed.isna() & text.str.fullmatch(r"\d{5}(\.0+)?", na=False)
    if serial.any():
        days = pd.to_numeric(text[serial]).astype("int64")
        parsed[serial] = SPREADSHEET_EPOCH + pd.to_timedelta(days, unit="D")
    return parsed


def _slash_dates(text: pd.Series) -> pd.Series:
    """Dates like ``22/09/2017`` or ``09/22/2017``, in the file's own order: the one that reads
    more of them (rows only one order reads settle it), else, the two reading the same rows to
    other days, the one whose days follow each other more closely (daily prices); BadFile
    when even that does not tell them apart (``03/04/2017`` and ``04/03/2017`` alone)."""
    tries = [pd.to_datetime(text, format=fmt, errors="coerce") for fmt in SLASH_ORDERS]
    counts = [int(got.notna().sum()) for got in tries]
    if counts[0] != counts[1] or tries[0].equals(tries[1]):
        return tries[0] if counts[0] >= counts[1] else tries[1]
    steps = [_typical_step(got) for got in tries]
    if steps[0] != steps[1]:
        return tries[0] if steps[0] < steps[1] else tries[1]
    raise BadFile(f"its dates (such as {text.iloc[0]!r}) read as day/month and as month/day "
                  "alike; write them as YYYY-MM-DD")


def _typical_step(dates: pd.Series) -> float:
    """The median gap between the distinct dates read (inf for fewer than two)."""
    days = dates.dropna().drop_duplicates().sort_values()
    return float(days.diff().dt.days.median()) if len(days) > 1 else float("inf")


#: How the files write a missing number
MISSING = ["-", "", "null", "NaN", "nan"]
#: A number whose commas group its thousands (``1,234,567.89``): the only commas taken
GROUPED = r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d*)?"  # not 0,123: a decimal comma
_GROUPED, _DOLLAR_SPACE = re.compile(GROUPED), re.compile(r"[$\s]")


def _parse_numbers(raw: pd.Series) -> pd.Series:
    """Numbers as the files write them: ``$`` and spaces dropped, commas only where they group
    thousands; a decimal comma (``48,09``, ``1.234,56``) is no number (not 4809 or 1.23456)."""
    cells = [_DOLLAR_SPACE.sub("", s) if "$" in s or " " in s or not s.isprintable() else s
             for s in (c.strip() for c in raw.tolist())]  # plain loops: .str calls cost more
    cells = [s.replace(",", "") if "," in s and _GROUPED.fullmatch(s) else s for s in cells]
    text = pd.Series(cells, index=raw.index, dtype=object)
    return pd.to_numeric(text.mask(text.isin(MISSING)), errors="coerce").astype("float64")


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


def not_prices(columns: list[str]) -> BadFile | None:
    """Why a file with these column names is not a price series (None: it may be one)."""
    names = {str(c).strip().lower() for c in columns}
    missing = [c for c in REQUIRED if c.lower() not in names]
    return BadFile(f"no {' or '.join(missing)} column, so it is not a price series") \
        if missing else None


def _columns_by_name(columns: Any) -> dict[str, Any]:
    """Each column by its name stripped and lower-cased; BadFile when two of the columns read
    (Date, Close, ...) differ only in case or spaces: which one holds the prices is not known."""
    by_name: dict[str, Any] = {}
    read = {c.lower() for c in (*REQUIRED, *NUMERIC)}
    for column in columns:
        key = str(column).strip().lower()
        base = re.sub(r"\.\d+$", "", key)  # "close.1": pandas' name for a second "Close"
        if base in read and base in by_name:
            raise BadFile(f"it has two columns named {by_name[base]!r} and {column!r}; keep one")
        by_name.setdefault(key, column)
    return by_name


def tidy_prices(raw: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Text cells of one coin (columns found by name) -> tidy frame and dropped-row count."""
    by_name = _columns_by_name(raw.columns)
    if (why := not_prices(list(by_name))) is not None:
        raise why
    if raw.empty:
        raise BadFile("it has a header but no rows")
    frame = pd.DataFrame({"Date": _parse_dates(raw[by_name["date"]].astype(str))})
    for col in NUMERIC:
        if col.lower() in by_name:
            frame[col] = _parse_numbers(raw[by_name[col.lower()]].astype(str))
    if frame["Date"].isna().all():
        first = str(raw[by_name["date"]].iloc[0]).strip()
        raise BadFile(f"none of its dates could be read (the first: {first[:40]!r}); write them "
                      "as 2017-09-22 or Sep 22, 2017")
    close_text = raw[by_name["close"]].astype(str).str.strip()
    no_close = close_text.isin(["-", ""])  # a close the file says is missing: the row stays
    infinite = frame["Close"].isin([np.inf, -np.inf])  # "inf" reads as a number: no price
    negative = frame["Close"] < 0  # no price is: naive and linear forecast below zero on it
    future = frame["Date"] > pd.Timestamp.now() + pd.Timedelta(days=1)  # a mistyped year
    bad = (frame["Date"].isna() | infinite | negative | future
           | (frame["Close"].isna() & ~no_close))
    if future.any() and not (frame["Date"].notna() & ~future).any():
        first = frame["Date"][future].min()
        raise BadFile(f"every dated row is after tomorrow (the first: {first:%Y-%m-%d}); "
                      "check the year")
    if negative.any() and not (frame["Close"] >= 0).any():
        raise BadFile("every close is below zero, which no price is")
    frame = frame[~bad]
    if not frame["Close"].notna().any():  # no series to forecast
        written = close_text[~no_close]
        raise BadFile("none of its closes is a number (all '-' or empty)" if written.empty else
                      f"none of its closes is a number (such as {written.iloc[0][:40]!r}; write "
                      "a decimal point, 48.09, and commas only between thousands)")
    dropped = int(bad.sum())
    twice = frame["Date"].duplicated(keep="first")
    if twice.any():
        kept = frame[~twice]
        dropped += int(_conflicts(frame[twice], kept).sum())  # the same date, another close
        frame = kept
    frame = frame.sort_values("Date", kind="stable")
    return frame.reset_index(drop=True), dropped


def _conflicts(again: pd.DataFrame, kept: pd.DataFrame) -> pd.Series:
    """Which rows of ``again`` (a date seen before) give another close than the kept row."""
    first = again["Date"].map(kept.set_index("Date")["Close"])
    same = (again["Close"] == first) | (again["Close"].isna() & first.isna())
    return ~same
