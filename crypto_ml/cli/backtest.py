"""``crypto-ml backtest``: compare models walk-forward on the data; tables, JSON, CSV and PNG.

stdout: the tables; stderr as every subcommand (progress and notices, ``-v``/``-q``,
:mod:`crypto_ml.cli.terminal`). Exit codes as every subcommand (:mod:`crypto_ml.cli`);
1 if any (coin, model) failed, 2 (before any work) for an unknown model or coin.
"""

from __future__ import annotations

import argparse
from datetime import date
from typing import TYPE_CHECKING, Any

from crypto_ml.backtest.engine import BacktestConfig, backtestable, run_backtest
from crypto_ml.backtest.report import (
    refused_as_unwritable,
    summary,
    window_table,
    write_all,
)
from crypto_ml.cli import options as opt
from crypto_ml.cli.helptext import help_texts
from crypto_ml.cli.requests import BacktestRequest, backtest_request
from crypto_ml.cli.table_options import add_input_options
from crypto_ml.cli.terminal import console, console_writer, make_progress, seconds_since_start
from crypto_ml.core.progress import Progress
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.manager import CLI_HINT, CryptoManager
from crypto_ml.models import model_names
from crypto_ml.models.intervals import DEFAULT_LEVELS

if TYPE_CHECKING:
    from crypto_ml.data.table_loader import TableLoader


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
    return [opt.max_points(part) for part in text.split(",") if part.strip()]


def window_name(window: int | None) -> str:
    """How a window is named in tables and folders: ``200``, ``all`` or ``default``."""
    return "default" if window is None else ("all" if window == 0 else str(window))


def add_parser(sub: Any) -> None:
    """The ``backtest`` subcommand's options (broker, data and worker options as send-tasks)."""
    bt = sub.add_parser("backtest", help="walk-forward backtest of models against what happened",
                        **help_texts("backtest"))
    default = BacktestConfig()
    others = [m for m in model_names() if m not in default.models]
    bt.add_argument("--model", default=",".join(default.models), type=opt.model_names_option,
                    help=f"comma list of models to compare (default: {','.join(default.models)};"
                    f" also {', '.join(others)})")
    bt.add_argument("--coins", help="comma list of coin ids (default: every coin)")
    bt.add_argument("--horizon", type=opt.positive_int,
                    help=f"days forecast at each origin ({default.horizon})")
    bt.add_argument("--origins", type=opt.positive_int,
                    help=f"forecast origins per coin ({default.origins})")
    bt.add_argument("--stride", type=opt.positive_int,
                    help=f"days between origins ({default.stride})")
    bt.add_argument("--min-train", type=opt.positive_int,
                    help=f"closes the oldest origin must have at least ({default.min_train})")
    bt.add_argument("--until", type=_iso_date, help="ignore data after this ISO date "
                    "(a tuning window that the default evaluation window never sees)")
    bt.add_argument("--max-points", type=_windows, metavar="N|all[,...]",
                    help="fit on the newest N closes before each origin, or all (default: each "
                    "model's own, as send-tasks); a comma list backtests each window and "
                    "compares them")
    bt.add_argument("--levels", type=opt.levels, default=DEFAULT_LEVELS, metavar="80,95",
                    help="prediction interval levels to score (default 80,95)")
    bt.add_argument("--epochs", type=opt.positive_int, help="training epochs of deep models")
    bt.add_argument("--seed", type=int, help=f"seed of the deep models ({default.seed})")
    bt.add_argument("--param", action="append", type=_option, default=[], metavar="NAME=INT",
                    help="another model option, e.g. members=1 (repeatable; models that do "
                    "not take it ignore it; one that no model given takes is an error)")
    bt.add_argument("--out", type=opt.path_option,
                    help="folder for backtest.json, backtest.csv and backtest.png")
    opt.add_cluster_options(bt)
    opt.add_log_options(bt)
    add_input_options(bt, "a long table of series (held in memory: thousands, not millions)")
    bt.set_defaults(run=backtest_main, interrupted="local cluster stopped")


def backtest_main(args: argparse.Namespace) -> int:
    """``crypto-ml backtest``: the settings and data as send-tasks reads them."""
    request = backtest_request(args)
    loader: CryptoLoader | TableLoader
    coins = list(request.coins) if request.coins else None
    if request.table is not None:  # a long table instead of the folder of coin files (lazy:
        from crypto_ml.cli.table import table_loader  # pyarrow only for tables)

        loader, coins = table_loader(request.table, coins, request.until), None  # just --coins
    else:
        assert request.loader is not None
        loader = request.loader
    progress = make_progress(request.stderr)
    manager = CryptoManager(loader=loader, settings=request.settings, err=console_writer(),
                            hint=CLI_HINT, observer=progress)
    opt.stop_on_signals(manager)  # Ctrl-C stops a backtest as surely as a send-tasks run
    try:
        return backtest_command(request, manager, coins)
    finally:
        progress.close()


def backtest_command(request: BacktestRequest, manager: CryptoManager,
                     coins: list[str] | None) -> int:
    """Run the backtest, print the tables, write the files; 1 if any (coin, model) failed."""
    configs = {window_name(window): BacktestConfig(
        models=request.models, timeout=request.timeout, options=request.options,
        max_points=window, levels=request.levels, **request.given) for window in request.windows}
    # the same coins for every window; none long enough is refused before a cluster starts
    loaded = backtestable(manager.loader, coins, next(iter(configs.values())))
    results = {}
    with manager.session():
        for name, config in configs.items():
            if len(configs) > 1 and isinstance(manager.observer, Progress):
                manager.observer.new_phase(f"window {name}")  # counts afresh
            results[name] = run_backtest(manager, config, coins, manager.err, loaded=loaded)
    if isinstance(manager.observer, Progress):
        manager.observer.close()  # the bar goes before the tables
    for name, result in results.items():
        result.wall_seconds = seconds_since_start()  # the whole run's, as send-tasks' summary
        if len(request.windows) > 1:
            print(f"== window: {name} ==", file=manager.out)
        print(summary(result), file=manager.out, flush=True)
    table = window_table(results) if len(results) > 1 else None
    if table is not None:
        print(f"\nwindows compared (mean over coins; best window per model by MASE):\n{table}",
              file=manager.out, flush=True)
    if request.out:  # every table printed first: a folder that refuses the files loses none
        for name, result in results.items():
            folder = request.out if table is None else request.out / f"window-{name}"
            for path in write_all(result, folder):
                console.info(f"wrote {path}")
        if table is not None:
            with refused_as_unwritable(request.out):
                (request.out / "windows.txt").write_text(table + "\n")
    return 1 if any(r.failed for r in results.values()) else 0
