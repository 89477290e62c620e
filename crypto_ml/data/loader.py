"""The loader: daily price history of many coins, by coin id, from a data folder or file.

Files are found by :mod:`~crypto_ml.data.layouts` and parsed by
:mod:`~crypto_ml.data.parsing`; a file that cannot be a price series is skipped
with one warning that names it. Given a ``cache_dir``, a folder's parsed files are
kept there (:mod:`~crypto_ml.data.cache`, keyed by each file's size and mtime), so a
second run lists and serves the coins in milliseconds without importing pandas:
:meth:`CryptoLoader.get_crypto_names` and :meth:`CryptoLoader.get_closes` stay in
NumPy; only :meth:`CryptoLoader.get_df` builds a DataFrame.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crypto_ml.core.errors import CoinNotFound, ConfigError, DataNotFound
from crypto_ml.data import cache
from crypto_ml.data.names import coin_id

if TYPE_CHECKING:
    import pandas as pd

    from crypto_ml.data.layouts import Source

log = logging.getLogger(__name__)

HOW_TO_GET_DATA = (
    "download the top 100 coins' daily history there with `python -m crypto_ml.data download`, "
    "or put one CSV per coin there (the public 'Top 100 Cryptocurrency Historical Data' set), "
    "or point CRYPTO_ML_DATA_DIR / --data-dir at such a folder (see data/README.md)"
)


def _instant(value: str | date | None, name: str) -> np.datetime64 | None:
    """``value`` (an ISO string or a date) as an instant, or ConfigError naming ``name``."""
    if value is None:
        return None
    try:
        return np.datetime64(value if isinstance(value, str) else value.isoformat(), "ns")
    except (ValueError, AttributeError, TypeError):
        import pandas as pd  # lazy: only for date strings NumPy does not read

        try:
            return pd.Timestamp(value).to_datetime64().astype("datetime64[ns]")
        except (ValueError, TypeError):
            raise ConfigError(f"{name} must be a date, like '2017-06-01', got {value!r:.80}"
                              ) from None


def dropped_rows(n: int) -> str:
    """The warning about a coin's ``n`` rows that its parsing left out."""
    return (f"dropped {n} row(s) it could not use: unreadable, a close below zero, dated after "
            "tomorrow, or a date given again with another close (the first one is kept)")


def _discover(folder: Path) -> dict[str, Source]:
    # lazy: layouts and parsing import pandas (a second of start-up); a warm cache needs neither
    from crypto_ml.data.layouts import discover

    return discover(folder)


def _read(source: Source) -> tuple[pd.DataFrame | None, int, str | None]:
    from crypto_ml.data.parsing import BadFile  # lazy, as in _discover

    try:
        frame, dropped = source.read()
    except (BadFile, OSError) as exc:
        return None, 0, str(exc)
    return frame, dropped, None


