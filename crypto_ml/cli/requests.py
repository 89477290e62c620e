"""A command's arguments, checked once and typed: what a run asks for.

The argparse namespace is read here, at the edge, and nowhere after:
:func:`send_request` and :func:`backtest_request` check every argument that can be
checked without a cluster (a ConfigError, exit 2 in one line, before any cluster starts)
and return frozen requests that the commands run from. They go down the layers once, each
in turn: which options go together (here: no file is read but the output folders'), the
settings (the environment with the command line's overrides), the models (parsed once, in
any case, with the options and the ``--max-points`` window that bear on them), then the
data folder, whose listing (headers, not rows) resolves the coins and names a file that
cannot be read with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crypto_ml.backtest.best import BEST, DEFAULT_CANDIDATES, load_saved
from crypto_ml.backtest.engine import BacktestResult
from crypto_ml.backtest.report import FILES
from crypto_ml.cli.table_options import TABLE_ONLY
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.paths import write_problem
from crypto_ml.core.settings import Settings, coin_list
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.data.names import SUFFIXES as PRICE_SUFFIXES
from crypto_ml.dispatch.cluster import workers_problem
from crypto_ml.models import (
    check_option_names,
    check_option_values,
    model_class,
    model_names,
    parse_fallback,
    parse_models,
    window_problem,
)
from crypto_ml.ops.flower import check_listen
from crypto_ml.ops.plot import picture_problem


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

    @property
    def models(self) -> tuple[str, ...]:
        """The models a coin may get: the saved backtest's, or the candidates."""
        return tuple(self.saved.config.models) if self.saved is not None else self.candidates


@dataclass(frozen=True)
class TableRequest:
    """``--input TABLE``: the table, its column names and how the run is sized."""

    path: Path
    columns: dict[str, str]  # the id, time and value columns given (Columns' fields)
    overwrite: bool
    in_flight: int | None
    chunk_series: int | None
    fallback: str | None = None  # --fallback-model, checked


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
    until: str | None = None  # --until: the newest date a backtest of a table reads


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings (:meth:`Settings.from_env`) with the command line's
    overrides, and the checks that need them (``--workers`` here, ``--horizon`` against what
    the workers accept): the one place a command's settings are read."""
    settings = Settings.from_env().with_broker(getattr(args, "broker", None))
    if settings.broker_url and getattr(args, "workers", None) is not None:
        given = "--broker" if getattr(args, "broker", None) else "CRYPTO_ML_BROKER_URL"
        raise ConfigError(f"--workers sizes the embedded cluster; with {given} the broker's "
                          "own workers run the tasks (scale them there)")
    if (workers := getattr(args, "workers", None)) and (why := workers_problem(workers)):
        raise ConfigError(why)  # before the embedded cluster's notice
    horizon = getattr(args, "horizon", None)
    if horizon is not None and (why := settings.horizon_problem(horizon)) is not None:
        raise ConfigError(f"--horizon {why}; set CRYPTO_ML_MAX_HORIZON here and on the workers "
                          "for more")
    changes = {name: getattr(args, name) for name in ("data_dir", "workers", "log_format")
               if getattr(args, name, None) not in (None, "")}
    return dataclasses.replace(settings, **changes)


def send_request(args: argparse.Namespace) -> SendRequest:
    """``send-tasks``' arguments checked, one layer at a time: which options go together,
    the settings, the models, then the data folder's coins (a table run's table is read by
    the run)."""
    table = _send_layout(args)
    settings = settings_from(args)
    names = coin_list(args.coins)  # a --coins naming no coin is refused before any file is read
    forecasts, best, fallback = _send_models(args, table is not None)
    common = {"settings": settings, "stderr": Stderr(bool(args.quiet), settings.log_format),
              "forecasts": forecasts, "output": args.output, "flower": args.flower}
    if table is not None:  # the table's series, picked by their exact ids, are read by the run
        request = SendRequest(**common, table=dataclasses.replace(table, fallback=fallback),
                              coins=tuple(names) if names else None)
    else:
        if args.plot is not None and (why := picture_problem(args.plot, args.output)):
            raise ConfigError(f"--plot {args.plot}: {why}")
        loader = CryptoLoader(settings.data_dir, cache_dir=settings.cache_dir)
        request = SendRequest(**common, coins=loader.pick(names, "--coins"), loader=loader,
                              best=best, retrain=args.retrain, format=args.format, plot=args.plot)
    if args.flower and not settings.broker_url:  # last, and before the embedded cluster's notice
        check_listen(settings.flower_address, settings.flower_port)
    return request


