"""The trend line the product was first demonstrated with.

The least-squares line (scikit-learn ``LinearRegression``'s, computed in closed form
with NumPy) of the close on the day index t = 0..n-1 of the (NaN-free) series,
evaluated at t = n..n+h-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crypto_ml.models.base import Forecaster
from crypto_ml.models.intervals import (
    MIN_CALIBRATION_TRAIN,
    Bands,
    calibration_origins,
    conformal_quantile,
    level_key,
    origin_bands,
    too_short,
)
from crypto_ml.models.state import ModelState


def fit_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of the least-squares line of each row on its index."""
    n = matrix.shape[1]
    t = np.arange(n, dtype=np.float64)
    t_mean = t.mean()
    dt = t - t_mean
    denom = float(dt @ dt)
    y_mean = matrix.mean(axis=1)
    slope = ((matrix - y_mean[:, None]) @ dt) / denom if denom else np.zeros(len(matrix))
    return slope, y_mean - slope * t_mean


def prefix_lines(series: np.ndarray, origins: Sequence[int], h: int) -> np.ndarray:
    """The next ``h`` points of the line fitted to each prefix ``series[:origin]``,
    ``(len(origins), h)``: every refit of the walk-forward calibration at once, from
    running sums (within about 1e-10 of separate fits)."""
    t = np.arange(len(series), dtype=np.float64)
    ends = np.asarray(origins, dtype=np.int64) - 1
    m = ends + 1.0
    sum_y, sum_ty = np.cumsum(series)[ends], np.cumsum(t * series)[ends]
    t_mean = (m - 1.0) / 2.0
    spread = m * (m * m - 1.0) / 12.0  # the sum of (t - t_mean)^2 over the prefix
    slope = np.divide(sum_ty - t_mean * sum_y, spread, out=np.zeros_like(m), where=spread > 0)
    intercept = sum_y / m - slope * t_mean
    return intercept[:, None] + slope[:, None] * (m[:, None] + np.arange(h)[None, :])


def line_rows(matrix: np.ndarray, h: int) -> np.ndarray:
    """The next ``h`` points of each row's line, ``(rows, h)``."""
    slope, intercept = fit_rows(matrix)
    t = np.arange(matrix.shape[1], matrix.shape[1] + h, dtype=np.float64)
    return intercept[:, None] + slope[:, None] * t[None, :]


class LinearModel(Forecaster):
    """Least-squares straight line through the whole series, extended ``h`` days."""

    name = "linear"
    color = "tab:blue"
    min_points = 2
    series_per_message = 5_000
    has_state = True

    def _fit(self, series: np.ndarray) -> None:
        # Ordinary least squares in closed form on centred data, as scikit-learn's
        # LinearRegression computes it (same line to ~1e-12): no scikit-learn/SciPy import,
        # which was most of a worker's start-up (about 1 s of CPU per worker).
        self.n_ = len(series)
        slope, intercept = fit_rows(series[None, :])
        self.slope_, self.intercept_ = float(slope[0]), float(intercept[0])

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"n": self.n_, "slope": self.slope_, "intercept": self.intercept_}, {}

    def _restore(self, state: ModelState) -> None:
        self.n_ = int(state.value("n"))
        self.slope_, self.intercept_ = float(state.value("slope")), float(state.value("intercept"))

    def _forecast(self, h: int) -> np.ndarray:
        t = np.arange(self.n_, self.n_ + h, dtype=np.float64)
        return self.intercept_ + self.slope_ * t

    def _bands(self, h: int, forecast: np.ndarray, levels: Sequence[float]) -> Bands:
        """The walk-forward refits' lines from running sums, not a fit per origin."""
        min_train = self._calibration_min_train()
        origins = calibration_origins(len(self.series_), h, min_train)
        if not origins:
            raise too_short(len(self.series_), h, min_train)
        paths = prefix_lines(self.series_, origins, h)
        return origin_bands(self.series_, forecast, levels, origins, paths)

    @classmethod
    def predict_rows(cls, matrix: np.ndarray, h: int, levels: Sequence[float]
                     ) -> tuple[np.ndarray, np.ndarray, Bands]:
        """The line and its conformal bands over rows (the walk-forward refits as matrices)."""
        n = matrix.shape[1]
        origins = calibration_origins(n, h, max(cls.min_points, MIN_CALIBRATION_TRAIN))
        if not origins:
            raise too_short(n, h, max(cls.min_points, MIN_CALIBRATION_TRAIN))
        forecast = line_rows(matrix, h)
        errors = np.empty((len(matrix), len(origins), h))
        for j, origin in enumerate(origins):
            last = np.abs(matrix[:, origin - 1])
            actual = matrix[:, origin : origin + h]
            errors[:, j] = (actual - line_rows(matrix[:, :origin], h)) / np.where(
                last == 0, 1.0, last)[:, None]
        scale = np.abs(matrix[:, -1])[:, None]
        bands = {}
        for level in levels:
            half = conformal_quantile(errors, level) * scale
            bands[level_key(level)] = (forecast - half, forecast + half)
        return scale[:, 0] != 0, forecast, bands  # a last close of 0: the one-series way