class CryptoLoader:
    """Daily price history of many coins, read from a folder of price files.

    The folder may hold one CSV or Parquet file per coin, or one consolidated
    CSV or Parquet file with a coin column (see :mod:`crypto_ml.data.layouts`);
    ``data_dir`` may also name such a file.

    ``data_dir`` is required here (the settings' ``data_dir`` at the edges);
    ``crypto_ml.data_loader.CryptoLoader()`` defaults it to ``CRYPTO_ML_DATA_DIR``.
    ``max_points`` keeps the newest N rows of each coin; ``from_date`` and
    ``to_date`` (inclusive, ISO strings or dates) cut the history first.
    ``cache_dir`` (the settings' ``cache_dir`` at the edges; None: no cache) keeps a
    folder of per-coin files parsed between runs.
    """

    def __init__(
        self,
        data_dir: str | Path,
        max_points: int | None = None,
        from_date: str | date | None = None,
        to_date: str | date | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(data_dir, str | os.PathLike):
            raise ConfigError(f"data_dir must be a folder's path, got {data_dir!r:.80}")
        self.data_dir = Path(data_dir)
        if max_points is not None and (isinstance(max_points, bool) or not isinstance(
                max_points, int | np.integer) or max_points < 1):
            raise ConfigError(f"max_points must be a whole number of closes, at least 1 (or "
                              f"None for all), got {max_points!r:.80}")
        self.max_points = None if max_points is None else int(max_points)
        self.from_date = _instant(from_date, "from_date")
        self.to_date = _instant(to_date, "to_date")
        if (self.from_date is not None and self.to_date is not None
                and self.from_date > self.to_date):
            raise ConfigError(f"from_date {from_date} is after to_date {to_date}: no close "
                              "lies between them")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._files: dict[str, Source] | None = None
        self._frames: dict[str, pd.DataFrame] = {}
        self._skipped: dict[str, str] = {}
        self._dropped: dict[str, int] = {}
        self._cached: cache.Folder | None = None
        self._warned: set[str] = set()

    # --- finding and reading ------------------------------------------------------------------

    def _missing(self) -> DataNotFound:
        return DataNotFound(f"data directory {self.data_dir} does not exist; {HOW_TO_GET_DATA}")

    def _index(self) -> dict[str, Source]:
        if self._files is None:
            if not self.data_dir.exists():
                raise self._missing()
            if not self.data_dir.is_dir() and not self.data_dir.is_file():  # /dev/null, a FIFO
                raise DataNotFound(f"data directory {self.data_dir} is no folder or file; "
                                   f"{HOW_TO_GET_DATA}")
            self._files = _discover(self.data_dir)
        return self._files

    def _load(self, coin: str, warn: bool = True) -> pd.DataFrame | None:
        """The coin's frame, parsed once; None for a file that is not a price series. The
        first read that asks for the coin (``warn``) logs why it was skipped or its dropped
        rows; filling the cache does not, so a run hears only of the coins it reads."""
        if coin not in self._frames and coin not in self._skipped:
            frame, dropped, reason = _read(self._index()[coin])
            if frame is None:
                self._skipped[coin] = str(reason)
            else:
                self._frames[coin], self._dropped[coin] = frame, dropped
        if warn and coin not in self._warned:
            self._warned.add(coin)
            label = self._index()[coin].label
            if coin in self._skipped:
                log.warning("skipping %s: %s", label, self._skipped[coin])
            elif self._dropped[coin]:
                log.warning("%s: %s", label, dropped_rows(self._dropped[coin]))
        return self._frames.get(coin)

    def _folder(self, parse: bool = True) -> cache.Folder | None:
        """The folder through the cache (on a miss: parsed and cached, or with ``parse=False``
        None); None without a cache."""
        if self._cached is not None or self.cache_dir is None or not self.data_dir.is_dir():
            return self._cached
        files = cache.listing(self.data_dir)
        path = cache.cache_file(self.cache_dir, self.data_dir)
        self._cached = cache.read(path, files)
        if self._cached is None and parse:
            self._cached = self._parse_all(files)
            if self._cached is not None:
                cache.write(path, files, self._cached)
        return self._cached

    def _parse_all(self, files: cache.Listing) -> cache.Folder | None:
        """Parse every file (quietly: reads warn); a Folder if they are all per-coin files."""
        index = self._index()
        series, skipped = {}, {}
        for coin, source in index.items():
            frame = self._load(coin, warn=False)
            if frame is None:
                skipped[source.label] = self._skipped[coin]
                continue
            columns = tuple(c for c in cache.COLUMNS if c in frame)
            values = np.full((len(frame), len(cache.COLUMNS)), np.nan)
            for i, col in enumerate(cache.COLUMNS):
                if col in frame:
                    values[:, i] = frame[col].to_numpy(dtype=np.float64)
            dates = frame["Date"].to_numpy().astype("datetime64[ns]")
            series[coin] = cache.Series(coin, source.label, dates, values, columns,
                                         self._dropped[coin])
        if {s.label for s in series.values()} | set(skipped) != set(files):
            return None  # consolidated files or duplicate coins: not cached
        return cache.Folder(series, skipped)

    def _cached_series(self, coin: str) -> cache.Series | None:
        folder = self._folder()
        if folder is None:
            return None
        found = folder.series.get(coin)
        if found is not None and coin not in self._warned:
            self._warned.add(coin)
            if found.dropped:
                log.warning("%s: %s", found.label, dropped_rows(found.dropped))
        return found

    def _window(self, dates: np.ndarray) -> slice | np.ndarray:
        """Rows of ``dates`` (oldest first) inside the date window and ``max_points``."""
        keep = np.ones(len(dates), dtype=bool)
        if self.from_date is not None:
            keep &= dates >= self.from_date
        if self.to_date is not None:
            keep &= dates <= self.to_date
        rows = np.flatnonzero(keep)
        return rows if self.max_points is None else rows[-self.max_points :]

    def _unknown(self, name: str, key: str, known: list[str]) -> CoinNotFound:
        """Not found: a file that names the coin but holds no prices says why (it read as an
        unknown coin), else the close matches."""
        if (why := self._skip_reason(key)) is not None:
            return CoinNotFound(f"cannot read the price file of coin {key!r}: {why}; fix or "
                                "replace the file")
        return CoinNotFound.for_coin(name, difflib.get_close_matches(key, known, n=3, cutoff=0.6))

    def _skip_reason(self, key: str) -> str | None:
        """Why the file of coin ``key`` was found to be no price series (``"Junk.csv: ..."``),
        as far as the files are parsed now (nothing is read here); None: it was not."""
        if self._cached is not None:
            return next((f"{label}: {why}" for label, why in self._cached.skipped.items()
                         if coin_id(Path(label).stem) == key), None)
        return f"{self._index()[key].label}: {self._skipped[key]}" if key in self._skipped else None

    # --- the public reads ---------------------------------------------------------------------

    def get_crypto_names(self) -> list[str]:
        """Sorted ids of every coin with a readable price file."""
        if not self.data_dir.exists():
            raise self._missing()
        folder = self._folder()
        if folder is not None:
            for label, reason in folder.skipped.items():
                if label not in self._warned:
                    self._warned.add(label)
                    log.warning("skipping %s: %s", label, reason)
            names = sorted(folder.series)
        else:
            names = [c for c in self._index() if self._load(c) is not None]
        if not names:
            raise DataNotFound(f"no price files in {self.data_dir}; {HOW_TO_GET_DATA}")
        return names

    def check_known(self, coins: Iterable[str]) -> None:
        """CoinNotFound (with the nearest ids) for the first of ``coins`` that no file of the
        folder names, reading no rows."""
        known = self.coin_ids()
        for coin in coins:
            key = coin_id(coin)
            if key not in known:
                raise self._unknown(coin, key, known)

    def pick(self, names: Sequence[str] | None, option: str = "coins"
             ) -> tuple[str, ...] | None:
        """``names`` as coin ids, in the order given, duplicates dropped (None: every coin),
        checked before a run: names match in any case and spacing (``Bitcoin Cash`` is
        ``bitcoin_cash``); a name no file holds is a ConfigError naming it, the nearest ids
        and ``option``; so is a pick none of whose files can be read (a few unreadable ones
        among others fail in the run itself, and every other forecast is still delivered).
        DataNotFound when the folder holds no price file, or none that can be read."""
        known = self.coin_ids()
        if not known:
            raise DataNotFound(f"no price files in {self.data_dir}; {HOW_TO_GET_DATA}")
        if not names:
            self._check_readable(known, None)
            return None
        ids = list(dict.fromkeys(coin_id(name) for name in names))
        unknown = [c for c in ids if c not in known]
        if unknown:
            near = dict.fromkeys(m for c in unknown for m in difflib.get_close_matches(c, known, 3))
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown coin(s) {', '.join(repr(c) for c in unknown)}{hint} "
                              f"({option} takes the file names in {self.data_dir}, in any case)")
        self._check_readable(ids, option)
        return tuple(ids)

    def _check_readable(self, coins: list[str], option: str | None) -> None:
        """An error naming the file and why when not one of ``coins`` can be read: of every
        coin (``option`` None), DataNotFound listing a few; of those ``option`` picked, a
        ConfigError."""
        reasons = []
        for coin in coins:
            reason = self.unreadable(coin)
            if reason is None:
                return
            reasons.append((coin, reason))
        if option is not None:
            coin, reason = reasons[0]
            raise ConfigError(f"cannot read the price file of coin {coin!r}: {reason} "
                              f"(fix or replace the file, or leave the coin out of {option})")
        listed = "; ".join(r for _, r in reasons[:3]) + (
            f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        raise DataNotFound(f"no readable price file in {self.data_dir} ({listed}); "
                           f"{HOW_TO_GET_DATA}")

    def coin_ids(self) -> list[str]:
        """Sorted ids of every coin the folder's files name, readable or not: from a valid
        cache (one per-coin file each, no pandas), else from the listing and the files'
        headers, without reading their rows (a file may still prove unreadable later)."""
        if not self.data_dir.exists():
            raise self._missing()
        folder = self._folder(parse=False)
        if folder is not None:
            return sorted({*folder.series, *(coin_id(Path(label).stem) for label in folder.skipped)})
        return list(self._index())

    def unreadable(self, name: str) -> str | None:
        """Why the file of coin ``name`` is not a price series (``"Junk.csv: the file is
        binary, not CSV"``), or None if it is one (or no file names the coin). Reads the
        file once (through the cache, if any), without a warning: for checks before a run."""
        key = coin_id(name)
        folder = self._folder()  # the cache, parsed now if need be: then _skip_reason reads it
        if folder is not None:
            return None if key in folder.series else self._skip_reason(key)
        if key not in self._index() or self._load(key, warn=False) is not None:
            return None
        return self._skip_reason(key)

    def get_df(self, name: str) -> pd.DataFrame:
        """The coin's history oldest first: ``Date`` (datetime64) and float columns."""
        key = coin_id(name)
        found = self._cached_series(key)
        if found is None and self._cached is not None:
            raise self._unknown(name, key, sorted(self._cached.series))
        if found is not None:
            import pandas as pd  # lazy: only callers that want frames pay for pandas

            rows = self._window(found.dates)
            data: dict[str, Any] = {"Date": found.dates[rows]}
            for i, col in enumerate(cache.COLUMNS):
                if col in found.columns:
                    data[col] = found.values[rows, i]
            return pd.DataFrame(data)
        index = self._index()
        frame = self._load(key) if key in index else None
        if frame is None:
            raise self._unknown(name, key, [c for c in index if c not in self._skipped])
        frame = frame.iloc[self._window(frame["Date"].to_numpy())]
        return frame.reset_index(drop=True).copy()

    def get_closes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(dates, closes)`` oldest first, rows without a close left out (no pandas when cached)."""
        found = self._cached_series(coin_id(name))
        if found is None:
            frame = self.get_df(name)
            dates, closes = frame["Date"].to_numpy(), frame["Close"].to_numpy(dtype=np.float64)
        else:
            rows = self._window(found.dates)
            dates, closes = found.dates[rows], found.values[rows, cache.COLUMNS.index("Close")]
        keep = ~np.isnan(closes)
        return dates[keep], closes[keep]

    def get_prices(self, name: str) -> np.ndarray:
        """Closing prices oldest first as float64; missing closes are NaN."""
        found = self._cached_series(coin_id(name))
        if found is not None:
            return found.values[self._window(found.dates), cache.COLUMNS.index("Close")].copy()
        return self.get_df(name)["Close"].to_numpy(dtype=np.float64)
