"""The one interface every forecasting model implements.

A model is fitted on one price series (closes, oldest first) and forecasts the
next ``h`` closes. NaN closes are dropped before fitting: the series is treated
as the sequence of observed closes, so a gap shortens it rather than breaking it.
Models know nothing of Celery, Redis or the data loader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

import numpy as np

from crypto_ml.core.errors import InvalidTaskInput, SeriesTooShort


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
    ``gpu`` queue, sent one per message) and ``color`` (its line in plots). The
    registry, routing, request validation, plots and benchmarks all read these.
    """

    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()
    heavy: ClassVar[bool] = False
    color: ClassVar[str] = "tab:red"
    min_points: int = 1
    device: str = "CPU"

    def fit(self, prices: object, coin: str = "series") -> Self:
        """Fit on ``prices`` (NaNs dropped); ``coin`` only names the series in errors."""
        series = clean_series(prices)
        if len(series) < self.min_points:
            raise SeriesTooShort.for_series(coin, len(series), self.min_points, self.name)
        self._fit(series)
        self.n_points_ = len(series)
        return self

    def forecast(self, h: int) -> np.ndarray:
        """The next ``h`` closes as a float64 array of length ``h``."""
        if not hasattr(self, "n_points_"):
            raise RuntimeError(f"{type(self).__name__}.forecast called before fit")
        out = np.asarray(self._forecast(check_horizon(h)), dtype=np.float64).reshape(-1)
        assert out.shape == (h,), f"{self.name} returned {out.shape} for h={h}"
        return out

    @abstractmethod
    def _fit(self, series: np.ndarray) -> None: ...

    @abstractmethod
    def _forecast(self, h: int) -> np.ndarray: ...