def _send_layout(args: argparse.Namespace) -> TableRequest | None:
    """Which ``send-tasks`` options go together: a table run's (its table, columns named) or
    the data folder's (None), and ``--model best``'s; the output files' folders writable."""
    if BEST in args.model.split(",") and args.model != BEST:
        raise ConfigError(f"--model {BEST} picks one model per coin by itself: give it alone "
                          "(--candidates names the models it picks from)")
    if args.model != BEST and (args.backtest or args.candidates):
        raise ConfigError(f"--{'backtest' if args.backtest else 'candidates'} is for --model "
                          f"best (it picks each coin's model); got --model {args.model}")
    if args.backtest and args.candidates:
        raise ConfigError("--candidates is for --model best without --backtest: the saved "
                          "backtest's models are the candidates")
    for option, path in (("--output", args.output), ("--plot", args.plot)):
        if (args.backtest and path is not None
                and Path(path).resolve() == Path(args.backtest).resolve()):  # written over it
            raise ConfigError(f"{option} {path} is the --backtest file it reads; write the "
                              "forecasts elsewhere")
    if args.input is None:
        if getattr(args, "fallback_model", None) is not None:
            raise ConfigError("--fallback-model is for table runs (--input TABLE): a folder "
                              "run's failed forecasts are listed as they failed")
        refuse_given(args, TABLE_ONLY, "is for table runs (--input TABLE); this run reads the "
                     "data folder")
        for given, option in ((args.output, "--output"), (args.plot, "--plot")):
            if given is not None:
                check_not_prices(given, option)
                check_writable(given, option)
        return None
    if args.model == BEST:
        raise ConfigError("--model best is for the data folder; a table run takes "
                          "--model NAME[,NAME...]")
    if args.output is None:
        raise ConfigError("--input needs --output OUT.parquet: a table run writes Parquet")
    check_table_output(args.output)
    for option, given in (("--plot", args.plot is not None), ("--format", args.format != "text")):
        if given:
            raise ConfigError(f"{option} is for the data folder; a table run writes its "
                              "forecasts to --output OUT.parquet and nothing to stdout")
    refuse_given(args, ("retrain",), "is for the data folder's runs (the model store); a "
                 "table run fits every series afresh")
    refuse_given(args, ("data_dir",), "is for the data folder; a table run reads --input")
    return table_of(args)


def _send_models(args: argparse.Namespace, table: bool
                 ) -> tuple[Forecasts, Best | None, str | None]:
    """The models of a ``send-tasks`` run (or ``--model best``'s candidates, or those of its
    saved backtest) and the table run's fallback, each checked once against the options
    that bear on them: ``--epochs``, ``--retrain`` and ``--max-points``."""
    best = None
    if args.model == BEST:
        best = Best((), load_saved(args.backtest)) if args.backtest else Best(
            parse_models(args.candidates or DEFAULT_CANDIDATES), None)
    models = parse_models(args.model, [*model_names(), BEST]) if best is None else ()
    fitted = best.models if best is not None else models
    epochs = {} if args.epochs is None else {"epochs": args.epochs}
    check_option_values(fitted, epochs, "--model {}")
    check_option_names(fitted, epochs, "--{}")
    if args.retrain and not any(model_class(m).stored for m in fitted):
        stored = ", ".join(n for n in model_names() if model_class(n).stored)
        raise ConfigError(f"--retrain is for the models whose fits the model store keeps "
                          f"({stored}); {', '.join(fitted)} {'is' if len(fitted) == 1 else 'are'} "
                          "fitted afresh every time")
    fallback = getattr(args, "fallback_model", None)
    if table and fallback is not None:
        fallback = parse_fallback(fallback, models, "--fallback-model")
    if why := window_problem(args.max_points, [*fitted, *([fallback] if fallback else [])],
                             None, bool(args.levels)):
        raise ConfigError(f"--max-points {why}")
    return (Forecasts(models, args.horizon, args.max_points, tuple(args.levels), args.epochs,
                      args.timeout), best, fallback)


def table_of(args: argparse.Namespace) -> TableRequest | None:
    """``--input TABLE`` and the columns named (``Columns``' fields; the table reader's
    defaults fill the rest); None without ``--input``."""
    if getattr(args, "input", None) is None:
        return None
    given = {"id": args.id_col, "time": args.time_col, "value": args.value_col}
    return TableRequest(args.input, {f: name for f, name in given.items() if name is not None},
                        getattr(args, "overwrite", False), getattr(args, "in_flight", None),
                        getattr(args, "chunk_series", None))


def refuse_given(args: argparse.Namespace, names: Sequence[str], why: str) -> None:
    """ConfigError naming the first of the options ``names`` (argparse's names) that was
    given: each defaults to None or False, so given means not that."""
    for name in names:
        if getattr(args, name, None) not in (None, False):
            raise ConfigError(f"--{name.replace('_', '-')} {why}")


