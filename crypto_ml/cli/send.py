"""``crypto-ml send-tasks`` (also ``python -m crypto_ml.manager send-tasks``): forecast and collect.

stdout: one line per forecast, ``coin model [[f1 f2 ...]]`` (or ``--format json-lines``);
stderr: progress and the summary (``-v`` a line per task, ``-q`` errors only), see
:mod:`crypto_ml.cli.terminal`. Exit codes: 0 every forecast arrived; 1 some failed (the
rest are still printed and written, each failure listed with its reason); 2 an argument
or setting is wrong (unknown model or coin, missing data or file, unreachable broker),
said in one line before any cluster starts; 130 interrupted (``--output`` then holds the
forecasts that had arrived, and each other one failed as interrupted).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from crypto_ml.backtest.best import BEST, DEFAULT_CANDIDATES, forecast_best
from crypto_ml.cli import options as opt
from crypto_ml.cli.helptext import help_texts
from crypto_ml.cli.output import write_results
from crypto_ml.cli.requests import SendRequest, send_request
from crypto_ml.cli.table_options import add_table_options
from crypto_ml.cli.terminal import (
    FORMATS,
    ForecastWriter,
    console,
    console_writer,
    flower_option,
    make_progress,
    seconds_since_start,
)
from crypto_ml.core.errors import CryptoMLError
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.manager import CLI_HINT, CryptoManager
from crypto_ml.dispatch.report import INTERRUPTED, RunReport
from crypto_ml.dispatch.summary import summarize, summary_lines
from crypto_ml.models import DEFAULT_HORIZON, DEFAULT_MODEL, model_names
from crypto_ml.models.intervals import DEFAULT_LEVELS
from crypto_ml.ops.plot import plot_forecasts


def add_parser(sub: Any) -> None:
    """The ``send-tasks`` subcommand."""
    send = sub.add_parser("send-tasks", help="forecast every coin (or --coins) with --model",
                          **help_texts("send-tasks"))
    send.add_argument("--model", default=DEFAULT_MODEL, type=opt.model_names_option,
                      help=f"{', '.join(model_names())}, a comma list (any case), or best: "
                      f"each coin's lowest backtest MASE (default: {DEFAULT_MODEL})")
    send.add_argument("--backtest", type=opt.path_option,
                      help="with --model best: a backtest.json to choose from (else run one)")
    send.add_argument("--candidates", type=opt.model_names_option,
                      help="with --model best and no --backtest: models to "
                      f"backtest and choose from (default: {DEFAULT_CANDIDATES})")
    send.add_argument("--coins", help="comma list of coin ids, any case (default: every coin)")
    send.add_argument("--horizon", type=opt.positive_int, default=DEFAULT_HORIZON,
                      help=f"days to forecast ({DEFAULT_HORIZON})")
    send.add_argument("--max-points", type=opt.max_points, metavar="N|all",
                      help="fit on the newest N closes, or all of them (default: each model's "
                      "own: 200 closes; all for gru, lstm_ret and gru_ret)")
    send.add_argument("--levels", type=opt.levels, default=DEFAULT_LEVELS, metavar="80,95",
                      help="prediction interval levels in percent (default 80,95; none: no "
                      "intervals); written with --output and shaded by --plot")
    send.add_argument("--epochs", type=opt.positive_int,
                      help="training epochs of deep models (default: each model's own)")
    send.add_argument("--retrain", action="store_true",
                      help="train deep models even if the model store holds a fit on this data")
    send.add_argument("--format", choices=FORMATS, default="text",
                      help="stdout: `coin model [[f1 f2 ...]]` lines (text, the default) or one "
                      "JSON object per forecast (json-lines)")
    send.add_argument("--output", type=opt.path_option,
                      help="write results and failures to this JSON file (not *.csv or *.parquet: "
                      "names the data folder reads as prices)")
    opt.add_cluster_options(send)
    send.add_argument("--flower", action="store_true",
                      help="start Flower with the embedded cluster (port CRYPTO_ML_FLOWER_PORT)")
    send.add_argument("--plot", type=opt.path_option, metavar="FILE.png",
                      help="draw each coin's recent closes and forecast(s) into this PNG, "
                      "in the order of --coins")
    opt.add_log_options(send)
    add_table_options(send)
    send.set_defaults(run=send_tasks, interrupted="local cluster stopped")


def send_tasks(args: argparse.Namespace) -> int:
    """Check the arguments (:func:`~crypto_ml.cli.requests.send_request`), then run: with
    --input a table run (:mod:`crypto_ml.cli.table`), else :func:`send_folder`."""
    request = send_request(args)
    if request.table is not None:  # lazy: pyarrow and pandas only for table runs
        from crypto_ml.cli.table import send_table

        return send_table(request, request.table)
    return send_folder(request)


def send_folder(request: SendRequest) -> int:
    """Forecast, print one line per forecast, then the summary (and --output, --plot)."""
    assert request.loader is not None
    settings, wanted = request.settings, request.forecasts
    progress = make_progress(request.stderr)
    manager = CryptoManager(loader=request.loader, settings=settings, err=console_writer(),
                            hint=CLI_HINT, observer=progress,
                            cluster_options=flower_option(request.flower, settings))
    manager.say_failures = False  # the summary lists them
    opt.stop_on_signals(manager)
    show = ForecastWriter(sys.stdout, request.format)
    coins = list(request.coins) if request.coins is not None else None
    try:
        if request.best is not None:
            report = forecast_best(manager, coins, wanted.horizon,
                                   request.best.candidates, request.best.saved,
                                   wanted.max_points, wanted.epochs, wanted.timeout,
                                   wanted.levels, on_result=show, on_phase=progress.new_phase,
                                   retrain=request.retrain)
        else:
            report = manager.run(list(wanted.models), coins, wanted.horizon, wanted.max_points,
                                 wanted.epochs, wanted.timeout, on_result=show,
                                 retrain=request.retrain, levels=wanted.levels)
    except KeyboardInterrupt:
        progress.close()
        if request.output is not None:
            write_interrupted(request.output, manager.last_report or RunReport(),
                              asked_of(request, coins))
        if request.plot is not None:
            console.warning(f"crypto-ml: --plot {request.plot} not drawn: the run was "
                            "interrupted")
        raise
    finally:
        progress.close()
    written = write_results(request.output, report.to_json()) if request.output else True
    show_summary(report, seconds_since_start(), settings.log_format == "json")
    plotted = (draw_plot(request.plot, report, request.loader,
                         coins or request.loader.get_crypto_names()) if request.plot else True)
    return opt.EXIT_OK if report.ok and plotted and written else opt.EXIT_FAILED


def asked_of(request: SendRequest, coins: list[str] | None) -> list[tuple[str, str]]:
    """Every (coin, model) the run asked for; with ``--model best``, (coin, ``best``): its
    model is chosen by the backtest."""
    assert request.loader is not None
    try:
        names = coins or request.loader.get_crypto_names()
    except (CryptoMLError, OSError):  # the folder changed under the run: what it had read
        names = []
    return [(coin, model) for coin in names for model in request.forecasts.models or (BEST,)]


def write_interrupted(path: Path, report: RunReport, asked: list[tuple[str, str]]) -> None:
    """``--output`` of an interrupted run, said in one line: the forecasts that had arrived,
    and each other one ``asked`` failed as interrupted
    (:data:`~crypto_ml.dispatch.report.INTERRUPTED`); with ``--model best``, a coin that has
    a forecast or a failure is answered."""
    answered = report.results.keys() | report.failed.keys()
    report.fail_rest([(c, m) for c, m in asked if m != BEST or c not in answered], INTERRUPTED)
    arrived = sum(len(by_model) for by_model in report.results.values())
    failed = sum(len(by_model) for by_model in report.failed.values())
    if write_results(path, report.to_json()):
        console.warning(f"crypto-ml: wrote {path}: {arrived} forecast(s) that arrived before "
                        f"the interrupt, {failed} failed")


def show_summary(report: RunReport, wall_seconds: float, json_logs: bool) -> None:
    """The summary on the console (JSON fields with --log-format json); with -q, the
    failures alone, as warnings."""
    data = summarize(report, wall_seconds)
    if json_logs:
        logging.getLogger("crypto_ml.summary").info("summary", extra={"fields": data})
    else:
        for line in summary_lines(data):
            logging.getLogger("crypto_ml.summary").info(line)
    if not logging.getLogger("crypto_ml.summary").isEnabledFor(logging.INFO):
        for coin, reasons in data["coins_failed"].items():
            for model, reason in reasons.items():
                console.warning(f"failed: {coin} {model}: {reason}")


def draw_plot(path: Path, report: RunReport, loader: CryptoLoader, order: list[str]) -> bool:
    """The ``--plot`` PNG, one panel per coin in ``order`` (the order of ``--coins``)."""
    results = {c: report.results[c] for c in order if c in report.results}
    try:
        info = plot_forecasts(results, {c: loader.get_df(c) for c in results}, path)
    except (OSError, ValueError, CryptoMLError) as exc:
        console.warning(f"crypto-ml: plot not written: {exc}")
        return False
    more = f"; left out {len(info.left_out)} coin(s): pick with --coins" if info.left_out else ""
    console.info(f"plot: {path} ({len(info.panels)} panel(s): {', '.join(info.panels)}; "
                 f"{info.size[0]}x{info.size[1]} px){more}")
    return True
