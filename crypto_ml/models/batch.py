"""Many series through one model at once: the path of table runs (a million series).

:func:`predict_batch` gives, for each series of a chunk, what
``get_model(name).fit(series).predict(h, levels)`` gives, as ``(series, h)`` arrays.
A model whose fit and intervals can be written over a matrix of equal-length series
(``naive``, ``linear``) overrides :meth:`~crypto_ml.models.base.Forecaster.predict_rows`;
the series of a chunk are grouped by length and each group is one call. Every other
model, and every series the vectorised path cannot take (too short for conformal
calibration, non-positive closes for the random walk), is fitted one by one. Either
way the numbers are those of the one-series path (a contract test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from crypto_ml.core.errors import CalibrationTooShort, CryptoMLError
from crypto_ml.models.base import Forecaster, clean_series
from crypto_ml.models.intervals import Bands, level_key

#: Errors that fail one series (of a chunk, of a batch message) without failing the others
#: (numpy's LinAlgError is a ValueError).
SERIES_ERRORS = (CryptoMLError, ValueError, ArithmeticError)


@dataclass
class BatchPrediction:
    """Forecasts and bands of ``n`` series (``(n, h)`` arrays, NaN where a series failed)."""

    forecast: np.ndarray
    bands: Bands = field(default_factory=dict)
    #: ``{row: reason}`` of the series that failed.
    errors: dict[int, str] = field(default_factory=dict)


def checked_rows(forecast: np.ndarray, bands: Bands, prices: np.ndarray
                 ) -> tuple[np.ndarray, Bands]:
    """:meth:`~crypto_ml.models.intervals.Prediction.checked` over rows, ``prices`` saying
    which rows never go below zero (their forecast and bounds are floored at zero)."""
    floor = np.where(prices[:, None], 0.0, -np.inf)
    forecast = np.maximum(forecast, floor)
    fixed: Bands = {}
    for key, (lower, upper) in bands.items():
        fixed[key] = (np.maximum(np.minimum(lower, forecast), floor), np.maximum(upper, forecast))
    return forecast, fixed


def _finite_rows(forecast: np.ndarray, bands: Bands) -> np.ndarray:
    ok = np.isfinite(forecast).all(axis=1)
    for lower, upper in bands.values():
        ok &= np.isfinite(lower).all(axis=1) & np.isfinite(upper).all(axis=1)
    return ok


def vectorised(model: type[Forecaster]) -> bool:
    """Whether ``model`` overrides :meth:`~crypto_ml.models.base.Forecaster.predict_rows`."""
    return model.predict_rows.__func__ is not Forecaster.predict_rows.__func__  # type: ignore[attr-defined]


def predict_batch(model: type[Forecaster], series: Sequence[np.ndarray], h: int,
                  levels: Sequence[float], params: dict[str, object] | None = None
                  ) -> BatchPrediction:
    """Fit ``model`` (with ``params``) on each of ``series`` and predict ``h`` steps."""
    n = len(series)
    out = BatchPrediction(np.full((n, h), np.nan),
                          {level_key(lv): (np.full((n, h), np.nan), np.full((n, h), np.nan))
                           for lv in levels})
    clean: list[np.ndarray | None] = []
    for row, values in enumerate(series):
        try:
            clean.append(clean_series(values))
        except SERIES_ERRORS as exc:
            clean.append(None)
            out.errors[row] = f"{type(exc).__name__}: {exc}"
    one_by_one = [row for row, s in enumerate(clean) if s is not None]
    if vectorised(model) and not params:
        one_by_one = _vectorised(model, clean, one_by_one, h, levels, out)
    for row in one_by_one:
        _one(model, clean[row], row, h, levels, params or {}, out)
    return out


def _vectorised(model: type[Forecaster], clean: list[np.ndarray | None], rows: list[int],
                h: int, levels: Sequence[float], out: BatchPrediction) -> list[int]:
    """Run ``rows`` through ``model.predict_rows`` by length; the rows it cannot take."""
    by_length: dict[int, list[int]] = {}
    for row in rows:
        by_length.setdefault(len(clean[row]), []).append(row)  # type: ignore[arg-type]
    left = []
    for length, group in by_length.items():
        if length < model.min_points:
            left += group
            continue
        matrix = np.stack([clean[row] for row in group])  # type: ignore[misc]
        try:
            taken, forecast, bands = model.predict_rows(matrix, h, levels)
        except CalibrationTooShort:
            left += group
            continue
        forecast, bands = checked_rows(forecast, bands, np.asarray((matrix >= 0).all(axis=1)))
        finite = _finite_rows(forecast, bands)
        index = np.asarray(group)
        done = taken & finite
        out.forecast[index[done]] = forecast[done]
        for key, (lower, upper) in bands.items():
            out.bands[key][0][index[done]] = lower[done]
            out.bands[key][1][index[done]] = upper[done]
        left += index[~done].tolist()
    return left


def _one(model: type[Forecaster], values: np.ndarray | None, row: int, h: int,
         levels: Sequence[float], params: dict[str, object], out: BatchPrediction) -> None:
    try:
        prediction = model(**params).fit(values).predict(h, levels)
    except SERIES_ERRORS as exc:
        out.errors[row] = f"{type(exc).__name__}: {exc}"
        return
    out.forecast[row] = prediction.forecast
    for key, (lower, upper) in prediction.bands.items():
        out.bands[key][0][row] = lower
        out.bands[key][1][row] = upper