def backtest_request(args: argparse.Namespace) -> BacktestRequest:
    """``backtest``' arguments checked, one layer at a time: which options go together and
    ``--out``, the settings, the models and their options, then (for the data folder) the
    coins against the data."""
    table = _backtest_layout(args)
    settings = settings_from(args)
    given = {"horizon": args.horizon, "origins": args.origins, "stride": args.stride,
             "min_train": args.min_train, "epochs": args.epochs, "seed": args.seed}
    names = coin_list(args.coins)
    models, options = _backtest_models(args)
    loader = None if table is not None else CryptoLoader(  # a table's series: by exact id
        settings.data_dir, to_date=args.until, cache_dir=settings.cache_dir)
    coins = loader.pick(names, "--coins") if loader else (tuple(names) if names else None)
    return BacktestRequest(settings, Stderr(bool(args.quiet), settings.log_format), models,
                           coins, tuple(args.max_points or [None]), tuple(args.levels), options,
                           args.timeout, args.out, {k: v for k, v in given.items() if v is not None},
                           table, loader, args.until)


def _backtest_layout(args: argparse.Namespace) -> TableRequest | None:
    """Which ``backtest`` options go together, and ``--out`` a folder that can be written."""
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder")
    for name in FILES if args.out is not None else ():
        check_writable(args.out / name, "--out", make_folder=True)
    if args.input is not None:
        refuse_given(args, ("data_dir",), "is for the data folder; this backtest reads --input")
    else:
        refuse_given(args, TABLE_ONLY, "is for a table (--input TABLE); this backtest reads "
                     "the data folder")
    return table_of(args)


def _backtest_models(args: argparse.Namespace) -> tuple[tuple[str, ...], dict[str, int]]:
    """The models of a backtest and their ``--param`` options, checked once against them and
    ``--epochs``, ``--seed`` and the ``--max-points`` windows."""
    models = parse_models(args.model)
    options = dict(args.param)
    for twice in ("epochs", "seed"):
        if twice in options and getattr(args, twice) is not None:
            raise ConfigError(f"--param {twice} and --{twice} both set {twice}; give one")
    check_option_names(models, options, "--param {}")
    check_option_names(models, [o for o in ("epochs", "seed") if getattr(args, o) is not None],
                       "--{}")
    check_option_values(models, {**options, **({} if args.epochs is None
                                               else {"epochs": args.epochs})}, "--model {}")
    shortest = min((w for w in args.max_points or [] if w), default=None)  # 0: all
    if why := window_problem(shortest, models, options):
        raise ConfigError(f"--max-points {why}")
    return models, options


def check_not_prices(out: Path, option: str = "--output") -> None:
    """ConfigError for a folder run's ``--output`` named as the data folder names prices, or
    a file option's link to such a name (written through): it could write over a price file."""
    if option == "--output" and out.suffix.lower() in PRICE_SUFFIXES:
        raise ConfigError(f"--output {out}: a run over the data folder writes JSON; name it "
                          "*.json (a name the data folder reads as prices could write over a "
                          "price file; Parquet comes from a table run, --input TABLE)")
    if out.is_symlink() and (target := Path(os.path.realpath(out))).suffix.lower() in \
            PRICE_SUFFIXES:
        raise ConfigError(f"{option} {out} is a link to {target}, a name the data folder "
                          "reads as prices; give another path")


def check_writable(path: Path | None, option: str, make_folder: bool = False) -> None:
    """A ConfigError unless ``path`` can be written: not a folder, its folder there (or
    creatable, with ``make_folder``: a missing folder is otherwise an error, not made)."""
    if path is None:
        return
    shown: object = path
    if path.is_symlink():  # written through: where it leads is what must be writable
        try:
            path = path.resolve()
        except (OSError, RuntimeError):
            raise ConfigError(f"{option} {shown} is a link that leads nowhere (a loop); "
                              "give another path") from None
        shown = f"{shown} (a link to {path})"
    if path.is_dir():
        raise ConfigError(f"{option} {shown} is a folder; give a file name")
    parent = path.parent
    if not make_folder and not parent.exists():
        raise ConfigError(f"{option} {shown}: the folder {parent} does not exist; "
                          f"create it first (mkdir -p {parent}) or give another path")
    if (found := write_problem(parent)) is not None:
        where, why = found
        raise ConfigError(f"{option} {shown}: cannot write in {where} ({why})")


def check_table_output(out: Path) -> None:
    """A ConfigError unless ``out`` is a ``.parquet`` path in an existing, writable folder."""
    if out.suffix != ".parquet":  # one spelling: A.parquet and A.PARQUET would share failures
        raise ConfigError(f"--output {out}: a table run writes Parquet; name it *.parquet")
    if out.stem.lower().endswith(".failures"):  # another run's failures, or this one's own
        raise ConfigError(f"--output {out}: *.failures.parquet is the name of a run's "
                          "failures table (beside its OUT.parquet); choose another name")
    if out.is_dir():
        raise ConfigError(f"--output {out} is a folder; give a file name")
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"--output {out}: {out.parent} is a file, not a folder")
    if not out.parent.is_dir():
        raise ConfigError(f"--output {out}: no folder {out.parent}; create it first")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {out}: cannot write in {out.parent}")
