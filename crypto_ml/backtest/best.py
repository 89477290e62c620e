"""``--model best``: each coin forecast with the model its backtest rated best.

The choice (:func:`choose`) reads a backtest written by ``backtest --out``
(:func:`load_saved`) or one run now (:func:`forecast_best`), over the manager's
cluster; ties and coins without a score go to the simpler model. Each coin's choice
is logged (``crypto_ml.backtest.best``, INFO: the command line shows it with ``-v``);
the forecasts are then sent at once, whatever model each coin got.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from crypto_ml.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import DEFAULT_TIMEOUT
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.report import RunReport, format_forecast
from crypto_ml.models import HEAVY, model_names, parse_models
from crypto_ml.models.intervals import DEFAULT_LEVELS

BEST = "best"
#: Every cheap model of the registry (the deep ones cost minutes per coin to backtest).
CANDIDATE_MODELS = tuple(m for m in model_names() if m not in HEAVY)
DEFAULT_CANDIDATES = ",".join(CANDIDATE_MODELS)
#: Origins of the backtest ``--model best`` runs itself, ``horizon`` days apart (so the
#: forecasts it scores do not overlap): two fits per coin and candidate, so the whole run
#: costs at most about 3 plain runs of its candidates. ``--backtest FILE`` chooses from a
#: fuller backtest (``crypto-ml backtest``: 30 origins by default).
BEST_ORIGINS = 2
log = logging.getLogger(__name__)


def load_saved(path: Path) -> BacktestResult:
    """A backtest written by ``backtest --out``, or a ConfigError saying what to do."""
    from crypto_ml.backtest.saved import saved_problem  # lazy: pydantic for this file alone

    try:
        data = json.loads(path.read_text())
        if (problem := saved_problem(data)) is not None:
            raise ValueError(problem)
        result = BacktestResult.from_json(data)
        result.best()  # found now, not halfway through a run
        return result
    except (OSError, ValueError, TypeError, KeyError) as exc:  # TypeError: other config
        why = f"it has no {exc} field" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"cannot read the backtest {path} ({why}); write one with "
                          "`crypto-ml backtest --out DIR` and pass "
                          "DIR/backtest.json") from None


def choose(result: BacktestResult, coins: Sequence[str],
           err: TextIO | None = None) -> dict[str, list[str]]:
    """``{model: coins}``: each coin's lowest-MASE model, logged (and said on ``err`` if
    given); naive if unscored."""
    best = result.best()
    groups: dict[str, list[str]] = {}
    for coin in coins:
        if coin in best:
            model, mase = best[coin]
            tried = ", ".join(result.per_coin[coin])
            why = (f"lowest backtest MASE {mase:.4g} of {tried}" if math.isfinite(mase) else
                   f"no finite backtest MASE among {tried} (a history without day-to-day "
                   "change has no scale); the simplest of them")
        elif coin in result.failed:
            model = "naive"
            why = "no candidate scored in the backtest: " + "; ".join(
                f"{m}: {reason}" for m, reason in result.failed[coin].items())
        else:
            model = "naive"
            why = f"not backtested: {result.skipped.get(coin, 'absent from the backtest')}"
        log.info("best: %s -> %s (%s)", coin, model, why,
                 extra={"fields": {"coin": coin, "model": model}})
        if err is not None:
            print(f"best: {coin} -> {model} ({why})", file=err, flush=True)
        groups.setdefault(model, []).append(coin)
    return groups


def _say_absent(result: BacktestResult, coins: Sequence[str], err: TextIO) -> None:
    """One line for the coins the backtest has nothing on (naive for them), rather than a
    line each under ``-v`` alone: a backtest of other coins picked naive for all silently."""
    absent = [c for c in coins if c not in result.per_coin and c not in result.failed
              and c not in result.skipped]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        print(f"note: {len(absent)} of {len(coins)} coins are not in the backtest ({shown}): "
              "they get naive; backtest them too (crypto-ml backtest --coins ...)", file=err,
              flush=True)


def forecast_best(manager: CryptoManager, coins: Sequence[str] | None, horizon: int,
                  candidates: str | Sequence[str] = CANDIDATE_MODELS,
                  saved: BacktestResult | None = None,
                  max_points: int | None = None, epochs: int | None = None,
                  timeout: float | None = DEFAULT_TIMEOUT,
                  levels: Sequence[float] = DEFAULT_LEVELS,
                  on_result: Callable[[dict[str, Any]], None] | None = None,
                  on_phase: Callable[[str], None] = lambda phase: None,
                  retrain: bool = False) -> RunReport:
    """Forecast each coin with the model its backtest (``saved``, else one of
    ``candidates``, run now: model names as :func:`~crypto_ml.models.parse_models` gives
    them, or a comma list it parses) rated best; ``retrain``: deep models train even where
    the model store holds a fit.

    ``on_result`` gets each forecast as it arrives (default: a ``coin model [[...]]``
    line on the manager's ``out``); ``on_phase`` hears ``"backtest"`` and ``"forecast"``.
    """
    report = manager.last_report = RunReport()  # filled as they arrive: what an interrupt left
    started = time.perf_counter()

    def show(result: dict[str, Any]) -> None:
        print(format_forecast(result["coin"], np.asarray(result["forecast"]), result["model"]),
              file=manager.out, flush=True)

    with manager.session():
        if saved is None:
            on_phase("backtest")
            models = parse_models(candidates) if isinstance(candidates, str) else candidates
            config = BacktestConfig(models=tuple(models), horizon=horizon,
                                    origins=BEST_ORIGINS, stride=horizon, epochs=epochs,
                                    timeout=timeout, max_points=max_points)
            saved = run_backtest(manager, config, coins, err=manager.err,
                                 none_long_enough_ok=True)  # naive then
        elif saved.config.horizon != horizon:
            print(f"note: the backtest scored horizon {saved.config.horizon}, "
                  f"forecasting horizon {horizon}", file=manager.err)
        epochs = epochs if epochs is not None else saved.config.epochs
        max_points = max_points if max_points is not None else saved.config.max_points
        params = {} if epochs is None else {"epochs": epochs}
        names = list(coins) if coins else manager.loader.get_crypto_names()
        _say_absent(saved, names, manager.err)
        requests = []
        for model, group in choose(saved, names).items():
            requests += manager.build_requests([model], group, horizon, max_points, params, report,
                                               retrain=retrain, levels=levels)
        on_phase("forecast")
        manager.dispatch(requests, timeout, on_result or show, report)
    report.wall_seconds = time.perf_counter() - started
    return report
