"""Walk-forward backtests: how good each model's forecast was, per coin, against what happened.

Each coin's closes (NaNs dropped, oldest first, exactly as ``send-tasks`` sends
them) are cut at ``origins`` points, ``stride`` days apart, the newest one
``horizon`` days before the end. At every origin each model is fitted on the
closes before it and forecasts the next ``horizon`` closes; every (coin, model,
origin) fit is one ordinary forecast task (the cheap ones batched, as in any run),
sent and collected by :meth:`CryptoManager.dispatch`. The forecasts are scored with
:mod:`crypto_ml.backtest.metrics` per coin and model, and aggregated over the coins that
every model scored. Deep models get a fixed ``seed``, so a backtest is repeatable.

>>> config = BacktestConfig(models=("naive", "linear"))
>>> run_backtest(CryptoManager(settings=Settings()), config).best()["bitcoin"]   # doctest: +SKIP
('naive', 3.07...)
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from crypto_ml.backtest.metrics import (
    METRICS,
    geometric_mean,
    interval_metric_names,
    interval_scores,
    naive_scale,
    relative_mae,
    scores,
)
from crypto_ml.core.errors import ConfigError, CryptoMLError
from crypto_ml.core.progress import ProgressBar
from crypto_ml.core.settings import DEFAULT_TIMEOUT, check_timeout
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.report import NullObserver, RunReport
from crypto_ml.models import (
    DEFAULT_HORIZON,
    PARAMS,
    default_max_points,
    get_model,
    model_names,
    parse_models,
)
from crypto_ml.models.intervals import DEFAULT_LEVELS, level_key
from crypto_ml.worker.requests import ForecastRequest

if TYPE_CHECKING:
    from crypto_ml.data.table_loader import TableLoader

DEFAULT_ORIGINS = 30
DEFAULT_MIN_TRAIN = 60
DEFAULT_SEED = 42
#: MASE within this relative tolerance (0.5 %) of a coin's lowest is a tie in
#: :meth:`BacktestResult.best`: a difference that small is noise, not a better model.
TIE_TOLERANCE = 0.005


@dataclass(frozen=True)
class BacktestConfig:
    """What to backtest: models, horizon, the origins, and the fit options.

    ``options`` are further model options (e.g. ``{"members": 1}``), sent to the
    models that take them. ``max_points``: each fit sees the newest N closes before
    its origin; None: each model's default (as ``send-tasks``); 0: all of them.
    ``levels``: the prediction intervals scored (coverage and Winkler score).
    """

    models: tuple[str, ...] = ("naive", "linear")
    horizon: int = DEFAULT_HORIZON
    origins: int = DEFAULT_ORIGINS
    stride: int = 1
    min_train: int = DEFAULT_MIN_TRAIN
    max_points: int | None = None
    epochs: int | None = None
    seed: int = DEFAULT_SEED
    timeout: float | None = DEFAULT_TIMEOUT
    options: dict[str, int] = field(default_factory=dict)
    levels: tuple[float, ...] = DEFAULT_LEVELS

    def __post_init__(self) -> None:
        """ConfigError naming the first count out of range, as the command line refuses it."""
        least = {"horizon": 1, "origins": 1, "stride": 1, "min_train": 1, "max_points": 0,
                 "epochs": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if value is None and name in ("max_points", "epochs"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(f"backtest {name} must be an integer of at least {low}, "
                                  f"got {value!r}")
        check_timeout(self.timeout, "backtest timeout")
        if self.epochs is not None and "epochs" in self.options:
            raise ConfigError("backtest epochs and options['epochs'] both set epochs; give one")

    def window(self, model: str) -> int:
        """The newest closes ``model`` is fitted on at each origin (0: all)."""
        return default_max_points(model) if self.max_points is None else self.max_points

    def params(self, model: str) -> dict[str, Any]:
        """The options sent with ``model``'s tasks (only those it takes)."""
        given = {"seed": self.seed, **self.options,  # options={"seed": 5} over the default
                 **({} if self.epochs is None else {"epochs": self.epochs})}
        return {k: v for k, v in given.items() if v is not None and k in PARAMS[model]}

    def needed(self) -> int:
        """Closes a coin needs: the shortest origin has ``min_train`` (or a model's minimum)."""
        minimum = max(get_model(m, **self.params(m)).min_points for m in self.models)
        return max(self.min_train, minimum, 2) + self.stride * (self.origins - 1) + self.horizon


