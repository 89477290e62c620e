"""Prediction intervals: the levels asked for, and the two generic ways models make them.

Every forecast carries, for each level L (percent, e.g. 80 and 95), a lower and
an upper bound per step such that lower <= forecast <= upper. Models build them
in one of three ways (the README says which model uses which):

* **random walk** (:func:`random_walk_bands`): the naive model's. ``sigma`` is
  the volatility of the fitted series' daily log returns, an exponentially
  weighted moving average of their squares (RiskMetrics, decay ``EWMA_DECAY`` =
  0.94: recent days count most, so the bands widen as soon as the market turns
  wild); under a driftless random walk in log price the close ``k`` days ahead
  lies within ``last * exp(+-z * sigma * sqrt(k))`` with probability L, ``z`` the
  normal quantile of (1 + L/100) / 2. (The plain standard deviation over the
  window was the first choice; on the tuning windows, data to 2017-08-13 and to
  2017-07-01, its 80% bands held 82.6% and 75.2% of the closes against 83.1% and
  78.9% for EWMA, and 93.6% / 87.3% against 94.3% / 89.8% at 95%.)
  A series with a zero or a negative value is not a price: its walk is in the value
  itself, ``last +- z * sigma * sqrt(k)`` with ``sigma`` from its daily changes
  (:func:`additive_walk_bands`).
* **conformal** (:func:`conformal_bands`): split conformal prediction on the
  model's own walk-forward errors, what statsforecast and mlforecast call
  conformal intervals. The model is fitted again at up to ``N_WINDOWS`` earlier
  origins of its own training series (``h`` days apart, so the windows do not
  overlap where the series is long enough), forecasts ``h`` days from each, and
  the errors relative to the close at the origin, ``(actual - forecast) / last``,
  are kept per step. The half-width of step ``k`` is the ceil((n + 1) L/100)-th
  smallest absolute error of that step over the n windows (the finite-sample
  conformal quantile; the largest one when n is too small for L), times the last
  close. Relative errors make windows from cheaper and dearer periods comparable.
  A series too short for even one window (fewer than ``MIN_CALIBRATION_TRAIN + h``
  closes) gets random-walk widths around the model's forecast instead, and the
  result's ``interval_method`` says so.
* **the library's own** intervals (statsforecast's ETS, Theta and ARIMA; see
  :mod:`crypto_ml.models.statistical`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from crypto_ml.core.errors import (
    CalibrationTooShort,
    InvalidTaskInput,
    ModelFitFailed,
    ZeroScale,
)

DEFAULT_LEVELS: tuple[float, ...] = (80.0, 95.0)
#: Decay of the naive model's exponentially weighted volatility (RiskMetrics' daily value).
EWMA_DECAY = 0.94
#: Calibration windows of a conformal interval (at most; fewer on a short series).
N_WINDOWS = 20
#: The shortest training series a conformal calibration fit gets.
MIN_CALIBRATION_TRAIN = 20

#: ``{level key: (lower, upper)}``, each an array of ``h`` bounds.
Bands = dict[str, tuple[np.ndarray, np.ndarray]]


#: The most interval levels one request may ask for (each adds two columns per model).
MAX_LEVELS = 20


def level_key(level: float) -> str:
    """How a level is named in results: ``80.0`` -> ``"80"``, ``99.5`` -> ``"99.5"``,
    ``99.99999`` -> ``"99.99999"`` (every digit a float keeps, so no level is named
    after another, as ``:g``'s six digits would name that one ``100``)."""
    return f"{float(level):.15g}"


def check_levels(levels: object) -> tuple[float, ...]:
    """Levels as sorted unique floats strictly between 0 and 100, or InvalidTaskInput."""
    if isinstance(levels, str):
        levels = [part for part in levels.split(",") if part.strip()]
    if not isinstance(levels, Iterable):
        raise InvalidTaskInput(f"levels must be a list of percentages, got {levels!r}")
    out = []
    for level in levels:
        try:
            value = float(level)
        except (TypeError, ValueError):
            raise InvalidTaskInput(f"a level must be a number like 80 or 95, got {level!r}") from None
        if isinstance(level, bool) or not 0 < value < 100:
            raise InvalidTaskInput(f"a level must be a percentage between 0 and 100, got {level!r}")
        if level_key(value) == "100" or not 0.5 + value / 200.0 < 1.0:  # no bound, NaN rows
            raise InvalidTaskInput(f"a level must be below 100 by more than rounding (its "
                                   f"interval would have no bounds), got {level!r}")
        out.append(value)
    named: dict[str, float] = {}
    for value in sorted(set(out)):
        if named.setdefault(level_key(value), value) != value:  # one name, one column
            raise InvalidTaskInput(f"levels {named[level_key(value)]!r} and {value!r} are both "
                                   f"named {level_key(value)}; give levels that differ there")
    if len(named) > MAX_LEVELS:
        raise InvalidTaskInput(f"at most {MAX_LEVELS} levels, got {len(named)}")
    return tuple(named.values())


def normal_quantile(level: float) -> float:
    """The two-sided standard normal quantile of a central ``level``% interval."""
    return NormalDist().inv_cdf(0.5 + level / 200.0)


def ewma_volatility(returns: np.ndarray, decay: float = EWMA_DECAY) -> Any:
    """sqrt of the exponentially weighted mean of squared returns, the newest weighing 1,
    the one before ``decay``, and so on, over the last axis: a float for one series' returns,
    an array for rows of many (0 where there are no returns)."""
    n = returns.shape[-1]
    if n == 0:
        return np.zeros(returns.shape[:-1]) if returns.ndim > 1 else 0.0
    weights = decay ** np.arange(n, dtype=np.float64)[::-1]
    sigma = np.sqrt((returns**2 @ weights) / weights.sum())
    return float(sigma) if returns.ndim == 1 else sigma


def log_spreads(sigma: float | np.ndarray, h: int, levels: Sequence[float]
                ) -> dict[str, np.ndarray]:
    """Each level's multiplicative half-width ``exp(z * sigma * sqrt(step))``, steps 1 to
    ``h``, by level key: shape ``(h,)`` for one sigma, ``(rows, h)`` for a sigma per row.
    A width past the float range (returns of hundreds of orders of magnitude) is inf: the
    interval then spans 0 to inf, without a warning on the worker's log."""
    with np.errstate(over="ignore"):
        return {key: np.exp(width) for key, width in walk_widths(sigma, h, levels).items()}


def walk_widths(sigma: float | np.ndarray, h: int, levels: Sequence[float]
                ) -> dict[str, np.ndarray]:
    """Each level's half-width ``z * sigma * sqrt(step)`` of a driftless random walk, steps
    1 to ``h``, by level key: shape ``(h,)`` for one sigma, ``(rows, h)`` for a sigma per row."""
    steps = np.sqrt(np.arange(1, h + 1, dtype=np.float64))
    column = np.asarray(sigma, dtype=np.float64)[..., None]
    return {level_key(level): normal_quantile(level) * column * steps for level in levels}


def random_walk_bands(series: np.ndarray, h: int, levels: Sequence[float],
                      center: np.ndarray | None = None) -> Bands:
    """Driftless log random-walk bands around the last close (see the module doc), or with
    the same relative widths around ``center`` (a forecast) when given."""
    if len(series) < 2:
        raise CalibrationTooShort("a 1-close series has no daily change to size its "
                                  "intervals: add history, or ask for none (--levels none)")
    last = float(series[-1])
    if (series <= 0).any():  # not a price: a random walk in the value itself
        return additive_walk_bands(series, h, levels, center)
    positive = series[series > 0]
    returns = np.diff(np.log(positive)) if len(positive) > 1 else np.zeros(0)
    bands = {}
    for key, spread in log_spreads(ewma_volatility(returns), h, levels).items():
        if center is not None:
            bands[key] = (center - abs(center) * (1 - 1 / spread),
                                       center + abs(center) * (spread - 1))
        elif last >= 0:
            bands[key] = (last / spread, last * spread)
        else:  # not a price: keep the band symmetric in the value itself
            bands[key] = (last - abs(last) * (spread - 1), last + abs(last) * (spread - 1))
    return bands


def additive_walk_bands(series: np.ndarray, h: int, levels: Sequence[float],
                        center: np.ndarray | None = None) -> Bands:
    """``last +- z * sigma * sqrt(k)`` (or around ``center``, a forecast), ``sigma`` the EWMA
    volatility of the series' daily changes: the random walk of a series that is not a price
    (a zero or a negative value, where log returns mean nothing), symmetric as statsforecast's
    Naive bands are."""
    middle = float(series[-1]) if center is None else center
    return {key: (middle - width, middle + width)
            for key, width in walk_widths(ewma_volatility(np.diff(series)), h, levels).items()}


def calibration_origins(n: int, h: int, min_train: int, windows: int = N_WINDOWS) -> list[int]:
    """Training lengths of up to ``windows`` calibration origins of an ``n``-close series,
    newest first: ``h`` days apart where the series allows, closer where it is short;
    every one leaves ``h`` actual closes after it and at least ``min_train`` before."""
    newest = n - h
    room = newest - min_train
    if room < 0:
        return []
    stride = h if room >= h * (windows - 1) else max(1, room // max(1, windows - 1))
    count = min(windows, room // stride + 1)
    return [newest - stride * j for j in range(count)]


def conformal_quantile(errors: np.ndarray, level: float) -> np.ndarray:
    """Per column, the ceil((n + 1) level/100)-th smallest of n absolute errors (or the largest);
    ``errors`` is ``(n, h)``, or ``(rows, n, h)`` for many series at once."""
    abs_errors = np.sort(np.abs(errors), axis=-2)
    n = abs_errors.shape[-2]
    rank = min(n, math.ceil((n + 1) * level / 100.0))
    return abs_errors[..., rank - 1, :]


def conformal_bands(forecast: np.ndarray, last: float, errors: np.ndarray,
                    levels: Sequence[float]) -> Bands:
    """Symmetric bands from relative calibration errors ``(windows, h)`` (see the module doc);
    ZeroScale when the last close is 0 (the forecast then gets random-walk widths)."""
    if last == 0:
        raise ZeroScale("the last close is 0: conformal widths relative to it would be 0")
    bands = {}
    scale = abs(last)
    for level in levels:
        half = conformal_quantile(errors, level) * scale
        bands[level_key(level)] = (forecast - half, forecast + half)
    return bands


def relative_errors(series: np.ndarray, origins: Sequence[int], predicted: np.ndarray) -> np.ndarray:
    """``(actual - forecast) / close at origin`` for forecasts ``(len(origins), h)``."""
    predicted = np.asarray(predicted, dtype=np.float64)
    h = predicted.shape[1]
    actual = np.stack([series[o : o + h] for o in origins])
    last = np.abs(np.array([series[o - 1] for o in origins], dtype=np.float64))
    return (actual - predicted) / np.where(last == 0, 1.0, last)[:, None]


def too_short(n: int, h: int, min_train: int) -> CalibrationTooShort:
    return CalibrationTooShort(
        f"a {n}-close series is too short for conformal intervals at horizon {h}: "
        f"it needs at least {min_train + h} closes")


def required_origins(n: int, h: int, min_train: int) -> list[int]:
    """:func:`calibration_origins`, or CalibrationTooShort when there is not even one."""
    origins = calibration_origins(n, h, min_train)
    if not origins:
        raise too_short(n, h, min_train)
    return origins


def origin_bands(series: np.ndarray, forecast: np.ndarray, levels: Sequence[float],
                 origins: Sequence[int], paths: np.ndarray) -> Bands:
    """Conformal bands from a fitted model's own forecasts ``paths`` ``(len(origins), h)``
    made at earlier ``origins`` of ``series`` (no refit)."""
    errors = relative_errors(series, origins, paths)
    return conformal_bands(forecast, float(series[-1]), errors, levels)


def walk_forward_errors(series: np.ndarray, h: int, min_train: int,
                        forecast_at: Callable[[np.ndarray, int], np.ndarray],
                        windows: int = N_WINDOWS) -> np.ndarray:
    """Relative errors ``(actual - forecast) / close at origin``, shape ``(windows, h)``.

    ``forecast_at(train, h)`` forecasts ``h`` closes after ``train`` (usually a fresh
    fit on it). Raises InvalidTaskInput when the series is too short for even one window.
    """
    origins = calibration_origins(len(series), h, min_train, windows)
    if not origins:
        raise too_short(len(series), h, min_train)
    predicted = [np.asarray(forecast_at(series[:o], h), dtype=np.float64).reshape(-1)
                 for o in origins]
    return relative_errors(series, origins, np.stack(predicted))


@dataclass
class Prediction:
    """A point forecast and its intervals, as the result JSON holds them."""

    forecast: np.ndarray
    bands: Bands = field(default_factory=dict)
    method: str = ""

    def checked(self, prices: bool = False) -> Prediction:
        """A finite forecast (else ModelFitFailed), and bands made finite-safe and ordered
        lower <= forecast <= upper at every step; for ``prices`` (a series never below zero)
        forecast and bands floored at zero too."""
        if not np.isfinite(self.forecast).all():
            raise ModelFitFailed("the forecast is not finite: the series' values are too large "
                                 "or too wild for this model; rescale them (e.g. divide by a "
                                 "constant) or choose another model")
        if prices:
            self.forecast = np.maximum(self.forecast, 0.0)
        fixed: Bands = {}
        for key, (lower, upper) in self.bands.items():
            lower = np.minimum(np.asarray(lower, dtype=np.float64).reshape(-1), self.forecast)
            upper = np.maximum(np.asarray(upper, dtype=np.float64).reshape(-1), self.forecast)
            if prices:
                lower = np.maximum(lower, 0.0)
            if lower.shape != self.forecast.shape or upper.shape != self.forecast.shape:
                raise ValueError(f"level {key}: bounds of shape {lower.shape}, {upper.shape} for a "
                                 f"forecast of {self.forecast.shape}")
            if not (np.isfinite(lower).all() and np.isfinite(upper).all()):
                raise ArithmeticError(f"level {key}: the interval is not finite")
            fixed[key] = (lower, upper)
        self.bands = fixed
        return self

    def intervals_json(self) -> dict[str, Any]:
        """``{"80": {"lower": [...], "upper": [...]}, ...}`` with plain floats."""
        return {key: {"lower": [float(x) for x in lower], "upper": [float(x) for x in upper]}
                for key, (lower, upper) in self.bands.items()}
