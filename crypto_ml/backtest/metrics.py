"""Forecast error metrics: MAE, RMSE, MAPE and MASE over a set of forecasts.

A backtest makes one forecast of ``h`` days at each of several origins. The
errors of every origin and step are pooled: MAE = mean |e|, RMSE = sqrt(mean
e^2), MAPE = 100 * mean |e / actual| (percent). MASE (Hyndman & Koehler, 2006)
divides each error by the in-sample one-step naive error of the series the
forecast was fitted on, ``mean |y_t - y_{t-1}|``, and averages the absolute
result, so a MASE below 1 beats what "tomorrow equals today" achieved in sample
and values can be averaged across coins of any price scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("mae", "rmse", "mape", "mase")


def naive_scale(train: Sequence[float] | np.ndarray) -> float:
    """In-sample mean absolute one-step change of ``train`` (the MASE denominator)."""
    series = np.asarray(train, dtype=np.float64)
    if len(series) < 2:
        raise ValueError("the MASE scale needs at least 2 training points")
    return float(np.mean(np.abs(np.diff(series))))


def scores(actual: np.ndarray, forecast: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """Pooled metrics of forecasts ``(origins, h)`` against actuals of the same shape.

    ``scale`` holds each origin's :func:`naive_scale`. A zero actual makes MAPE
    infinite and a zero scale (a constant training series) makes MASE infinite.
    """
    actual = np.asarray(actual, dtype=np.float64)
    forecast = np.asarray(forecast, dtype=np.float64)
    if actual.shape != forecast.shape or actual.ndim != 2:
        raise ValueError(f"shapes differ or are not (origins, h): {actual.shape}, {forecast.shape}")
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 1)
    errors = forecast - actual
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = np.abs(errors / actual)
        scaled = np.abs(errors) / scale
    return {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mape": float(100.0 * np.mean(np.where(actual == 0, np.inf, ape))),
        "mase": float(np.mean(np.where(scale == 0, np.inf, scaled))),
        "n_forecasts": int(actual.shape[0]),
    }