@dataclass
class CoinSeries:
    """One coin's closes and their ISO dates, and its origins (training lengths)."""

    coin: str
    prices: np.ndarray
    dates: list[str]
    origins: list[int]

    def train(self, origin: int, max_points: int | None) -> np.ndarray:
        start = max(0, origin - max_points) if max_points else 0
        return self.prices[start:origin]

    def actual(self, origin: int, horizon: int) -> np.ndarray:
        return self.prices[origin : origin + horizon]


def origins_for(n: int, config: BacktestConfig) -> list[int]:
    """Training lengths of the ``config.origins`` origins of an ``n``-close series, oldest first."""
    newest = n - config.horizon
    return [newest - config.stride * j for j in range(config.origins)][::-1]


def load_series(loader: CryptoLoader | TableLoader, coins: Sequence[str] | None,
                config: BacktestConfig) -> tuple[list[CoinSeries], dict[str, str]]:
    """Every coin long enough to backtest, and ``{coin: why skipped}`` for the rest."""
    needed = config.needed()
    series, skipped = [], {}
    for coin in coins or loader.get_crypto_names():
        try:
            frame = loader.get_df(coin).dropna(subset=["Close"])
        except CryptoMLError as exc:
            skipped[coin] = f"{type(exc).__name__}: {exc}"
            continue
        if len(frame) < needed:
            skipped[coin] = f"{len(frame)} closes, fewer than the {needed} this backtest needs"
            continue
        dates = [d.date().isoformat() for d in frame["Date"]]
        prices = frame["Close"].to_numpy(dtype=np.float64)
        series.append(CoinSeries(coin, prices, dates, origins_for(len(prices), config)))
    return series, skipped


def backtest_requests(series: Sequence[CoinSeries],
                      config: BacktestConfig) -> Iterator[ForecastRequest]:
    """One forecast request per (coin, model, origin), made as they are sent."""
    for s in series:
        for model in config.models:
            for origin in s.origins:
                yield ForecastRequest(s.coin, model, s.train(origin, config.window(model)).tolist(),
                                      config.horizon, s.dates[origin - 1], config.params(model),
                                      levels=config.levels,
                                      use_store=False)  # one-off fits: keep the store small


