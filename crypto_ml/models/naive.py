"""The honest baseline: tomorrow, and every day after, equals today."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crypto_ml.core.errors import CalibrationTooShort
from crypto_ml.models.base import Forecaster
from crypto_ml.models.intervals import (
    Bands,
    ewma_volatility,
    log_spreads,
    random_walk_bands,
)
from crypto_ml.models.state import ModelState


class NaiveModel(Forecaster):
    """Repeats the last observed close ``h`` times."""

    name = "naive"
    color = "tab:gray"
    min_points = 1
    interval_method = "random walk"
    series_per_message = 5_000
    has_state = True

    def _fit(self, series: np.ndarray) -> None:
        self.last_ = float(series[-1])

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"last": self.last_}, {}

    def _restore(self, state: ModelState) -> None:
        self.last_ = float(state.value("last"))

    def _forecast(self, h: int) -> np.ndarray:
        return np.full(h, self.last_)

    def _bands(self, h: int, forecast: np.ndarray, levels: Sequence[float]) -> Bands:
        """Random-walk bands from the volatility of the series' own daily log returns."""
        return random_walk_bands(self.series_, h, levels)

    @classmethod
    def predict_rows(cls, matrix: np.ndarray, h: int, levels: Sequence[float]
                     ) -> tuple[np.ndarray, np.ndarray, Bands]:
        """The random walk over rows; rows with a close <= 0 go the one-series way."""
        if matrix.shape[1] < 2:  # no daily change: the one-series way refuses it
            raise CalibrationTooShort("one close: no daily change to size intervals")
        taken = np.asarray((matrix > 0).all(axis=1))
        last = matrix[:, -1]
        forecast = np.repeat(last[:, None], h, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            returns = np.diff(np.log(np.where(taken[:, None], matrix, 1.0)), axis=1)
        spreads = log_spreads(ewma_volatility(returns), h, levels)
        bands = {key: (last[:, None] / spread, last[:, None] * spread)
                 for key, spread in spreads.items()}
        return taken, forecast, bands
