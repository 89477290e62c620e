"""The trend line the product was first demonstrated with.

scikit-learn ``LinearRegression`` of the close on the day index t = 0..n-1 of
the (NaN-free) series, evaluated at t = n..n+h-1.
"""

from __future__ import annotations

import contextlib

import numpy as np

from crypto_ml.models.base import Forecaster


class LinearModel(Forecaster):
    """Least-squares straight line through the whole series, extended ``h`` days."""

    name = "linear"
    color = "tab:blue"
    min_points = 2

    def _fit(self, series: np.ndarray) -> None:
        from sklearn.linear_model import LinearRegression  # lazy: keeps the CLI's start fast

        self.n_ = len(series)
        t = np.arange(self.n_, dtype=np.float64).reshape(-1, 1)
        with _trusted_input():
            self.reg_ = LinearRegression().fit(t, series)

    def _forecast(self, h: int) -> np.ndarray:
        t = np.arange(self.n_, self.n_ + h, dtype=np.float64).reshape(-1, 1)
        with _trusted_input():
            return self.reg_.predict(t)


def _trusted_input() -> contextlib.AbstractContextManager[None]:
    """Skip scikit-learn's own input checks (more than half its cost on short series):
    ``Forecaster.fit`` has already made the series finite float64."""
    import sklearn  # lazy, as in _fit

    return sklearn.config_context(assume_finite=True, skip_parameter_validation=True)
