"""``ets``, ``theta`` and ``arima``: the classical automatic baselines, from Nixtla's statsforecast.

* ``ets``: ``AutoETS`` (error, trend and seasonality chosen by AICc; no season here),
* ``theta``: ``AutoTheta`` (standard, optimised and dynamic Theta variants, chosen by MSE),
* ``arima``: ``AutoARIMA`` (Hyndman-Khandakar stepwise search).

Each is fitted on the log of the closes, so forecasts and bounds stay positive and
a 10% move means the same at any price (``arima`` fits them less the last one: it may choose
a model without a mean, which would otherwise forecast 1 in the price's unit); the point
forecast and the library's own prediction intervals (``predict(h, level=...)``) are mapped
back with ``exp`` (the point forecast is then the median path). ``theta`` fits them scaled
so that each series' one-step changes have a standard deviation of 0.01
(:attr:`error_scale`): AutoTheta's optimiser stops on an absolute change of its mean squared
error, so its effort depends on the scale it is given (on raw closes, sub-cent coins stop at
once and $1,000 coins iterate long); at this scale it stops a third sooner than on plain log
closes, with the same accuracy and coverage in backtests (docs/benchmarks.md).
statsforecast compiles its inner loops with numba on first use in a process; :func:`warm_up`
pays that once (the worker calls it before forking its pool, see :mod:`crypto_ml.celery_app`).
statsforecast is imported on first fit only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from crypto_ml.core.errors import InvalidTaskInput, ModelFitFailed
from crypto_ml.models.base import Forecaster
from crypto_ml.models.intervals import DEFAULT_LEVELS, Bands, Prediction, check_levels, level_key

#: The statsforecast class behind each model name.
LIBRARY_MODELS = {"ets": "AutoETS", "theta": "AutoTheta", "arima": "AutoARIMA"}
MIN_POINTS = 10


def _library_model(name: str) -> Any:
    import statsforecast.models as sf_models

    return getattr(sf_models, LIBRARY_MODELS[name])(season_length=1)


def _plain(level: float) -> int | float:
    """80.0 -> 80: statsforecast names its bounds ``lo-80`` after the level as given."""
    return int(level) if float(level).is_integer() else float(level)


def _working_scale(logs: np.ndarray, error_scale: float | None) -> float:
    """What to multiply ``logs`` by so their one-step changes have ``error_scale`` as standard
    deviation; 1 when there is none to match (no scale asked, a flat or too short series)."""
    if not error_scale or len(logs) < 3:
        return 1.0
    spread = float(np.nanstd(np.diff(logs)))
    return error_scale / spread if np.isfinite(spread) and spread > 0 else 1.0


class StatsForecastModel(Forecaster):
    """One of statsforecast's automatic models, fitted on log closes."""

    name = "statsforecast"
    min_points = MIN_POINTS
    interval_method = "statsforecast's own"
    #: The standard deviation the log closes' one-step changes are scaled to before the fit
    #: (the optimiser's working scale; see the module doc), or None to fit them as they are.
    error_scale: float | None = None
    #: Fit the log closes less the last one, so that the price's unit cannot change the
    #: model: AutoARIMA may choose a model without a mean, which forecasts the zero of what
    #: it is given (1 in the price's unit, on plain log closes; the last close here).
    centred = False
    _scale = 1.0  # what the fitted log closes were multiplied by
    _origin = 0.0  # what was taken from them first (the last log close when centred)
    _levels: tuple[float, ...] = ()  # the levels predict() is computing bands at
    _last: tuple[tuple[int, tuple[float, ...]], dict[str, np.ndarray]] | None = None

    def _fit(self, series: np.ndarray) -> None:
        self._last = None
        if (series <= 0).any():
            raise InvalidTaskInput("prices must be positive: the model is fitted on log closes")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. numerical warnings of a poor candidate
                logs = np.log(series)
                self._origin = float(logs[-1]) if self.centred else 0.0
                self._scale = _working_scale(logs, self.error_scale)
                self.model_ = _library_model(self.name).fit((logs - self._origin) * self._scale)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            raise ModelFitFailed(f"{self.name}: statsforecast could not fit the series ({exc})") \
                from None

    def predict(self, h: int, levels: Sequence[float] = DEFAULT_LEVELS) -> Prediction:
        """As every model's, with one library call for the forecast and its bounds (the
        mean does not depend on the levels; a second call cost about 7 % of a theta fit)."""
        self._levels = check_levels(levels)
        try:
            return super().predict(h, levels)
        finally:
            self._levels = ()

    def _library(self, h: int, levels: Sequence[float] = ()) -> dict[str, np.ndarray]:
        key = (h, tuple(levels))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        kwargs = {"level": [_plain(x) for x in levels]} if levels else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model_.predict(h=h, **kwargs)
        values = {k: np.exp(np.asarray(v, dtype=np.float64).reshape(-1) / self._scale
                            + self._origin) for k, v in out.items()}
        if not all(np.isfinite(v).all() for v in values.values()):
            raise ModelFitFailed(f"{self.name}: statsforecast gave a non-finite forecast")
        self._last = (key, values)
        return values

    def _forecast(self, h: int) -> np.ndarray:
        return self._library(h, self._levels)["mean"]

    def _bands(self, h: int, forecast: np.ndarray, levels: Sequence[float]) -> Bands:
        out = self._library(h, levels)
        return {level_key(lv): (out[f"lo-{_plain(lv)}"], out[f"hi-{_plain(lv)}"]) for lv in levels}


class ETSModel(StatsForecastModel):
    name = "ets"
    color = "tab:pink"


class ThetaModel(StatsForecastModel):
    name = "theta"
    error_scale = 0.01
    color = "tab:olive"


class ARIMAModel(StatsForecastModel):
    name = "arima"
    centred = True
    color = "tab:cyan"


STATISTICAL_MODELS: dict[str, type[StatsForecastModel]] = {
    "ets": ETSModel, "theta": ThetaModel, "arima": ARIMAModel}


def warm_up() -> dict[str, float]:
    """Fit and forecast each model once on a small series, so numba compiles its code now;
    ``{model: seconds}`` it took (the compile cost on a cold process)."""
    rng = np.random.default_rng(0)
    series = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.02, 120)))
    took = {}
    for name, cls in STATISTICAL_MODELS.items():
        started = time.perf_counter()
        cls().fit(series).predict(10, (80, 95))
        took[name] = time.perf_counter() - started
    return took
