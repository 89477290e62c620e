"""What crosses the wire: the forecast request a task accepts and the result it returns.

Both are plain JSON/msgpack-safe values (strings, numbers, lists, dicts), never
pickled objects. A request is validated here, before any model code runs, and
a bad one fails with :class:`~crypto_ml.core.errors.InvalidTaskInput` naming the argument.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto_ml.core.errors import InvalidTaskInput
from crypto_ml.core.settings import Settings
from crypto_ml.models import PARAMS, get_model
from crypto_ml.models.batch import SERIES_ERRORS
from crypto_ml.models.intervals import DEFAULT_LEVELS, check_levels
from crypto_ml.worker.model_store import ModelStore, forecast_with_store

TASK_NAME = "crypto_ml.forecast"
#: Many cheap forecasts in one message: the dispatch cost is paid once per batch.
BATCH_TASK_NAME = "crypto_ml.forecast_batch"
#: Several callers' batches in one message, each stored under its caller's own result id.
PARTS_TASK_NAME = "crypto_ml.forecast_parts"
#: Errors that fail one forecast of a batch without failing the others.
ITEM_ERRORS = SERIES_ERRORS
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
        raise _bad("prices", f"{len(value)} points is above the cap of {cap} "
                   "(CRYPTO_ML_MAX_SERIES on the workers)")
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
    #: Prediction interval levels in percent; empty for none.
    levels: tuple[float, ...] = DEFAULT_LEVELS
    retrain: bool = False  # fit even if the model store holds this model (crypto_ml.worker.model_store)
    use_store: bool = True  # False: neither read nor write the store (backtests' one-off fits)

    @classmethod
    def parse(cls, *, coin: object, model: object, prices: object, horizon: object,
              last_date: object = None, params: object = None, levels: object = None,
              retrain: object = False, use_store: object = True, max_horizon: int = Settings.max_horizon,
              max_series: int = Settings.max_series) -> ForecastRequest:
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
        for name, flag in (("retrain", retrain), ("use_store", use_store)):
            if not isinstance(flag, bool):
                raise _bad(name, f"expected true or false, got {type(flag).__name__}")
        try:
            checked = DEFAULT_LEVELS if levels is None else check_levels(levels)
        except InvalidTaskInput as exc:
            raise _bad("levels", str(exc)) from None
        return cls(coin, model, _prices(prices, max_series),
                   _positive_int("horizon", horizon, max_horizon), last_date, dict(params),
                   checked, bool(retrain), bool(use_store))

    def as_kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments (the store flags only when not their default)."""
        kwargs = {"coin": self.coin, "model": self.model, "prices": self.prices,
                  "horizon": self.horizon, "last_date": self.last_date, "params": self.params,
                  "levels": list(self.levels)}
        if self.retrain:
            kwargs["retrain"] = True
        if not self.use_store:
            kwargs["use_store"] = False
        return kwargs


def run_forecast(request: ForecastRequest, worker: str,
                 store: ModelStore | None = None) -> dict[str, Any]:
    """Fit (or restore from ``store``) and forecast; the JSON-safe result a task returns.

    Deep models also report ``from_store``: whether the forecast came from a stored fit,
    and ``unsaved`` when the store refused its fit (the next request trains again).
    """
    model = get_model(request.model, **request.params)
    started = time.perf_counter()
    prediction, from_store, unsaved = forecast_with_store(
        model, store if request.use_store else None, series=request.coin,
        prices=request.prices, horizon=request.horizon,
        levels=request.levels, retrain=request.retrain)
    result = {
        "coin": request.coin,
        "model": request.model,
        "horizon": request.horizon,
        "forecast": [float(x) for x in np.asarray(prediction.forecast, dtype=np.float64)],
        "intervals": prediction.intervals_json(),
        "interval_method": prediction.method,
        "last_date": request.last_date,
        "n_points": model.n_points_,
        "fit_seconds": round(time.perf_counter() - started, 6),
        "worker": worker,
        "device": model.device,
    }
    if model.heavy or from_store is not None:  # the store off: a deep model's is False
        result["from_store"] = bool(from_store)
    if unsaved is not None:
        result["unsaved"] = unsaved
    return result


def run_batch(items: object, worker: str, max_batch: int,
              parse: Callable[..., ForecastRequest],
              store: ModelStore | None = None) -> list[dict[str, Any]]:
    """Run each forecast of a batch; a bad item gets ``{"coin", "model", "error"}`` instead."""
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _bad("items", "expected a list of forecast requests (objects)")
    if len(items) > max_batch:
        raise _bad("items", f"{len(items)} requests is above the batch cap of {max_batch}")
    results = []
    for item in items:
        try:
            results.append(run_forecast(parse(**item), worker, store))
        except TypeError as exc:  # missing or unexpected keys
            results.append(item_error(item, InvalidTaskInput(f"invalid request: {exc}")))
        except ITEM_ERRORS as exc:
            results.append(item_error(item, exc))
    return results


PART_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_parts(parts: object, max_batch: int) -> list[tuple[str, list[Any]]]:
    """The ``(part id, items)`` of a parts message, or InvalidTaskInput: each part a
    ``{"id": uuid, "items": [request, ...]}``, at most ``max_batch`` items in all. A part id
    names the result key the part's results are stored under, so it must be a task id
    (a UUID) and nothing else, never another key."""
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise _bad("parts", "expected a list of {id, items} objects")
    out = []
    for part in parts:
        part_id, items = part.get("id"), part.get("items")
        if not isinstance(part_id, str) or not PART_ID.fullmatch(part_id):
            raise _bad("parts", f"a part id must be a task id (a UUID), got {part_id!r}")
        if not isinstance(items, list):
            raise _bad("parts", f"part {part_id}: expected a list of forecast requests")
        out.append((part_id, items))
    total = sum(len(items) for _, items in out)
    if total > max_batch:
        raise _bad("parts", f"{total} requests is above the batch cap of {max_batch}")
    return out


#: A parts message's ``reply_to``: this prefix, then 32 hex digits (a uuid4's).
REPLY_PREFIX = "crypto-ml-hub-"
REPLY_TO = re.compile(re.escape(REPLY_PREFIX) + r"[0-9a-f]{32}")


def check_reply(reply_to: object) -> str:
    """A parts message's ``reply_to``: the name of its sender's home channel, which the results
    are published on (:class:`crypto_ml.dispatch.async_results.ResultHub`), else
    InvalidTaskInput: a message names a channel of that form, never another key or channel."""
    if not isinstance(reply_to, str) or not REPLY_TO.fullmatch(reply_to):
        raise _bad("reply_to", f"expected {REPLY_PREFIX}<32 hex digits>, got {reply_to!r}")
    return reply_to


def item_error(item: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The entry a failed forecast of a batch leaves in the batch's result."""
    return {"coin": str(item.get("coin")), "model": str(item.get("model")),
            "error": f"{type(exc).__name__}: {exc}"}
