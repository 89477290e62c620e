"""The trend line the product was first demonstrated with.

The least-squares line (scikit-learn ``LinearRegression``'s, computed in closed form
with NumPy) of the close on the day index t = 0..n-1 of the (NaN-free) series,
evaluated at t = n..n+h-1.
"""

from __future__ import annotations

import numpy as np

from crypto_ml.models.base import Forecaster


class LinearModel(Forecaster):
    """Least-squares straight line through the whole series, extended ``h`` days."""

    name = "linear"
    color = "tab:blue"
    min_points = 2

    def _fit(self, series: np.ndarray) -> None:
        # Ordinary least squares in closed form on centred data, as scikit-learn's
        # LinearRegression computes it (same line to ~1e-12): no scikit-learn/SciPy import,
        # which was most of a worker's start-up (about 1 s of CPU per worker).
        self.n_ = len(series)
        t = np.arange(self.n_, dtype=np.float64)
        t_mean, y_mean = t.mean(), series.mean()
        dt = t - t_mean
        denom = float(dt @ dt)
        self.slope_ = float(dt @ (series - y_mean)) / denom if denom else 0.0
        self.intercept_ = float(y_mean - self.slope_ * t_mean)

    def _forecast(self, h: int) -> np.ndarray:
        t = np.arange(self.n_, self.n_ + h, dtype=np.float64)
        return self.intercept_ + self.slope_ * t