@dataclass
class BacktestResult:
    """Scores per coin and model, their aggregate, and what could not be scored."""

    config: BacktestConfig
    per_coin: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    windows: dict[str, list[str]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def common_coins(self) -> list[str]:
        """Coins that every model scored: the ones the aggregate is taken over."""
        return [c for c, by in self.per_coin.items() if all(m in by for m in self.config.models)]

    def aggregate(self) -> dict[str, dict[str, float]]:
        """Per model over :meth:`common_coins`: mean and median of each metric, the
        geometric mean of ``rel_mae`` and the coins where the model beat naive."""
        coins = self.common_coins()
        out: dict[str, dict[str, float]] = {}
        for model in self.config.models:
            row: dict[str, float] = {"n_coins": len(coins)}
            for metric in (*METRICS, *interval_metric_names(self.config.levels)):
                values = [self.per_coin[c][model][metric] for c in coins
                          if metric in self.per_coin[c][model]]
                row[f"{metric}_mean"] = float(np.mean(values)) if values else float("nan")
                row[f"{metric}_median"] = statistics.median(values) if values else float("nan")
            if "naive" in self.config.models:
                row["rel_mae"] = geometric_mean([relative_mae(self.per_coin[c], model)
                                                 for c in coins])
                row["beats_naive"] = sum(self.per_coin[c][model]["mase"]
                                         < self.per_coin[c]["naive"]["mase"] for c in coins)
            out[model] = row
        return out

    def best(self) -> dict[str, tuple[str, float]]:
        """Per coin, the model with the lowest MASE and that MASE. Scores within a relative
        tolerance of 0.5 % (:data:`TIE_TOLERANCE`) of the lowest, ``mase <= lowest * 1.005``,
        count as a tie, which goes to the simpler model: the one registered earlier
        (naive, linear, ets, theta, arima, lstm, gru, lstm_ret, gru_ret). NaN counts as inf."""
        rank = {name: i for i, name in enumerate(model_names())}
        chosen = {}
        for coin, by_model in self.per_coin.items():
            score = {m: _finite_or_inf(by_model[m]["mase"]) for m in by_model}
            lowest = min(score.values())
            tied = [m for m in by_model if score[m] <= lowest * (1 + TIE_TOLERANCE)]
            model = min(tied, key=lambda m: rank.get(m, len(rank)))
            chosen[coin] = (model, by_model[model]["mase"])
        return chosen

    def to_json(self) -> dict[str, Any]:
        cfg = {k: (list(v) if isinstance(v, tuple) else v)
               for k, v in self.config.__dict__.items()}
        return {"config": cfg, "per_coin": self.per_coin, "aggregate": self.aggregate(),
                "best": {c: {"model": m, "mase": v} for c, (m, v) in self.best().items()},
                "windows": self.windows, "failed": self.failed, "skipped": self.skipped,
                "wall_seconds": self.wall_seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BacktestResult:
        cfg = dict(data["config"])
        cfg["models"] = tuple(cfg["models"])
        cfg["levels"] = tuple(cfg.get("levels", ()))
        per_coin = {coin: {model: {k: math.nan if v is None else v for k, v in scores.items()}
                           for model, scores in by_model.items()}
                    for coin, by_model in data["per_coin"].items()}  # null: no finite score
        return cls(BacktestConfig(**cfg), per_coin, data.get("failed", {}),
                   data.get("skipped", {}), data.get("windows", {}))


def _finite_or_inf(value: float) -> float:
    """``value``, NaN as inf (a score that cannot rank above any other; a file's null is read
    as NaN by :meth:`BacktestResult.from_json`)."""
    return float("inf") if np.isnan(value) else float(value)


class _Collector:
    """Gathers forecasts by (coin, model, origin date) as tasks finish, on the progress bar."""

    def __init__(self, total: int, err: TextIO, show: bool = True) -> None:
        self.forecasts: dict[tuple[str, str, str | None], np.ndarray] = {}
        self.intervals: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        self.failures: dict[str, dict[str, str]] = {}
        self.bar = ProgressBar(err, unit="forecasts back") if show else None
        if self.bar is not None:
            self.bar.total = total

    def success(self, result: dict[str, Any]) -> None:
        key = (result["coin"], result["model"], result["last_date"])
        self.forecasts[key] = np.asarray(result["forecast"], dtype=np.float64)
        self.intervals[key] = result.get("intervals") or {}
        if self.bar is not None:
            self.bar.step()


def score(series: Sequence[CoinSeries], config: BacktestConfig,
          collected: _Collector) -> BacktestResult:
    """Metrics of every (coin, model) whose every origin came back."""
    result = BacktestResult(config)
    for s in series:
        last = s.origins[-1] + config.horizon - 1
        result.windows[s.coin] = [s.dates[s.origins[0]], s.dates[last]]
        actual = np.stack([s.actual(o, config.horizon) for o in s.origins])
        # one scale per origin for every model: the whole history before it, whatever window
        # a model is fitted on, so that models and windows compare on the same footing
        scale = np.array([naive_scale(s.prices[:o]) for o in s.origins])
        for model in config.models:
            keys = [(s.coin, model, s.dates[o - 1]) for o in s.origins]
            got = [collected.forecasts.get(key) for key in keys]
            missing = sum(f is None for f in got)
            if missing:
                why = collected.failures.get(s.coin, {}).get(model, "no result")
                result.failed.setdefault(s.coin, {})[model] = (
                    f"{missing} of {len(s.origins)} origins failed, e.g. {why}")
                continue
            forecast = np.stack(got)  # type: ignore[arg-type]
            row = scores(actual, forecast, scale)
            for level in config.levels:
                bounds = [collected.intervals[key].get(level_key(level)) or {} for key in keys]
                if all(bounds):
                    row.update(interval_scores(actual, np.array([b["lower"] for b in bounds]),
                                               np.array([b["upper"] for b in bounds]), level,
                                               scale))
            result.per_coin.setdefault(s.coin, {})[model] = row
        by_model = result.per_coin.get(s.coin, {})
        if "naive" in by_model:
            for model, row in by_model.items():
                row["rel_mae"] = relative_mae(by_model, model)
    return result


def printable(name: str) -> str:
    """A coin or series id as a terminal shows it: quoted when it holds a line break, an
    escape sequence or another control character (a table's ids may hold anything)."""
    return name if name.isprintable() else repr(name)


def nothing_to_backtest(skipped: dict[str, str]) -> ConfigError:
    """The error of a backtest that no coin is long enough (or readable) for."""
    named = "; ".join(f"{printable(coin)}: {why}" for coin, why in list(skipped.items())[:3])
    more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
    return ConfigError(f"no coin can be backtested: {named}{more}; lower --horizon, --origins, "
                       "--stride or --min-train, or give longer series")


Loaded = tuple[list[CoinSeries], dict[str, str]]


def backtestable(loader: CryptoLoader | TableLoader, coins: Sequence[str] | None,
                 config: BacktestConfig, none_ok: bool = False) -> Loaded:
    """:func:`load_series`; a ConfigError when no coin is long enough, unless ``none_ok``.
    Read before a cluster starts, it refuses such a backtest without starting one."""
    series, skipped = load_series(loader, coins, config)
    if not series and not none_ok:
        raise nothing_to_backtest(skipped)
    return series, skipped


def run_backtest(manager: CryptoManager, config: BacktestConfig,
                 coins: Sequence[str] | None = None, err: TextIO | None = None,
                 none_long_enough_ok: bool = False,
                 loaded: Loaded | None = None) -> BacktestResult:
    """Backtest ``config.models`` on ``coins`` (default: all) over the manager's cluster; a
    ConfigError when no coin is long enough, unless ``none_long_enough_ok`` (``--model best``
    then falls back to naive). ``loaded``: what :func:`backtestable` read already."""
    config = BacktestConfig(**{**config.__dict__, "models": tuple(parse_models(config.models))})
    err = err or sys.stderr
    started = time.perf_counter()
    series, skipped = loaded or backtestable(manager.loader, coins, config, none_long_enough_ok)
    total = len(series) * len(config.models) * config.origins
    print(f"backtest: {len(series)} coin(s) x {len(config.models)} model(s) x "
          f"{config.origins} origin(s), horizon {config.horizon}: {total} forecast tasks"
          + (f"; {len(skipped)} coin(s) skipped" if skipped else ""), file=err, flush=True)
    # one progress display: the manager's observer where it has one, else a bar of our own
    collected = _Collector(total, err, show=isinstance(manager.observer, NullObserver))
    if total:
        report = manager.dispatch(list(backtest_requests(series, config)), config.timeout,
                                  collected.success, RunReport())
        collected.failures = report.failed  # one reason per (coin, model) is enough to say why
    if collected.bar is not None:
        collected.bar.close()
    result = score(series, config, collected)
    result.skipped = skipped
    result.wall_seconds = time.perf_counter() - started
    return result
