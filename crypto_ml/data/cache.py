"""A folder's parsed price files, cached as one NumPy file and keyed by each file's size and mtime.

Parsing the 100 untidy CSV files of the real data set takes about a second (pandas,
per-file overheads); reading them back from here takes a few milliseconds and needs
neither pandas nor the files themselves. The cache is used only while *every* price
file of the folder has the size and modification time (ns) it had when the cache was
written, and no file was added or removed; anything else means a full re-parse, after
which the cache is rewritten (atomically: written aside, then renamed). Files that
were skipped (not a price series) are remembered with their reason, so the loader
warns about them as it would have. Only folders of per-coin files are cached, and only the
``KEEP`` most recently written folders' caches are kept.

The format is plain ``np.savez``: ``dates`` (int64 ns), ``values`` (rows x 6 float64,
NaN where missing) and ``meta`` (UTF-8 JSON as uint8); it is loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crypto_ml.data.names import SUFFIXES

#: Raised whenever parsing changes what a file gives: an older cache is then parsed again.
VERSION = 6  # 3: infinite closes dropped, files with no numeric close skipped; 4: decimal
# commas; 5: rows dated after tomorrow, a date's later rows with another close; 6: closes below 0
COLUMNS = ("Open", "High", "Low", "Close", "Volume", "Market Cap")
Listing = dict[str, tuple[int, int]]  # file name -> (size, mtime_ns)
KEEP = 16  # caches of this many folders are kept; older ones are removed when one is written


@dataclass(frozen=True)
class Series:
    """One coin as cached: its rows in ``dates``/``values``, the file's name and dropped rows."""

    coin: str
    label: str
    dates: np.ndarray  # datetime64[ns], oldest first
    values: np.ndarray  # rows x len(COLUMNS) float64
    columns: tuple[str, ...]  # which of COLUMNS the file had
    dropped: int


@dataclass(frozen=True)
class Folder:
    """A cached folder: its coins in id order and the files skipped, ``{label: reason}``."""

    series: dict[str, Series]
    skipped: dict[str, str]


def listing(folder: Path) -> Listing:
    """Size and mtime of every price file in ``folder`` (stat only, no reads)."""
    out = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in SUFFIXES:
                continue
            with contextlib.suppress(OSError):
                st = entry.stat()
                out[name] = (st.st_size, st.st_mtime_ns)
    return out


def cache_file(cache_dir: Path, folder: Path) -> Path:
    """Where the cache of ``folder`` lives in ``cache_dir`` (one file per folder)."""
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"prices-{digest}.npz"


def read(path: Path, files: Listing) -> Folder | None:
    """The cached folder if ``path`` holds a cache of exactly ``files``; else None."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            if meta.get("version") != VERSION or meta.get("files") != {
                    k: list(v) for k, v in files.items()}:
                return None
            dates = npz["dates"].view("datetime64[ns]")
            values = npz["values"]
    except (OSError, ValueError, KeyError):
        return None
    series = {}
    for coin, label, start, stop, columns, dropped in meta["series"]:
        series[coin] = Series(coin, label, dates[start:stop], values[start:stop],
                              tuple(columns), dropped)
    return Folder(series, dict(meta["skipped"]))


def write(path: Path, files: Listing, folder: Folder) -> None:
    """Store ``folder`` as the cache of ``files``; a cache that cannot be written is no error."""
    dates, values, rows = [], [], []
    start = 0
    for coin, s in folder.series.items():
        dates.append(s.dates.astype("datetime64[ns]").view("int64"))
        values.append(s.values)
        rows.append([coin, s.label, start, start + len(s.dates), list(s.columns), s.dropped])
        start += len(s.dates)
    meta: dict[str, Any] = {"version": VERSION, "files": {k: list(v) for k, v in files.items()},
                            "series": rows, "skipped": folder.skipped}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle,
                     dates=np.concatenate(dates) if dates else np.zeros(0, "int64"),
                     values=np.concatenate(values) if values else np.zeros((0, len(COLUMNS))),
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        os.replace(tmp, path)
        caches = sorted(path.parent.glob("prices-*.npz"), key=lambda p: p.stat().st_mtime)
        for old in caches[:-KEEP]:
            old.unlink(missing_ok=True)
