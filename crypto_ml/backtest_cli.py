"""The ``backtest`` subcommand and ``send-tasks --model best``, behind :mod:`crypto_ml.cli`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from crypto_ml.cli_args import add_cluster_options, levels, max_points
from crypto_ml.cli_args import positive_int as _positive
from crypto_ml.errors import ConfigError

if TYPE_CHECKING:  # the heavy modules load only when a command runs
    from crypto_ml.backtest import BacktestResult
    from crypto_ml.manager import CryptoManager, RunReport

BEST = "best"
DEFAULT_CANDIDATES = "naive,linear,ets,theta,arima"


def _iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2017-08-13, got {text!r}") from None


def _option(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=INTEGER, got {text!r}") from None


def _windows(text: str) -> list[int]:
    return [max_points(part) for part in text.split(",") if part.strip()]


def window_name(window: int | None) -> str:
    """How a window is named in tables and folders: ``200``, ``all`` or ``default``."""
    return "default" if window is None else ("all" if window == 0 else str(window))


def add_backtest_parser(sub: Any) -> None:
    """The ``backtest`` subcommand's options (broker, data and worker options as send-tasks)."""
    bt = sub.add_parser("backtest", help="walk-forward backtest of models against what happened")
    bt.add_argument("--model", default="naive,linear",
                    help="comma list of models to compare (default: naive,linear)")
    bt.add_argument("--coins", help="comma list of coin ids (default: every coin)")
    bt.add_argument("--horizon", type=_positive, help="days forecast at each origin (10)")
    bt.add_argument("--origins", type=_positive, help="forecast origins per coin (30)")
    bt.add_argument("--stride", type=_positive, help="days between origins (1)")
    bt.add_argument("--min-train", type=_positive,
                    help="closes the oldest origin must have at least (60)")
    bt.add_argument("--until", type=_iso_date, help="ignore data after this ISO date "
                    "(a tuning window that the default evaluation window never sees)")
    bt.add_argument("--max-points", type=_windows, metavar="N|all[,...]",
                    help="fit on the newest N closes before each origin, or all (default: each "
                    "model's own, as send-tasks); a comma list backtests each window and "
                    "compares them")
    bt.add_argument("--levels", type=levels, default=(80.0, 95.0), metavar="80,95",
                    help="prediction interval levels to score (default 80,95)")
    bt.add_argument("--epochs", type=_positive, help="training epochs of deep models")
    bt.add_argument("--seed", type=int, help="seed of the deep models (42)")
    bt.add_argument("--param", action="append", type=_option, default=[], metavar="NAME=INT",
                    help="another model option, e.g. members=1 (repeatable; models that do "
                    "not take it ignore it)")
    bt.add_argument("--out", type=Path,
                    help="folder for backtest.json, backtest.csv and backtest.png")
    add_cluster_options(bt)
    bt.add_argument("--log-format", choices=("text", "json"),
                    help="log lines as text or json (CRYPTO_ML_LOG_FORMAT, default text)")
    bt.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"),
                    help="warning (default) keeps the terminal to the tables")


def backtest_main(args: argparse.Namespace) -> int:
    """``python -m crypto_ml.manager backtest``: the settings and data as send-tasks reads them."""
    from crypto_ml.cli import checked_inputs, stop_on_signals
    from crypto_ml.manager import CryptoManager

    settings, loader = checked_inputs(args, to_date=args.until)
    manager = CryptoManager(loader=loader, settings=settings)
    stop_on_signals(manager)  # Ctrl-C stops a backtest as surely as a send-tasks run
    return backtest_command(args, manager)


def _coins(spec: str | None) -> list[str] | None:
    return [c.strip() for c in spec.split(",") if c.strip()] if spec else None


