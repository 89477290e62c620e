"""A command's arguments, checked once and typed: what a run asks for.

The argparse namespace is read here, at the edge, and nowhere after:
:func:`send_request` and :func:`backtest_request` check every argument that can be
checked without a cluster (models, coins, windows, files; a ConfigError, exit 2 in one
line) and return frozen requests that the commands run from. Model names are parsed
once, here; coins are resolved to ids once, here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from crypto_ml.backtest.best import BEST, DEFAULT_CANDIDATES, load_saved
from crypto_ml.backtest.engine import BacktestResult
from crypto_ml.cli.checks import check_max_points, check_readable, checked_models
from crypto_ml.cli.options import (
    check_writable,
    coin_list,
    known_coins,
    resolve_coins,
    settings_from,
)
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader


@dataclass(frozen=True)
class Stderr:
    """What a command shows on stderr: ``quiet`` (errors only) and the log format."""

    quiet: bool
    log_format: str


@dataclass(frozen=True)
class Forecasts:
    """What each series gets: the models (parsed) and the forecast they make."""

    models: tuple[str, ...]
    horizon: int
    max_points: int | None
    levels: tuple[float, ...]
    epochs: int | None
    timeout: float


@dataclass(frozen=True)
class Best:
    """``--model best``: the candidates (parsed), or a saved backtest to choose from."""

    candidates: tuple[str, ...]
    saved: BacktestResult | None


@dataclass(frozen=True)
class TableRequest:
    """``--input TABLE``: the table, its column names and how the run is sized."""

    path: Path
    columns: tuple[str, str, str]  # id, time, value
    overwrite: bool
    in_flight: int | None
    chunk_series: int | None


@dataclass(frozen=True)
class SendRequest:
    """A checked ``send-tasks`` run: a folder run (``loader``) or a table run (``table``)."""

    settings: Settings
    stderr: Stderr
    forecasts: Forecasts
    coins: tuple[str, ...] | None  # None: every series
    output: Path | None
    table: TableRequest | None = None
    loader: CryptoLoader | None = None
    best: Best | None = None
    retrain: bool = False
    format: str = "text"
    plot: Path | None = None
    flower: bool = False


@dataclass(frozen=True)
class BacktestRequest:
    """A checked ``backtest`` run; ``given`` holds the configuration the user set."""

    settings: Settings
    stderr: Stderr
    models: tuple[str, ...]
    coins: tuple[str, ...] | None
    windows: tuple[int | None, ...]
    levels: tuple[float, ...]
    options: dict[str, int]
    timeout: float
    out: Path | None
    given: dict[str, int] = field(default_factory=dict)
    table: TableRequest | None = None
    loader: CryptoLoader | None = None


def stderr_of(args: argparse.Namespace, settings: Settings) -> Stderr:
    return Stderr(bool(getattr(args, "quiet", False)), settings.log_format)


def table_of(args: argparse.Namespace) -> TableRequest | None:
    if getattr(args, "input", None) is None:
        return None
    return TableRequest(args.input, (args.id_col, args.time_col, args.value_col),
                        getattr(args, "overwrite", False), getattr(args, "in_flight", None),
                        getattr(args, "chunk_series", None))


def send_request(args: argparse.Namespace) -> SendRequest:
    """``send-tasks``' arguments checked: a table run's (its table is read by the run), or
    a folder run's, with its models, coins, files and window checked against the data."""
    settings = settings_from(args)
    forecasts = Forecasts(tuple(checked_models(args.model, (BEST,))) if args.model != BEST
                          else (), args.horizon, args.max_points, tuple(args.levels),
                          args.epochs, args.timeout)
    table = table_of(args)
    common = {"settings": settings, "stderr": stderr_of(args, settings), "output": args.output}
    if table is not None:
        if args.model == BEST:
            raise ConfigError("--model best is for the data folder; a table run takes "
                              "--model NAME[,NAME...]")
        if args.output is None:
            raise ConfigError("--input needs --output OUT.parquet: a table run writes Parquet")
        given = coin_list(args.coins)
        return SendRequest(**common, forecasts=forecasts, table=table,
                           coins=tuple(given) if given else None)
    best = checked_best(args) if args.model == BEST else None
    check_writable(args.output, "--output")
    check_writable(args.plot, "--plot")
    check_max_points([args.max_points], forecasts.models, None, bool(args.levels))
    loader, coins = checked_coins(settings, args.coins)
    return SendRequest(**common, forecasts=forecasts, coins=coins, loader=loader, best=best,
                       retrain=args.retrain, format=args.format, plot=args.plot,
                       flower=args.flower)


def checked_best(args: argparse.Namespace) -> Best:
    """``--model best``: the saved backtest read, or the candidates checked, before any work."""
    if args.backtest:
        return Best((), load_saved(args.backtest))
    return Best(tuple(checked_models(args.candidates or DEFAULT_CANDIDATES)), None)


def checked_coins(settings: Settings, spec: str | None, to_date: str | None = None
                  ) -> tuple[CryptoLoader, tuple[str, ...] | None]:
    """The data folder's loader and ``--coins`` as ids (None: every coin), failing (exit 2)
    on no data, an unknown coin, or coins none of whose files can be read."""
    loader = CryptoLoader(settings.data_dir, to_date=to_date, cache_dir=settings.cache_dir)
    coins = resolve_coins(spec, known_coins(loader), loader.data_dir)
    check_readable(loader, coins)
    return loader, tuple(coins) if coins is not None else None


def backtest_request(args: argparse.Namespace) -> BacktestRequest:
    """``backtest``' arguments checked: models, windows, ``--out``, and (for the data
    folder) the coins against the data."""
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder")
    check_writable(args.out and args.out / "backtest.json", "--out", make_folder=True)
    settings = settings_from(args)
    models = tuple(checked_models(args.model))
    options = dict(args.param)
    windows: tuple[int | None, ...] = tuple(args.max_points or [None])
    check_max_points(windows, models, options)
    given = {"horizon": args.horizon, "origins": args.origins, "stride": args.stride,
             "min_train": args.min_train, "epochs": args.epochs, "seed": args.seed}
    table = table_of(args)
    if table is not None:  # the table's series are picked by their exact ids
        given_coins = coin_list(args.coins)
        loader, coins = None, tuple(given_coins) if given_coins else None
    else:
        loader, coins = checked_coins(settings, args.coins, args.until)
    return BacktestRequest(settings, stderr_of(args, settings), models, coins, windows,
                           tuple(args.levels), options, args.timeout, args.out,
                           {k: v for k, v in given.items() if v is not None}, table, loader)
