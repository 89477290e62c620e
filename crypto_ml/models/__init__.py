"""Forecasting models: one interface, looked up by name.

Owns every model and its metadata (name, options, heavy or not, plot colour),
declared once on the model class (:class:`~crypto_ml.models.base.Forecaster`);
the registry below, request validation, task routing, plots and benchmarks all
read it from here. Also owns the deep-learning backend start-up
(:mod:`crypto_ml.models.device`). May import only :mod:`crypto_ml.core`; models
know nothing of Celery, Redis, the data folder or the command line.

>>> from crypto_ml.models import get_model
>>> get_model("linear").fit([1.0, 2.0, 3.0]).forecast(2)
array([4., 5.])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from crypto_ml.core.errors import ConfigError, InvalidTaskInput, UnknownModel
from crypto_ml.models.base import Forecaster, check_horizon, clean_series
from crypto_ml.models.intervals import MIN_CALIBRATION_TRAIN
from crypto_ml.models.linear import LinearModel
from crypto_ml.models.naive import NaiveModel
from crypto_ml.models.rnn import GRUModel, LSTMModel
from crypto_ml.models.rnn_returns import GRUReturnsModel, LSTMReturnsModel
from crypto_ml.models.statistical import ARIMAModel, ETSModel, ThetaModel

#: The model a request that names none gets: on the shipped backtests no model beats naive's
#: point forecast and its intervals are the best calibrated (docs/models.md, "What to use").
DEFAULT_MODEL = "naive"
#: How many closes a request that names no horizon gets forecast.
DEFAULT_HORIZON = 10
#: Every model class by name, cheapest first.
REGISTRY: dict[str, type[Forecaster]] = {
    cls.name: cls
    for cls in (NaiveModel, LinearModel, ETSModel, ThetaModel, ARIMAModel, LSTMModel, GRUModel,
                LSTMReturnsModel, GRUReturnsModel)
}
#: Models that need a deep-learning backend (routed to the ``gpu`` queue), read off the classes.
HEAVY = frozenset(name for name, cls in REGISTRY.items() if cls.heavy)
#: Options each model accepts besides the series, read off the classes.
PARAMS: dict[str, frozenset[str]] = {name: cls.options for name, cls in REGISTRY.items()}


def model_names() -> list[str]:
    """Every registered model name, cheapest first."""
    return list(REGISTRY)


def model_class(name: str) -> type[Forecaster]:
    """The class registered as ``name``, or UnknownModel naming the choices."""
    if name not in REGISTRY:
        raise UnknownModel(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def default_max_points(name: str) -> int:
    """The history ``name`` is fitted on by default: the newest N closes, 0 for all of it."""
    return model_class(name).default_max_points


def fewest_points(models: Sequence[str], params: Mapping[str, object] | None = None,
                  intervals: bool = False) -> tuple[int, str]:
    """The fewest closes each of ``models`` fits on (with ``intervals``: and calibrates its
    prediction intervals on, :data:`~crypto_ml.models.intervals.MIN_CALIBRATION_TRAIN`), at
    most over them: (that number, the model that needs it)."""
    needs = {}
    for name in models:
        need = get_model(name, **dict(params or {})).min_points  # options checked already
        needs[name] = max(need, MIN_CALIBRATION_TRAIN if intervals else 1)
    model = max(needs, key=lambda m: needs[m])
    return needs[model], model


def window_problem(window: int | None, models: Sequence[str],
                   params: Mapping[str, object] | None = None, intervals: bool = False,
                   whole: str = "all") -> str | None:
    """Why the newest ``window`` closes are too few for ``models`` (None: each model's own
    window, 0: the whole history, are never too few), or None; ``whole`` is how the caller
    asks for the whole history."""
    if not window or not models:
        return None
    need, model = fewest_points(models, params, intervals)
    if window >= need:
        return None
    what = "fits and calibrates its prediction intervals on" if intervals else "fits on"
    return (f"{window} is too few: {model} {what} at least {need} closes; give {need} or more, "
            f"or {whole} for the whole history")


def check_window(max_points: object, models: Sequence[str] = (),
                 params: Mapping[str, object] | None = None, intervals: bool = True
                 ) -> int | None:
    """A Python caller's ``max_points`` as a whole number of closes (0: all; None: each
    model's own), or ConfigError: no such number, or too few for ``models``
    (:func:`window_problem`), as the command line and the HTTP API refuse it."""
    if max_points is None:
        return None
    if (isinstance(max_points, bool) or not isinstance(max_points, int | np.integer)
            or max_points < 0):
        raise ConfigError(f"max_points must be a whole number of closes (0: all), got "
                          f"{max_points!r}")
    if why := window_problem(int(max_points), models, params, intervals, whole="0"):
        raise ConfigError(f"max_points {why}")
    return int(max_points)


def get_model(name: str, **params: object) -> Forecaster:
    """A new, unfitted model; options a model does not take are ignored."""
    cls = model_class(name)
    return cls(**{k: v for k, v in params.items() if k in cls.options})


#: statsforecast's class names for the models it shares with this project
STATSFORECAST_NAMES = {"Naive": "naive", "AutoETS": "ets", "AutoTheta": "theta",
                       "AutoARIMA": "arima"}


def _statsforecast_hint(name: str) -> str:
    """``" (statsforecast's AutoETS is 'ets' here)"``, or nothing for another name."""
    ours = STATSFORECAST_NAMES.get(name)
    return f" (statsforecast's {name} is {ours!r} here)" if ours else ""


def check_option_names(models: Sequence[str], options: Iterable[str], label: str = "{}"
                       ) -> None:
    """A ConfigError for an option none of ``models`` takes (a typo, most likely), named as
    ``label`` formats it (``--param {}``), with the options they do take."""
    taken = sorted({name for model in models for name in PARAMS[model]})
    one = len(models) == 1
    for name in options:
        if name not in taken:
            takes = ("it takes " if one else "they take ") + (", ".join(taken) or "no option")
            whose = f"{models[0]} does not" if one else f"none of {', '.join(models)}"
            raise ConfigError(f"{label.format(name)}: {whose} take{'' if one else 's'} it; "
                              f"{takes}")


def check_option_values(models: Sequence[str], options: Mapping[str, object],
                        label: str = "{}") -> None:
    """A ConfigError, before any work, for an option outside the range a model takes
    (``epochs=100000``), the model named as ``label`` formats it (``--model {}``): each model
    is built once with the options it takes."""
    for name in models:
        try:
            get_model(name, **options)
        except InvalidTaskInput as exc:
            raise ConfigError(f"{label.format(name)}: {exc}") from None


class Models(tuple[str, ...]):
    """Model names :func:`parse_models` has checked (it alone makes them): given to it again,
    taken as they are (the command line parses ``--model`` once; the Python API it calls
    checks what others give)."""


def parse_models(spec: str | Sequence[str], offer: Sequence[str] = ()) -> Models:
    """``"lstm,gru"`` or ``["LSTM"]`` -> validated model names (lower case), duplicates
    dropped; an unknown name's error offers ``offer`` (default: every model)."""
    if isinstance(spec, Models):
        return spec
    given = spec.split(",") if isinstance(spec, str) else spec
    if not isinstance(given, Sequence) or not all(isinstance(m, str) for m in given):
        shown = next((m for m in (given if isinstance(given, Sequence) else [given])
                      if not isinstance(m, str)), given)
        raise UnknownModel(f"models are named, as 'naive' or 'naive,ets', got "
                           f"{type(shown).__name__}" + _statsforecast_hint(type(shown).__name__))
    written = [m.strip() for m in given if m.strip()]
    names = [m.lower() for m in written]  # in any case, as the command line takes them
    known = model_names()
    for name, as_given in zip(names, written, strict=True):
        if name not in known:
            raise UnknownModel(f"unknown model {as_given!r}; choose from "
                               f"{', '.join(offer or known)}" + _statsforecast_hint(as_given))
    if not names:
        raise UnknownModel(f"no model given; choose from {', '.join(known)}")
    return Models(dict.fromkeys(names))