def backtest_command(args: argparse.Namespace, manager: CryptoManager) -> int:
    """Run the backtest, print the tables, write the files; 1 if any (coin, model) failed."""
    from crypto_ml.backtest import BacktestConfig, run_backtest
    from crypto_ml.backtest_report import summary, window_table, write_all
    from crypto_ml.manager import parse_models

    given = {"horizon": args.horizon, "origins": args.origins, "stride": args.stride,
             "min_train": args.min_train, "epochs": args.epochs, "seed": args.seed}
    windows: list[int | None] = list(args.max_points or [None])
    results = {}
    with manager.session():
        for window in windows:
            config = BacktestConfig(models=tuple(parse_models(args.model)), timeout=args.timeout,
                                    options=dict(args.param), max_points=window,
                                    levels=tuple(args.levels),
                                    **{k: v for k, v in given.items() if v is not None})
            result = run_backtest(manager, config, _coins(args.coins), err=manager.err)
            results[window_name(window)] = result
            if len(windows) > 1:
                print(f"== window: {window_name(window)} ==", file=manager.out)
            print(summary(result), file=manager.out, flush=True)
            if args.out:
                folder = args.out if len(windows) == 1 else args.out / f"window-{window_name(window)}"
                for path in write_all(result, folder):
                    print(f"wrote {path}", file=manager.err)
    if len(windows) > 1:
        table = window_table(results)
        print(f"\nwindows compared (mean over coins; best window per model by MASE):\n{table}",
              file=manager.out, flush=True)
        if args.out:
            (args.out / "windows.txt").write_text(table + "\n")
    return 1 if any(r.failed for r in results.values()) else 0


def load_saved(path: Path) -> BacktestResult:
    """A backtest written by ``backtest --out``, or a ConfigError saying what to do."""
    from crypto_ml.backtest import BacktestResult

    try:
        return BacktestResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the backtest {path} ({exc}); write one with "
                          "`python -m crypto_ml.manager backtest --out DIR` and pass "
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
                  timeout: float | None = 3600.0,
                  levels: Sequence[float] = (80.0, 95.0)) -> RunReport:
    """Forecast each coin with the model its backtest (``saved``, else run now) rated best."""
    import numpy as np

    from crypto_ml.backtest import BacktestConfig, run_backtest
    from crypto_ml.manager import RunReport, format_forecast, parse_models

    report = RunReport()

    def show(result: dict[str, Any]) -> None:
        print(format_forecast(result["coin"], np.asarray(result["forecast"]), result["model"]),
              file=manager.out, flush=True)

    with manager.session():
        if saved is None:
            config = BacktestConfig(models=tuple(parse_models(candidates)), horizon=horizon,
                                    epochs=epochs, timeout=timeout, max_points=max_points)
            saved = run_backtest(manager, config, coins, err=manager.err)
        elif saved.config.horizon != horizon:
            print(f"note: the backtest scored horizon {saved.config.horizon}, "
                  f"forecasting horizon {horizon}", file=manager.err)
        epochs = epochs if epochs is not None else saved.config.epochs
        max_points = max_points if max_points is not None else saved.config.max_points
        names = list(coins) if coins else manager.loader.get_crypto_names()
        for model, group in choose(saved, names, manager.err).items():
            part = manager.run(model, group, horizon, max_points, epochs, timeout, on_result=show,
                               levels=levels)
            for coin, by_model in part.results.items():
                report.results.setdefault(coin, {}).update(by_model)
            for coin, reasons in part.failed.items():
                report.failed.setdefault(coin, {}).update(reasons)
            report.wall_seconds += part.wall_seconds
    manager.last_report = report
    return report


def send_best(args: argparse.Namespace, manager: CryptoManager) -> RunReport:
    """``send-tasks --model best``: the backtest given by ``--backtest``, else one run now."""
    saved = load_saved(args.backtest) if args.backtest else None
    return forecast_best(manager, _coins(args.coins), args.horizon,
                         args.candidates or DEFAULT_CANDIDATES, saved, args.max_points,
                         args.epochs, args.timeout, args.levels)
