"""A long-format table of many series cut from the real coins (nothing downloaded).

    python -m bench.make_table --series N --length L --out PATH.parquet [--seed 0]

Columns ``unique_id`` (string, ``<coin>-<k>``, ``k`` zero-padded so that string order is
numeric order), ``ds`` (date32: the real dates of the window) and ``y`` (float64: the real
closes of the window times a per-series factor, log-uniform between 0.5 and 2, so that
series cut from the same window still differ). A window is ``L`` consecutive days of one
coin with a finite, positive close on each; series ``k`` takes a window drawn from all such
windows of all coins (a seeded permutation, repeated once there are more series than
windows), so a seed gives the same file. Rows are sorted by ``unique_id`` then ``ds``.

The file is written by :class:`pyarrow.parquet.ParquetWriter` in row groups of about
1,000,000 rows, generated one group at a time, so memory is a few row groups (tens of MB)
plus the series' ids, windows and factors (about 300 bytes a series while they are made
and sorted): some 0.5 GB for 1,000,000 series x 100 closes (100 million rows). Measured
here: 10,000 series x 1,000 closes (10 row groups) in 3 s at 280 MB peak RSS. The coins
come from ``data_dir``, else ``CRYPTO_ML_DATA_DIR``, else ``../shared/data/top100-2017``
beside the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crypto_ml.data.loader import CryptoLoader

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "top100-2017"
ROW_GROUP = 1_000_000
SCHEMA = pa.schema([("unique_id", pa.string()), ("ds", pa.date32()), ("y", pa.float64())])


def data_folder(data_dir: str | Path | None = None) -> Path:
    """``data_dir``, else ``CRYPTO_ML_DATA_DIR``, else the shared top-100 folder; it must exist."""
    folder = Path(data_dir or os.environ.get("CRYPTO_ML_DATA_DIR") or DEFAULT_DATA)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no price folder at {folder}: pass data_dir (--data-dir) or set CRYPTO_ML_DATA_DIR to "
            f"the folder of the top-100 coins' daily CSVs (by default {DEFAULT_DATA})")
    return folder


class Windows:
    """Every window of ``length`` consecutive days with finite positive closes, of every coin.

    The coins' closes and dates are kept end to end (``closes``, ``days``: days since the
    epoch); window ``j`` is ``length`` rows from ``starts[j]``, of coin ``coins[j]``.
    """

    def __init__(self, folder: Path, length: int) -> None:
        loader = CryptoLoader(folder, cache_dir=None)
        self.names: list[str] = []
        closes, days, coins, starts = [], [], [], []
        offset = 0
        for name in loader.get_crypto_names():
            dates, values = loader.get_closes(name)
            if len(values) < length:
                continue
            day = dates.astype("datetime64[D]").astype(np.int64)
            # window [s, s + length): every close finite and positive, each day the one after the last
            bad_close = np.concatenate([[0], np.cumsum(~(np.isfinite(values) & (values > 0)))])
            gap = np.concatenate([[0, 0], np.cumsum(np.diff(day) != 1)])  # gap[i]: breaks before row i
            s = np.arange(len(values) - length + 1)
            ok = (bad_close[s + length] == bad_close[s]) & (gap[s + length] == gap[s + 1])
            if not ok.any():
                continue
            code = len(self.names)
            self.names.append(name)
            closes.append(values.astype(np.float64))
            days.append(day.astype(np.int32))
            coins.append(np.full(int(ok.sum()), code, np.int32))
            starts.append(offset + s[ok])
            offset += len(values)
        if not self.names:
            raise ValueError(f"no coin in {folder} has {length} consecutive days of positive closes")
        self.closes = np.concatenate(closes)
        self.days = np.concatenate(days)
        self.coins = np.concatenate(coins)
        self.starts = np.concatenate(starts).astype(np.int64)
        self.length = length

    def __len__(self) -> int:
        return len(self.starts)


def plan(windows: Windows, series: int,
         seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each series' window and factor, the ids in string order, and the series in that order."""
    rng = np.random.default_rng(seed)
    pick = np.resize(rng.permutation(len(windows)), series)  # window of series k
    factor = np.exp(rng.uniform(np.log(0.5), np.log(2.0), series))
    width = max(6, len(str(series - 1)))
    names = np.array(windows.names)
    ids = np.char.add(np.char.add(names[windows.coins[pick]], "-"),
                      np.char.zfill(np.arange(series).astype(str), width))
    order = np.argsort(ids, kind="stable")  # code-point order, as Arrow and Parquet compare
    return pick, factor, ids[order], order


def make_table(path: str | Path, series: int, length: int, seed: int = 0,
               data_dir: str | Path | None = None) -> Path:
    """Write ``series`` windows of ``length`` real closes to ``path`` (Parquet); the path."""
    if series < 1 or length < 1:
        raise ValueError(f"series and length must be at least 1, got {series} and {length}")
    windows = Windows(data_folder(data_dir), length)
    pick, factor, ids, order = plan(windows, series, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per_group = max(1, ROW_GROUP // length)
    steps = np.arange(length)
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, SCHEMA) as writer:
        for first in range(0, series, per_group):
            rows = order[first:first + per_group]
            index = (windows.starts[pick[rows]][:, None] + steps[None, :]).ravel()
            y = (windows.closes[index].reshape(len(rows), length) * factor[rows][:, None]).ravel()
            group_ids = pa.array(ids[first:first + per_group].tolist(), pa.string())
            table = pa.table({
                "unique_id": group_ids.take(pa.array(np.repeat(np.arange(len(rows)), length))),
                "ds": pa.array(windows.days[index], pa.int32()).cast(pa.date32()),
                "y": pa.array(y, pa.float64()),
            }, schema=SCHEMA)
            writer.write_table(table, row_group_size=len(table))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, required=True)
    parser.add_argument("--length", type=int, required=True, help="closes per series")
    parser.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the coins' CSV folder (default: CRYPTO_ML_DATA_DIR or "
                             "../shared/data/top100-2017)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        make_table(args.out, args.series, args.length, args.seed, args.data_dir)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"make_table: {exc}")
    print(f"{args.out}: {args.series} series x {args.length} closes "
          f"({args.series * args.length:,} rows) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
