"""The honest baseline: tomorrow, and every day after, equals today."""

from __future__ import annotations

import numpy as np

from crypto_ml.models.base import Forecaster


class NaiveModel(Forecaster):
    """Repeats the last observed close ``h`` times."""

    name = "naive"
    color = "tab:gray"
    min_points = 1

    def _fit(self, series: np.ndarray) -> None:
        self.last_ = float(series[-1])

    def _forecast(self, h: int) -> np.ndarray:
        return np.full(h, self.last_)
