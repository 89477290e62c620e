"""A small price data set the tests make, in the layout and format of the real top-100 set.

One ``<Coin Name>.csv`` per coin as CoinMarketCap exported them (``"Sep 22, 2017"``
dates newest first, quoted thousands, ``-`` for a missing early volume) plus the
``100 List.csv`` ranking that is not a price series. Each coin has the real set's
row count and newest close, so the tests' expectations (a long bitcoin, a too-short
neblio, batches of cheap forecasts) hold; the closes between are a seeded random walk.
Tests that check the real files' own quirks use the real set instead (``real_data``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: file name: (rows, newest close), as in the real set (top100-2017)
COINS: dict[str, tuple[int, float]] = {
    "Bitcoin": (1609, 3630.7), "Ethereum": (778, 264.31), "Ripple": (1511, 0.1735),
    "Litecoin": (1609, 48.09), "Dash": (1317, 346.58), "Monero": (1220, 88.17),
    "NEM": (906, 0.2106), "NEO": (379, 18.69), "IOTA": (103, 0.5418), "Zcash": (329, 195.84),
    "Stratis": (407, 3.93), "Waves": (478, 3.77), "Neblio": (11, 1.12), "Siacoin": (970, 2.25),
    "Nexus": (970, 2.25), "Dogecoin": (1378, 0.0008), "Bitcoin Cash": (62, 415.09),
    "I-O Coin": (1148, 3.31), "Ethereum Classic": (426, 10.26), "Lisk": (535, 5.75),
    "Steem": (523, 1.01), "Decred": (591, 31.13), "Factom": (718, 15.56), "Golos": (284, 0.0942),
    "Komodo": (230, 1.65), "Namecoin": (1609, 1.34), "Peercoin": (1608, 1.29),
    "ReddCoin": (1320, 0.0009), "Verge": (1064, 0.0054), "Vertcoin": (1342, 1.09),
    "Viacoin": (1163, 1.02), "ZCoin": (352, 11.48), "BitShares": (1160, 0.0692),
}
NEWEST = pd.Timestamp("2017-09-22")


def _thousands(value: float) -> str:
    return f'"{value:,.0f}"'


def write_coin(path: Path, rows: int, last_close: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.002, 0.04, rows)
    closes = last_close * np.exp(np.cumsum(steps) - np.cumsum(steps)[-1])  # oldest first
    dates = pd.date_range(end=NEWEST, periods=rows, freq="D")
    lines = ["Date,Open,High,Low,Close,Volume,Market Cap"]
    for i in range(rows - 1, -1, -1):  # newest first, as exported
        close = float(f"{closes[i]:.6g}")
        open_ = float(f"{closes[i - 1] if i else close:.6g}")
        high, low = max(open_, close) * 1.02, min(open_, close) * 0.98
        volume = "-" if i < rows // 4 else _thousands(close * 1e6)
        lines.append(f'"{dates[i].strftime("%b %d, %Y")}",{open_:.6g},{high:.6g},{low:.6g},'
                     f"{close},{volume},{_thousands(close * 1e7)}")
    path.write_text("\n".join(lines) + "\n")


def make_price_data(folder: Path) -> Path:
    """Write the set into ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, (rows, last)) in enumerate(sorted(COINS.items())):
        write_coin(folder / f"{name}.csv", rows, last, seed)
    ranking = ["#,Name,Market Cap,Price,Circulating Supply,Volume (24h),% Change (24h)"]
    ranking += [f'{i},{name},"$1,000",$1.00,"1 X","$1",0.1%' for i, name in enumerate(COINS, 1)]
    (folder / "100 List.csv").write_text("\n".join(ranking) + "\n")
    return folder
