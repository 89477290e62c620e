"""What crosses the wire: the forecast request a task accepts and the result it returns.

Both are plain JSON/msgpack-safe values (strings, numbers, lists, dicts), never
pickled objects. A request is validated here, before any model code runs, and
a bad one fails with :class:`~crypto_ml.core.errors.InvalidTaskInput` naming the argument.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto_ml.core.errors import CryptoMLError, InvalidTaskInput
from crypto_ml.models import PARAMS, get_model

TASK_NAME = "crypto_ml.forecast"
#: Many cheap forecasts in one message: the dispatch cost is paid once per batch.
BATCH_TASK_NAME = "crypto_ml.forecast_batch"
#: Errors that fail one forecast of a batch without failing the others.
ITEM_ERRORS = (CryptoMLError, ValueError, ArithmeticError)
#: Content types the app accepts; anything else (pickle above all) is refused unread.
ACCEPT_CONTENT = ["application/json", "application/x-msgpack"]


def _bad(argument: str, problem: str) -> InvalidTaskInput:
    return InvalidTaskInput(f"invalid argument {argument!r}: {problem}")


def _positive_int(argument: str, value: object, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(argument, f"expected an integer, got {type(value).__name__}")
    if not 1 <= value <= cap:
        raise _bad(argument, f"must be between 1 and {cap}, got {value}")
    return value


def _prices(value: object, cap: int) -> list[float]:
    if not isinstance(value, list | tuple):
        raise _bad("prices", f"expected a list of numbers, got {type(value).__name__}")
    if len(value) > cap:
        raise _bad("prices", f"{len(value)} points is above the cap of {cap}")
    try:
        arr = np.array(value)  # no dtype: strings, bools and nested lists keep their own kind
    except ValueError:
        raise _bad("prices", "expected a flat list of numbers") from None
    if arr.size and (arr.ndim != 1 or arr.dtype.kind not in "if"):
        i, odd = next(((i, p) for i, p in enumerate(value)
                       if isinstance(p, bool) or not isinstance(p, int | float)), (0, value[0]))
        raise _bad("prices", f"item {i} is {type(odd).__name__} ({odd!r}), not a number")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        raise _bad("prices", f"item {i} is {arr[i]}; send only finite closes (drop NaNs first)")
    return arr.tolist()


@dataclass(frozen=True)
class ForecastRequest:
    """One forecast: fit ``model`` on ``prices`` of ``coin`` and predict ``horizon`` days."""

    coin: str
    model: str
    prices: list[float]
    horizon: int
    last_date: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, *, coin: object, model: object, prices: object, horizon: object,
              last_date: object = None, params: object = None,
              max_horizon: int = 365, max_series: int = 100_000) -> ForecastRequest:
        """Validate raw task arguments; raises InvalidTaskInput naming the first bad one."""
        if not isinstance(coin, str) or not coin:
            raise _bad("coin", "expected a non-empty string")
        if not isinstance(model, str) or model not in PARAMS:
            raise _bad("model", f"unknown model {model!r}; choose one of {', '.join(PARAMS)}")
        if last_date is not None and not isinstance(last_date, str):
            raise _bad("last_date", "expected an ISO date string or null")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise _bad("params", f"expected an object, got {type(params).__name__}")
        unknown = set(params) - PARAMS[model]
        if unknown:
            raise _bad("params", f"model {model!r} does not take {', '.join(sorted(unknown))}")
        return cls(coin, model, _prices(prices, max_series),
                   _positive_int("horizon", horizon, max_horizon), last_date, dict(params))

    def as_kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments."""
        return {"coin": self.coin, "model": self.model, "prices": self.prices,
                "horizon": self.horizon, "last_date": self.last_date, "params": self.params}


def run_forecast(request: ForecastRequest, worker: str) -> dict[str, Any]:
    """Fit and forecast; the JSON-safe result a task returns."""
    model = get_model(request.model, **request.params)
    started = time.perf_counter()
    model.fit(request.prices, coin=request.coin)
    forecast = model.forecast(request.horizon)
    return {
        "coin": request.coin,
        "model": request.model,
        "horizon": request.horizon,
        "forecast": [float(x) for x in np.asarray(forecast, dtype=np.float64)],
        "last_date": request.last_date,
        "n_points": model.n_points_,
        "fit_seconds": round(time.perf_counter() - started, 6),
        "worker": worker,
        "device": model.device,
    }


def run_batch(items: object, worker: str, max_batch: int,
              parse: Callable[..., ForecastRequest]) -> list[dict[str, Any]]:
    """Run each forecast of a batch; a bad item gets ``{"coin", "model", "error"}`` instead."""
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _bad("items", "expected a list of forecast requests (objects)")
    if len(items) > max_batch:
        raise _bad("items", f"{len(items)} requests is above the batch cap of {max_batch}")
    results = []
    for item in items:
        try:
            results.append(run_forecast(parse(**item), worker))
        except TypeError as exc:  # missing or unexpected keys
            results.append(item_error(item, InvalidTaskInput(f"invalid request: {exc}")))
        except ITEM_ERRORS as exc:
            results.append(item_error(item, exc))
    return results


def item_error(item: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The entry a failed forecast of a batch leaves in the batch's result."""
    return {"coin": str(item.get("coin")), "model": str(item.get("model")),
            "error": f"{type(exc).__name__}: {exc}"}
