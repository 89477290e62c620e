"""The layouts a data folder may use, told apart by what the files hold.

* **per-coin files**: ``<Coin Name>.csv`` or ``<Coin Name>.parquet``, one coin each
  (the "Top 100 Cryptocurrency Historical Data" set; what ``python -m crypto_ml.data
  download`` writes). The coin id comes from the file name: ``Bitcoin Cash`` ->
  ``bitcoin_cash``.
* **consolidated file**: one CSV or Parquet file holding every coin, told by a
  coin column next to ``Date`` and ``Close``: the first of ``coin``, ``coin_id``,
  ``name``, ``slug``, ``symbol``, ``asset``, ``ticker``, ``currency`` (any case),
  e.g. the Kaggle "crypto-markets.csv" (``slug,symbol,name,date,...,close,...``).
  Its values give the coin ids the same way file names do.

Column names are matched in any case and order; Parquet columns may be typed
(dates, floats) or text. A file without ``Date`` and ``Close`` columns is not a
price file and is skipped by the loader with a warning. When two files claim one
coin, the first in name order wins and the other is logged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from crypto_ml.data.names import SUFFIXES
from crypto_ml.data.parsing import BadFile, coin_id, not_prices, read_raw_csv, tidy_prices

log = logging.getLogger(__name__)

COIN_COLUMNS = ("coin", "coin_id", "name", "slug", "symbol", "asset", "ticker", "currency")


@dataclass(frozen=True)
class Source:
    """Where one coin's rows come from; ``read()`` gives the tidy frame and dropped rows."""

    label: str
    read: Callable[[], tuple[pd.DataFrame, int]]


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Typed Parquet columns as the text cells the CSV parser takes (ISO dates, repr floats)."""
    out = pd.DataFrame(index=frame.index)
    for name, col in frame.items():
        if pd.api.types.is_datetime64_any_dtype(col):
            stamps = col.dt.tz_localize(None) if getattr(col.dt, "tz", None) else col
            out[name] = stamps.dt.strftime("%Y-%m-%d").fillna("")
        else:
            out[name] = col.map(lambda v: "" if v is None or v != v else str(v))
    return out


def _read_table(path: Path) -> pd.DataFrame:
    """A whole CSV or Parquet file as text cells."""
    if path.suffix.lower() == ".csv":
        return read_raw_csv(path)
    try:
        return _as_text(pd.read_parquet(path))
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise BadFile(f"it is not a readable Parquet file ({exc})") from None


@functools.cache
def _cached_table(path: Path, mtime: float) -> pd.DataFrame:
    return _read_table(path)


def _table(path: Path) -> pd.DataFrame:
    """A consolidated file, read once while it is unchanged (each coin is a slice of it)."""
    return _cached_table(path, path.stat().st_mtime)


def _columns(path: Path) -> list[str]:
    """Column names without reading the rows; [] if the file cannot be read."""
    try:
        if path.suffix.lower() == ".csv":
            with path.open("rb") as handle:  # a header that is not text: read whole, said so
                line = handle.readline(1 << 16).decode("utf-8-sig")
            return [] if "\x00" in line else [c.strip().strip('"') for c in line.split(",")]
        import pyarrow.parquet as pq  # lazy: pyarrow loads only when a Parquet file is there

        return list(pq.read_schema(path).names)
    except Exception:  # unreadable files are reported when read, as per-coin files
        return []


def coin_column(columns: list[str]) -> str | None:
    """The coin column of a consolidated file's header, or None for a per-coin file."""
    lower = {c.strip().lower(): c for c in columns}
    if "date" not in lower or "close" not in lower:
        return None
    return next((lower[name] for name in COIN_COLUMNS if name in lower), None)


def _consolidated(path: Path, column: str) -> dict[str, Source]:
    table = _table(path)
    keys = table[column].astype(str).map(coin_id)
    sources = {}
    for key in sorted(set(keys) - {""}):
        def read(key: str = key) -> tuple[pd.DataFrame, int]:
            rows = _table(path)
            return tidy_prices(rows[rows[column].astype(str).map(coin_id) == key])
        sources[key] = Source(f"{path.name}[{key}]", read)
    return sources


def _per_coin(path: Path, columns: list[str]) -> Source:
    """One coin's file; one whose header says it holds no prices (a long table of other
    series, say) is refused from the header, its rows never read."""
    why = not_prices(columns) if columns else None

    def read() -> tuple[pd.DataFrame, int]:
        if why is not None:
            raise why
        return tidy_prices(_read_table(path))

    return Source(path.name, read)


def _no_file(path: Path) -> str | None:
    """Why an entry named like a price file is none to read (a FIFO would block a read), or
    None for a regular file."""
    if path.is_file():
        return None
    if path.is_dir():
        return "a folder, not a file"
    if path.is_symlink():
        return "a link that leads to no file (a dangling link, or a loop)"
    return "not a regular file (a pipe or a device)"


def _refused(path: Path, why: str) -> Source:
    def read() -> tuple[pd.DataFrame, int]:
        raise BadFile(why)

    return Source(path.name, read)


def discover(data: Path) -> dict[str, Source]:
    """``{coin id: Source}`` for a folder (every price file in it) or a single file; an entry
    named like one that is no regular file is a coin whose read says why."""
    files = [data] if data.is_file() else sorted(
        p for p in data.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    found: dict[str, Source] = {}
    refused: dict[str, tuple[Path, str]] = {}  # a coin only where no readable file names it
    for path in files:
        if (why := _no_file(path)) is not None:
            refused.setdefault(coin_id(path.stem), (path, why))
            continue
        columns = _columns(path)
        column = coin_column(columns)
        try:
            sources = (_consolidated(path, column) if column
                       else {coin_id(path.stem): _per_coin(path, columns)})
        except (BadFile, OSError) as exc:
            log.warning("skipping %s: %s", path.name, exc)
            continue
        for key, source in sources.items():
            if key in found:
                log.warning("%s: coin %r is also in %s; using %s", source.label, key,
                            found[key].label, found[key].label)
            else:
                found[key] = source
    for key, (path, why) in refused.items():
        if key in found:
            log.warning("skipping %s: %s", path.name, why)
        else:
            found[key] = _refused(path, why)
    return dict(sorted(found.items()))
