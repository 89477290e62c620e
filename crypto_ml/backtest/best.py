"""``--model best``: each coin forecast with the model its backtest rated best.

The choice (:func:`choose`) reads a backtest written by ``backtest --out``
(:func:`load_saved`) or one run now (:func:`forecast_best`), over the manager's
cluster; ties and coins without a score go to the simpler model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from crypto_ml.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from crypto_ml.core.errors import ConfigError
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.report import RunReport, format_forecast
from crypto_ml.models import parse_models

BEST = "best"
DEFAULT_CANDIDATES = "naive,linear"


def load_saved(path: Path) -> BacktestResult:
    """A backtest written by ``backtest --out``, or a ConfigError saying what to do."""
    try:
        return BacktestResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the backtest {path} ({exc}); write one with "
                          "`crypto-ml backtest --out DIR` and pass "
                          "DIR/backtest.json") from None


def choose(result: BacktestResult, coins: Sequence[str], err: TextIO) -> dict[str, list[str]]:
    """``{model: coins}``: each coin's lowest-MASE model, said on ``err``; naive if unscored."""
    best = result.best()
    groups: dict[str, list[str]] = {}
    for coin in coins:
        if coin in best:
            model, mase = best[coin]
            why = f"lowest backtest MASE {mase:.4g} of {', '.join(result.per_coin[coin])}"
        else:
            model = "naive"
            why = f"not backtested: {result.skipped.get(coin, 'absent from the backtest')}"
        print(f"best: {coin} -> {model} ({why})", file=err, flush=True)
        groups.setdefault(model, []).append(coin)
    return groups


def forecast_best(manager: CryptoManager, coins: Sequence[str] | None, horizon: int,
                  candidates: str = DEFAULT_CANDIDATES, saved: BacktestResult | None = None,
                  max_points: int | None = None, epochs: int | None = None,
                  timeout: float | None = 3600.0) -> RunReport:
    """Forecast each coin with the model its backtest (``saved``, else run now) rated best."""
    report = RunReport()

    def show(result: dict[str, Any]) -> None:
        print(format_forecast(result["coin"], np.asarray(result["forecast"]), result["model"]),
              file=manager.out, flush=True)

    with manager.session():
        if saved is None:
            config = BacktestConfig(models=tuple(parse_models(candidates)), horizon=horizon,
                                    epochs=epochs, timeout=timeout)
            saved = run_backtest(manager, config, coins, err=manager.err)
        elif saved.config.horizon != horizon:
            print(f"note: the backtest scored horizon {saved.config.horizon}, "
                  f"forecasting horizon {horizon}", file=manager.err)
        epochs = epochs if epochs is not None else saved.config.epochs
        names = list(coins) if coins else manager.loader.get_crypto_names()
        for model, group in choose(saved, names, manager.err).items():
            part = manager.run(model, group, horizon, max_points, epochs, timeout, on_result=show)
            for coin, by_model in part.results.items():
                report.results.setdefault(coin, {}).update(by_model)
            for coin, reasons in part.failed.items():
                report.failed.setdefault(coin, {}).update(reasons)
            report.wall_seconds += part.wall_seconds
    manager.last_report = report
    return report