def parse_fallback(spec: str | Sequence[str], models: Sequence[str],
                   label: str = "fallback_model") -> str:
    """The model that forecasts a series one of ``models`` fails on (statsforecast's
    ``fallback_model``): one cheap model, since it runs inside each chunk's message, and not
    the only model (it would fail the same way). UnknownModel naming ``label`` otherwise."""
    cheap = [m for m in REGISTRY if m not in HEAVY]
    try:
        names = parse_models(spec, cheap)
    except UnknownModel as exc:
        raise UnknownModel(f"{label}: {exc}") from None
    if len(names) != 1:
        raise UnknownModel(f"{label}: a fallback is one model, got {', '.join(names)}")
    if names[0] in HEAVY:
        raise UnknownModel(f"{label}: {names[0]!r} is a deep model; the fallback runs inside "
                           f"each chunk's message, so choose a cheap one: {', '.join(cheap)}")
    if list(models) == list(names):
        raise UnknownModel(f"{label}: {names[0]!r} is the model it would stand in for; it "
                           "would fail the same way, so choose another")
    return names[0]


__all__ = ["DEFAULT_HORIZON", "DEFAULT_MODEL", "HEAVY", "PARAMS", "REGISTRY", "Forecaster",
           "check_horizon", "check_option_names", "check_option_values",
           "clean_series", "default_max_points", "get_model", "model_class", "model_names",
           "parse_fallback", "parse_models"]
