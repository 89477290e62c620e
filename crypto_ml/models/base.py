"""The one interface every forecasting model implements.

A model is fitted on one price series (closes, oldest first) and forecasts the
next ``h`` closes. NaN closes are dropped before fitting: the series is treated
as the sequence of observed closes, so a gap shortens it rather than breaking it.
Models know nothing of Celery, Redis or the data loader.

:meth:`Forecaster.predict` adds prediction intervals at the levels asked for
(see :mod:`crypto_ml.models.intervals`): by default conformal intervals from the
model's own walk-forward errors; a model with a better method overrides
:meth:`Forecaster._bands`.

A model whose fitted state is plain data (``has_state``) gives it as a
:class:`~crypto_ml.models.state.ModelState` (:meth:`Forecaster.state`) and is
made to forecast again from one without training (:meth:`Forecaster.restore`);
the model store keeps those that are ``stored``, knowing nothing of their insides.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

from crypto_ml.core.errors import CalibrationTooShort, InvalidTaskInput, SeriesTooShort
from crypto_ml.models.intervals import (
    DEFAULT_LEVELS,
    MIN_CALIBRATION_TRAIN,
    Bands,
    Prediction,
    check_levels,
    conformal_bands,
    random_walk_bands,
    walk_forward_errors,
)
from crypto_ml.models.state import ModelState, ModelStateError, closes_digest


def clean_series(prices: object) -> np.ndarray:
    """``prices`` as a 1-D float64 array without NaNs; rejects infinities and other shapes."""
    try:
        arr = np.asarray(prices, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidTaskInput("prices must be a list of numbers") from None
    if arr.ndim != 1:
        raise InvalidTaskInput(f"prices must be one-dimensional, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise InvalidTaskInput("prices contain infinite values; clean the series first")
    return arr[~np.isnan(arr)]


def positive_prices(series: np.ndarray, needed_for: str) -> None:
    """Refuse a series with a price <= 0, which ``needed_for`` (e.g. log returns) cannot take."""
    if (series <= 0).any():
        raise InvalidTaskInput(f"prices must be positive {needed_for}")


#: The seeds Keras takes (``keras.utils.set_random_seed``): 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1


def int_option(name: str, value: object, low: int, high: int) -> int:
    """A model option that must be an integer from ``low`` to ``high`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidTaskInput(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_horizon(h: object) -> int:
    """``h`` as a positive int, or a clear error."""
    if isinstance(h, bool) or not isinstance(h, int | np.integer) or h < 1:
        raise InvalidTaskInput(f"horizon must be a positive integer, got {h!r}")
    return int(h)


class Forecaster(ABC):
    """Fit on a series, forecast ``h`` steps.

    Each concrete model declares its metadata here, once: ``name`` (what the registry,
    the CLI and task messages call it), ``options`` (the keyword options it takes
    besides the series), ``heavy`` (needs a deep-learning backend: routed to the
    ``gpu`` queue, sent one per message), ``color`` (its line in plots),
    ``interval_method``, ``default_max_points`` (the newest closes the manager sends
    it unless told otherwise; 0 for all), ``series_per_message`` (a table run's chunk),
    ``has_state`` (:meth:`state` and :meth:`restore` work) and ``stored`` (the model
    store keeps its fits). The registry, routing, request validation, plots,
    benchmarks and the model store all read these. Each option is kept as the
    attribute of its name (a state records them).
    """

    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()
    heavy: ClassVar[bool] = False
    color: ClassVar[str] = "tab:red"
    min_points: int = 1
    device: str = "CPU"
    #: How :meth:`predict` makes intervals (said in results and in the README).
    interval_method: ClassVar[str] = "conformal"
    #: The history the manager fits on unless told otherwise: the newest N closes (0: all).
    default_max_points: ClassVar[int] = 200
    #: Series a table run packs into one message: about half a second of this model's work.
    series_per_message: ClassVar[int] = 50
    #: Its fitted state is plain data: :meth:`state` and :meth:`restore` work.
    has_state: ClassVar[bool] = False
    #: The model store keeps its fits (needs ``has_state``): training costs far more than
    #: reading a state back, as for the deep models; a cheap model is refitted instead.
    stored: ClassVar[bool] = False

    def fit(self, prices: object, coin: str = "") -> Self:
        """Fit on ``prices`` (NaNs dropped); ``coin``, if given, names the series in errors."""
        series = clean_series(prices)
        if len(series) < self.min_points:
            raise SeriesTooShort.for_series(coin, len(series), self.min_points, self.name)
        self._fit(series)
        self.series_ = series
        self.n_points_ = len(series)
        return self

    def forecast(self, h: int) -> np.ndarray:
        """The next ``h`` closes as a float64 array of length ``h``."""
        self._check_fitted("forecast")
        out = np.asarray(self._forecast(check_horizon(h)), dtype=np.float64).reshape(-1)
        assert out.shape == (h,), f"{self.name} returned {out.shape} for h={h}"
        return out

    def _check_fitted(self, method: str) -> None:
        if not hasattr(self, "n_points_"):
            raise RuntimeError(f"{type(self).__name__}.{method} called before fit")

    def state(self) -> ModelState:
        """This fitted model's forecasting state as plain data (a JSON-safe header and numeric
        arrays); ModelStateError for a model without one (``has_state`` false)."""
        self._check_fitted("state")
        header, arrays = self._state()
        return ModelState(self.name, self.option_values(), int(self.n_points_), self.device,
                          header, arrays, closes_digest(self.series_))

    def restore(self, state: ModelState, prices: object) -> Self:
        """Make this model, built with the options ``state`` was saved with, forecast as the
        model that saved it did, without training; ``prices`` are the closes it was fitted on
        (the intervals are calibrated on them). Loads no deep-learning backend: that waits
        for the first forecast. ModelStateError if the state is another model's, of other
        options or of other closes."""
        series = clean_series(prices)
        state.check_fits(self.name, self.option_values(), series)
        self._restore(state)
        self.series_ = series
        self.n_points_ = len(series)
        self.device = state.device
        return self

    def option_values(self) -> dict[str, Any]:
        """Every option this model takes, with its value (the defaults filled in): what a
        fit depends on, so that a default given or left out names the same fit."""
        return {name: getattr(self, name) for name in sorted(self.options)}

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The model's own part of its state: JSON header values and named arrays."""
        raise ModelStateError(f"model {self.name!r} has no saveable state; fit it instead")

    def _restore(self, state: ModelState) -> None:
        """Set the fitted attributes from the model's own part of ``state``."""
        raise ModelStateError(f"model {self.name!r} has no saveable state; fit it instead")

    def predict(self, h: int, levels: Sequence[float] = DEFAULT_LEVELS) -> Prediction:
        """The forecast of :meth:`forecast` and, per level, bounds with lower <= forecast <= upper;
        for a series that never goes below zero (a price), neither do forecast and bounds."""
        levels = check_levels(levels)
        point = self.forecast(h)
        prices = bool((self.series_ >= 0).all())  # never below zero: neither is the forecast
        if not levels:
            return Prediction(point).checked(prices)
        method = self.interval_method
        try:
            bands = self._bands(h, point, levels)
        except CalibrationTooShort as exc:
            bands = random_walk_bands(self.series_, h, levels, center=point)
            method = f"random walk ({exc.fallback.format(method=method)})"
        return Prediction(point, bands, method).checked(prices)

    def _bands(self, h: int, forecast: np.ndarray, levels: Sequence[float]) -> Bands:
        """Conformal bands from walk-forward refits on this model's own training series."""
        errors = walk_forward_errors(self.series_, h, self._calibration_min_train(),
                                     self._calibration_forecast)
        return conformal_bands(forecast, float(self.series_[-1]), errors, levels)

    def _calibration_min_train(self) -> int:
        return max(self.min_points, MIN_CALIBRATION_TRAIN)

    def _calibration_forecast(self, train: np.ndarray, h: int) -> np.ndarray:
        """A forecast of ``h`` closes after ``train`` by a fresh fit of a copy of this model."""
        return copy.copy(self).fit(train)._forecast(h)

    @classmethod
    def predict_rows(cls, matrix: np.ndarray, h: int, levels: Sequence[float]
                     ) -> tuple[np.ndarray, np.ndarray, Bands]:
        """:meth:`predict` over the rows of ``matrix`` (equal-length, NaN-free series, each
        at least ``min_points`` long) at once: ``(taken, forecast, bands)``, ``taken`` the
        rows it could do (bool, ``(rows,)``; the others are fitted one by one), forecast and
        bounds ``(rows, h)``. Raises CalibrationTooShort to leave the whole group to the
        one-series path. Only models that override it are vectorised
        (:mod:`crypto_ml.models.batch`); the numbers must be :meth:`predict`'s."""
        raise NotImplementedError

    @abstractmethod
    def _fit(self, series: np.ndarray) -> None: ...

    @abstractmethod
    def _forecast(self, h: int) -> np.ndarray: ...
