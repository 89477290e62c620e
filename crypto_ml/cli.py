"""Command line: ``python -m crypto_ml.manager send-tasks`` (also the ``crypto-ml`` script).

Exit codes: 0 every forecast arrived; 1 some failed (the rest are still printed
and written, each failure listed with its reason); 2 configuration error (unknown
model, missing data, unreachable broker), reported in one line; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from crypto_ml.backtest_cli import BEST, add_backtest_parser, backtest_main, send_best
from crypto_ml.cli_args import add_cluster_options, levels, max_points
from crypto_ml.cli_args import positive_int as _positive
from crypto_ml.errors import ConfigError, CryptoMLError
from crypto_ml.logging_setup import LogWriter
from crypto_ml.logging_setup import configure as configure_logging
from crypto_ml.settings import LOG_FORMATS, Settings

if TYPE_CHECKING:
    from datetime import date

    from crypto_ml.data_loader import CryptoLoader
    from crypto_ml.manager import CryptoManager, RunReport

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crypto_ml.manager",
        description="Dispatch price forecasts to Celery workers and collect them.")
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send-tasks", help="forecast every coin (or --coins) with --model")
    send.add_argument("--model", default="linear",
                      help="naive, linear, ets, theta, arima, lstm, gru, lstm_ret, gru_ret, a comma "
                      "list, or best: "
                      "each coin's lowest backtest MASE (default: linear)")
    send.add_argument("--backtest", type=Path,
                      help="with --model best: a backtest.json to choose from (else run one)")
    send.add_argument("--candidates", help="with --model best and no --backtest: models to "
                      "backtest and choose from (default: naive,linear,ets,theta,arima)")
    send.add_argument("--coins", help="comma list of coin ids (default: every coin)")
    send.add_argument("--horizon", type=_positive, default=10, help="days to forecast (10)")
    send.add_argument("--max-points", type=max_points, metavar="N|all",
                      help="fit on the newest N closes, or all of them (default: each model's "
                      "own: 200 closes, the whole history for the deep models)")
    send.add_argument("--levels", type=levels, default=(80.0, 95.0), metavar="80,95",
                      help="prediction interval levels in percent (default 80,95; none: no "
                      "intervals); written with --output and shaded by --plot")
    send.add_argument("--epochs", type=_positive,
                      help="training epochs of deep models (default: each model's own)")
    send.add_argument("--output", type=Path, help="write results and failures to this JSON file")
    add_cluster_options(send)
    send.add_argument("--flower", action="store_true",
                      help="start Flower with the embedded cluster (port CRYPTO_ML_FLOWER_PORT)")
    send.add_argument("--plot", type=Path, metavar="FILE.png",
                      help="draw each coin's recent closes and forecast(s) into this PNG")
    send.add_argument("--log-format", choices=LOG_FORMATS,
                      help="log lines as text or json (CRYPTO_ML_LOG_FORMAT, default text)")
    send.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                      help="info shows one line per task and progress lines (default)")
    add_backtest_parser(sub)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's overrides."""
    settings = Settings.from_env().with_broker(args.broker)
    changes = {}
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    if args.workers is not None:
        changes["workers"] = args.workers
    if getattr(args, "log_format", None):
        changes["log_format"] = args.log_format
    return dataclasses.replace(settings, **changes)


def checked_inputs(args: argparse.Namespace, check_models: bool = True,
                   to_date: date | None = None) -> tuple[Settings, CryptoLoader]:
    """Settings and loader for a run, failing (exit 2) at once on an unknown model or no data."""
    from crypto_ml.data_loader import CryptoLoader
    from crypto_ml.manager import parse_models

    settings = settings_from(args)
    if check_models:
        parse_models(args.model)
    loader = CryptoLoader(settings.data_dir, to_date=to_date)
    if not args.coins:
        loader.get_crypto_names()
    return settings, loader


def send_tasks(args: argparse.Namespace) -> int:
    from crypto_ml.manager import CryptoManager
    from crypto_ml.progress import Progress

    settings, loader = checked_inputs(args, check_models=args.model != BEST)
    coins = [c.strip() for c in args.coins.split(",") if c.strip()] if args.coins else None
    json_logs = settings.log_format == "json"
    err = cast(TextIO, LogWriter(logging.getLogger("crypto_ml.manager"))) if json_logs \
        else sys.stderr
    progress = Progress(sys.stderr, tty=False if json_logs else None)
    manager = CryptoManager(loader=loader, settings=settings, err=err, observer=progress,
                            cluster_options=flower_option(args, settings, err))
    stop_on_signals(manager)
    try:
        report = send_best(args, manager) if args.model == BEST else manager.run(
            args.model, coins, args.horizon, args.max_points, args.epochs, args.timeout,
            levels=args.levels)
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
              "`python -m crypto_ml.flower` (see the README's monitoring section)", file=err)
        return {}
    return {"flower": settings}


def show_summary(report: RunReport, json_logs: bool, err: TextIO) -> None:
    from crypto_ml.summary import summarize, summary_lines

    data = summarize(report)
    if json_logs:
        logging.getLogger("crypto_ml.summary").info("summary", extra={"fields": data})
    else:
        print("\n".join(summary_lines(data)), file=err, flush=True)


def draw_plot(path: Path, report: RunReport, loader: CryptoLoader, err: TextIO) -> bool:
    from crypto_ml.plot import plot_forecasts

    try:
        info = plot_forecasts(report, {c: loader.get_df(c) for c in report.results}, path)
    except (OSError, ValueError, CryptoMLError) as exc:
        print(f"crypto-ml: plot not written: {exc}", file=err)
        return False
    more = f"; left out {len(info.left_out)} coin(s): pick with --coins" if info.left_out else ""
    print(f"plot: {path} ({len(info.panels)} panel(s), {info.size[0]}x{info.size[1]} px){more}",
          file=err)
    return True


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals(manager: CryptoManager) -> None:
    """Ctrl-C and SIGTERM stop the run: at once, and by flag should the exception be lost."""

    def handler(signum: int, frame: object) -> None:
        manager.request_stop()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        log_format = args.log_format or Settings.from_env().log_format
        configure_logging(log_format, args.log_level.upper(), sys.stderr)
        return backtest_main(args) if args.command == "backtest" else send_tasks(args)
    except ConfigError as exc:
        print(f"crypto-ml: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CryptoMLError as exc:
        print(f"crypto-ml: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("crypto-ml: interrupted; queued tasks revoked, local cluster stopped",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
