"""The honest baseline: tomorrow, and every day after, equals today."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crypto_ml.models.base import Forecaster
from crypto_ml.models.intervals import Bands, random_walk_bands


class NaiveModel(Forecaster):
    """Repeats the last observed close ``h`` times."""

    name = "naive"
    color = "tab:gray"
    min_points = 1
    interval_method = "random walk"

    def _fit(self, series: np.ndarray) -> None:
        self.last_ = float(series[-1])

    def _forecast(self, h: int) -> np.ndarray:
        return np.full(h, self.last_)

    def _bands(self, h: int, forecast: np.ndarray, levels: Sequence[float]) -> Bands:
        """Random-walk bands from the volatility of the series' own daily log returns."""
        return random_walk_bands(self.series_, h, levels)
