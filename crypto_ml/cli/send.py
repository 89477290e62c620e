"""``crypto-ml send-tasks`` (also ``python -m crypto_ml.manager send-tasks``): forecast and collect.

Exit codes: 0 every forecast arrived; 1 some failed (the rest are still printed
and written, each failure listed with its reason); 2 configuration error (unknown
model, missing data, unreachable broker), reported in one line; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO, cast

from crypto_ml.backtest.best import BEST, DEFAULT_CANDIDATES, forecast_best, load_saved
from crypto_ml.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    add_cluster_options,
    add_log_options,
    checked_inputs,
    coin_list,
    positive_int,
    stop_on_signals,
)
from crypto_ml.core.errors import CryptoMLError
from crypto_ml.core.logs import LogWriter
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.dispatch.report import RunReport
from crypto_ml.dispatch.summary import summarize, summary_lines
from crypto_ml.ops.plot import plot_forecasts
from crypto_ml.ops.progress import Progress


def add_parser(sub: Any) -> None:
    """The ``send-tasks`` subcommand."""
    send = sub.add_parser("send-tasks", help="forecast every coin (or --coins) with --model")
    send.add_argument("--model", default="linear",
                      help="naive, linear, lstm, gru, lstm_ret, gru_ret, a comma list, or best: "
                      "each coin's lowest backtest MASE (default: linear)")
    send.add_argument("--backtest", type=Path,
                      help="with --model best: a backtest.json to choose from (else run one)")
    send.add_argument("--candidates", help="with --model best and no --backtest: models to "
                      "backtest and choose from (default: naive,linear)")
    send.add_argument("--coins", help="comma list of coin ids (default: every coin)")
    send.add_argument("--horizon", type=positive_int, default=10, help="days to forecast (10)")
    send.add_argument("--max-points", type=positive_int, help="fit on the newest N closes only")
    send.add_argument("--epochs", type=positive_int,
                      help="training epochs of deep models (default: each model's own)")
    send.add_argument("--output", type=Path, help="write results and failures to this JSON file")
    add_cluster_options(send)
    send.add_argument("--flower", action="store_true",
                      help="start Flower with the embedded cluster (port CRYPTO_ML_FLOWER_PORT)")
    send.add_argument("--plot", type=Path, metavar="FILE.png",
                      help="draw each coin's recent closes and forecast(s) into this PNG")
    add_log_options(send, "info")
    send.set_defaults(run=send_tasks, interrupted="queued tasks revoked, local cluster stopped")


def send_tasks(args: argparse.Namespace) -> int:
    """Forecast, print one line per forecast, then the summary (and --output, --plot)."""
    settings, loader = checked_inputs(args, check_models=args.model != BEST)
    coins = coin_list(args.coins)
    json_logs = settings.log_format == "json"
    err = cast(TextIO, LogWriter(logging.getLogger("crypto_ml.manager"))) if json_logs \
        else sys.stderr
    progress = Progress(sys.stderr, tty=False if json_logs else None)
    manager = CryptoManager(loader=loader, settings=settings, err=err, observer=progress,
                            cluster_options=flower_option(args, settings, err))
    stop_on_signals(manager)
    try:
        report = send_best(args, manager) if args.model == BEST else manager.run(
            args.model, coins, args.horizon, args.max_points, args.epochs, args.timeout)
    finally:
        progress.close()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    n_failed = sum(len(m) for m in report.failed.values())
    n_ok = sum(len(m) for m in report.results.values())
    print(f"{n_ok} forecast(s) arrived, {n_failed} failed, in {report.wall_seconds:.1f} s",
          file=err)
    show_summary(report, json_logs, err)
    plotted = draw_plot(args.plot, report, loader, err) if args.plot else True
    return EXIT_OK if report.ok and plotted else EXIT_FAILED


def flower_option(args: argparse.Namespace, settings: Settings, err: TextIO) -> dict[str, Any]:
    """``--flower``: the embedded cluster starts Flower; with a broker, say how to run it."""
    if not args.flower:
        return {}
    if settings.broker_url:
        print("--flower starts Flower for the embedded cluster only; for your broker run "
              "`crypto-ml flower` (see the README's monitoring section)", file=err)
        return {}
    return {"flower": settings}


def show_summary(report: RunReport, json_logs: bool, err: TextIO) -> None:
    data = summarize(report)
    if json_logs:
        logging.getLogger("crypto_ml.summary").info("summary", extra={"fields": data})
    else:
        print("\n".join(summary_lines(data)), file=err, flush=True)


def draw_plot(path: Path, report: RunReport, loader: CryptoLoader, err: TextIO) -> bool:
    try:
        info = plot_forecasts(report.results, {c: loader.get_df(c) for c in report.results}, path)
    except (OSError, ValueError, CryptoMLError) as exc:
        print(f"crypto-ml: plot not written: {exc}", file=err)
        return False
    more = f"; left out {len(info.left_out)} coin(s): pick with --coins" if info.left_out else ""
    print(f"plot: {path} ({len(info.panels)} panel(s), {info.size[0]}x{info.size[1]} px){more}",
          file=err)
    return True


def send_best(args: argparse.Namespace, manager: CryptoManager) -> RunReport:
    """``send-tasks --model best``: the backtest given by ``--backtest``, else one run now."""
    saved = load_saved(args.backtest) if args.backtest else None
    return forecast_best(manager, coin_list(args.coins), args.horizon,
                         args.candidates or DEFAULT_CANDIDATES, saved, args.max_points,
                         args.epochs, args.timeout)
