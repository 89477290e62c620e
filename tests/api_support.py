"""Helpers for the HTTP API tests: small price folders and a client around an app."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

with warnings.catch_warnings():  # starlette's TestClient announces its next HTTP client
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def write_coins(folder: Path, n_points: int = 120, coins: tuple[str, ...] = ("Alpha", "Beta"),
                seed: int = 7) -> Path:
    """One CSV per coin (``Alpha.csv`` -> id ``alpha``): a positive random walk each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2020-01-01", periods=n_points, freq="D")
    for coin in coins:
        closes = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.02, n_points)))
        pd.DataFrame({"Date": dates.strftime("%Y-%m-%d"), "Close": closes}).to_csv(
            folder / f"{coin}.csv", index=False)
    return folder


def client(app: Any, **kwargs: Any) -> TestClient:
    return TestClient(app, **kwargs)


def closes(folder: Path, coin: str) -> list[float]:
    frame = pd.read_csv(folder / f"{coin.capitalize()}.csv")
    return [float(x) for x in frame["Close"]]
