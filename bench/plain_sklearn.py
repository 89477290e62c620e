"""The baseline the whole command is measured against: one process, pandas + scikit-learn.

Reads every coin's CSV file of a data folder (as the files write them: ``"Sep 22, 2017"`` or
``"June 4, 2017"`` dates, quoted thousands, ``-`` for missing), fits the same trend line as
the ``linear`` model on each coin's closes and prints a 10-day forecast per coin:

    python bench/plain_sklearn.py ../shared/data/top100-2017
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

HORIZON = 10


def closes(path: Path) -> np.ndarray | None:
    """A coin's closes oldest first; None if the file is not a price series."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    if "Date" not in frame or "Close" not in frame:
        return None
    text = frame["Date"].str.strip()
    dates = pd.to_datetime(text, format="%b %d, %Y", errors="coerce")
    dates = dates.fillna(pd.to_datetime(text, format="%B %d, %Y", errors="coerce"))
    close = pd.to_numeric(frame["Close"].str.replace(",", ""), errors="coerce")
    tidy = pd.DataFrame({"Date": dates, "Close": close}).dropna()
    tidy = tidy.drop_duplicates("Date").sort_values("Date")
    return tidy["Close"].to_numpy(dtype=np.float64)


def main(folder: Path) -> int:
    for path in sorted(folder.glob("*.csv")):
        series = closes(path)
        if series is None or len(series) < 2:
            continue
        t = np.arange(len(series), dtype=np.float64).reshape(-1, 1)
        model = LinearRegression().fit(t, series)
        future = np.arange(len(series), len(series) + HORIZON, dtype=np.float64).reshape(-1, 1)
        print(path.stem, model.predict(future))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/top100-2017")))
