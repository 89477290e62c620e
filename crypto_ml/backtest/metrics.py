"""Forecast error metrics: MAE, RMSE, MAPE and MASE over a set of forecasts.

A backtest makes one forecast of ``h`` days at each of several origins. The
errors of every origin and step are pooled: MAE = mean |e|, RMSE = sqrt(mean
e^2), MAPE = 100 * mean |e / actual| (percent). MASE (Hyndman & Koehler, 2006)
divides each absolute error by its origin's scale and averages the result. The
scale (:func:`naive_scale`) is the mean absolute one-step change,
``mean |y_t - y_{t-1}|``, of the coin's *whole history before that origin*: not
of the window the model was fitted on (``--max-points``), so every model and
window of a coin is divided by the same numbers. A MASE below 1 beats what
"tomorrow equals today" achieved on that history, one step ahead (over an
``h``-day horizon even naive usually scores above 1), and values can be averaged
across coins of any price scale.

Prediction intervals at level L are scored by ``coverage_L``, the share (in
percent) of actuals inside [lower, upper], to compare with L itself, and
``winkler_L``, the interval (Winkler) score: the width, plus 2/(1 - L/100) times
how far an actual fell outside; lower is better. Like MASE (and like M4's
MSIS) it is divided by the in-sample naive error, so it averages across coins.
``rel_mae`` is a model's MAE over naive's on the same forecasts (below 1 beats
naive); across coins it is aggregated by the geometric mean (:func:`geometric_mean`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from crypto_ml.models.intervals import level_key

METRICS = ("mae", "rmse", "mape", "mase")


def naive_scale(train: Sequence[float] | np.ndarray) -> float:
    """Mean absolute one-step change of ``train`` (the MASE denominator); the backtest
    passes each origin's whole history before it, whatever the model's window."""
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


def interval_scores(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float,
                    scale: np.ndarray) -> dict[str, float]:
    """``coverage_L`` (percent inside) and scaled ``winkler_L`` of bounds ``(origins, h)``."""
    actual = np.asarray(actual, dtype=np.float64)
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if not actual.shape == lower.shape == upper.shape:
        raise ValueError(f"shapes differ: {actual.shape}, {lower.shape}, {upper.shape}")
    penalty = 2.0 / (1.0 - level / 100.0)
    score = (upper - lower) + penalty * (np.maximum(lower - actual, 0.0)
                                         + np.maximum(actual - upper, 0.0))
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(scale == 0, np.inf, score / scale)
    key = level_key(level)
    return {f"coverage_{key}": float(100.0 * np.mean((actual >= lower) & (actual <= upper))),
            f"winkler_{key}": float(np.mean(scaled))}


def interval_metric_names(levels: Sequence[float]) -> list[str]:
    """The interval metrics of ``levels``: coverage_80, winkler_80, coverage_95, ..."""
    return [f"{kind}_{level_key(level)}" for level in levels for kind in ("coverage", "winkler")]


def geometric_mean(values: Sequence[float]) -> float:
    """exp(mean(log v)); nan for no values, inf if one is inf, 0 if one is 0."""
    if not values:
        return float("nan")
    if any(v == 0 for v in values):
        return 0.0
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def relative_mae(by_model: Mapping[str, Mapping[str, float]], model: str,
                 benchmark: str = "naive") -> float:
    """One coin's MAE of ``model`` over that of ``benchmark``."""
    base = by_model[benchmark]["mae"]
    return float(by_model[model]["mae"] / base) if base else float("inf")
