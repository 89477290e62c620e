"""Forecasting models, one interface, looked up by name.

>>> from crypto_ml.models import get_model
>>> get_model("linear").fit([1.0, 2.0, 3.0]).forecast(2)
array([4., 5.])
"""

from __future__ import annotations

from collections.abc import Callable

from crypto_ml.errors import UnknownModel
from crypto_ml.models.base import Forecaster, check_horizon, clean_series
from crypto_ml.models.linear import LinearModel
from crypto_ml.models.naive import NaiveModel
from crypto_ml.models.rnn import RecurrentModel
from crypto_ml.models.rnn_returns import ReturnsRecurrentModel
from crypto_ml.models.statistical import ARIMAModel, ETSModel, ThetaModel

REGISTRY: dict[str, Callable[..., Forecaster]] = {
    "naive": NaiveModel,
    "linear": LinearModel,
    "ets": ETSModel,
    "theta": ThetaModel,
    "arima": ARIMAModel,
    "lstm": lambda **params: RecurrentModel(cell="lstm", **params),
    "gru": lambda **params: RecurrentModel(cell="gru", **params),
    "lstm_ret": lambda **params: ReturnsRecurrentModel(cell="lstm", **params),
    "gru_ret": lambda **params: ReturnsRecurrentModel(cell="gru", **params),
}
#: Models that need a deep-learning backend (routed to the ``gpu`` queue).
HEAVY = frozenset({"lstm", "gru", "lstm_ret", "gru_ret"})
#: Options each model accepts besides the series.
PARAMS: dict[str, frozenset[str]] = {
    "naive": frozenset(),
    "linear": frozenset(),
    "ets": frozenset(),
    "theta": frozenset(),
    "arima": frozenset(),
    "lstm": frozenset({"epochs", "seed", "window"}),
    "gru": frozenset({"epochs", "seed", "window"}),
    "lstm_ret": frozenset({"epochs", "seed", "window", "patience", "members", "units"}),
    "gru_ret": frozenset({"epochs", "seed", "window", "patience", "members", "units"}),
}


def model_names() -> list[str]:
    """Every registered model name, cheapest first."""
    return list(REGISTRY)


def default_max_points(name: str) -> int:
    """The history ``name`` is fitted on by default: the newest N closes, 0 for all of it."""
    return get_model(name).default_max_points


def get_model(name: str, **params: object) -> Forecaster:
    """A new, unfitted model; options a model does not take are ignored."""
    if name not in REGISTRY:
        raise UnknownModel(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    accepted = {k: v for k, v in params.items() if k in PARAMS[name]}
    return REGISTRY[name](**accepted)


__all__ = ["HEAVY", "Forecaster", "check_horizon", "clean_series", "default_max_points",
           "get_model", "model_names"]
