"""A command's arguments, checked once and typed: what a run asks for.

The argparse namespace is read here, at the edge, and nowhere after:
:func:`send_request` and :func:`backtest_request` check every argument that can be
checked without a cluster (a ConfigError, exit 2 in one line, before any cluster starts)
and return frozen requests that the commands run from. Model names are parsed once, here
(in any case, as coin names); a ``--max-points`` window is checked against what the models
need; coins are resolved to ids against the data folder's listing (headers, not rows), and
files that cannot be read are named with the reason; output files are checked writable.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crypto_ml.backtest.best import BEST, DEFAULT_CANDIDATES, load_saved
from crypto_ml.backtest.engine import BacktestResult
from crypto_ml.cli.table_options import TABLE_ONLY, columns_of, refuse_given
from crypto_ml.core.errors import ConfigError, DataNotFound, UnknownModel
from crypto_ml.core.settings import Settings, comma_list
from crypto_ml.data.loader import HOW_TO_GET_DATA, CryptoLoader
from crypto_ml.data.names import coin_id
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
    overrides: the one place a command's settings are read."""
    settings = Settings.from_env().with_broker(getattr(args, "broker", None))
    if settings.broker_url and getattr(args, "workers", None) is not None:
        given = "--broker" if getattr(args, "broker", None) else "CRYPTO_ML_BROKER_URL"
        raise ConfigError(f"--workers sizes the embedded cluster; with {given} the broker's "
                          "own workers run the tasks (scale them there)")
    if (workers := getattr(args, "workers", None)) and (why := workers_problem(workers)):
        raise ConfigError(why)  # before the embedded cluster's notice
    changes = {name: getattr(args, name) for name in ("data_dir", "workers", "log_format")
               if getattr(args, name, None) not in (None, "")}
    return dataclasses.replace(settings, **changes)


def stderr_of(args: argparse.Namespace, settings: Settings) -> Stderr:
    return Stderr(bool(getattr(args, "quiet", False)), settings.log_format)


def table_of(args: argparse.Namespace) -> TableRequest | None:
    if getattr(args, "input", None) is None:
        return None
    fallback = getattr(args, "fallback_model", None)
    return TableRequest(args.input, columns_of(args),
                        getattr(args, "overwrite", False), getattr(args, "in_flight", None),
                        getattr(args, "chunk_series", None),
                        None if fallback is None else
                        parse_fallback(fallback, args.model.split(","), "--fallback-model"))


def send_request(args: argparse.Namespace) -> SendRequest:
    """``send-tasks``' arguments checked: a table run's (its table is read by the run), or
    a folder run's, with its models, coins, files and window checked against the data."""
    settings = settings_from(args)
    forecasts = Forecasts(tuple(checked_models(args.model, (BEST,))) if args.model != BEST
                          else (), args.horizon, args.max_points, tuple(args.levels),
                          args.epochs, args.timeout)
    check_option_values(forecasts.models, {} if args.epochs is None else {"epochs": args.epochs},
                        "--model {}")
    if args.epochs is not None and args.model != BEST:  # best: its candidates may train
        check_option_names(forecasts.models, ["epochs"], "--{}")
    check_horizon(settings, args.horizon)
    table = table_of(args)
    if args.model != BEST and (args.backtest or args.candidates):
        raise ConfigError(f"--{'backtest' if args.backtest else 'candidates'} is for --model "
                          f"best (it picks each coin's model); got --model {args.model}")
    common = {"settings": settings, "stderr": stderr_of(args, settings), "output": args.output}
    if table is not None:
        if args.model == BEST:
            raise ConfigError("--model best is for the data folder; a table run takes "
                              "--model NAME[,NAME...]")
        if args.output is None:
            raise ConfigError("--input needs --output OUT.parquet: a table run writes Parquet")
        for option, given in (("--plot", args.plot is not None),
                              ("--format", args.format != "text")):
            if given:
                raise ConfigError(f"{option} is for the data folder; a table run writes its "
                                  "forecasts to --output OUT.parquet and nothing to stdout")
        refuse_given(args, ("retrain",), "is for the data folder's runs (the model store); a "
                     "table run fits every series afresh")
        refuse_given(args, ("data_dir",), "is for the data folder; a table run reads --input")
        with_fallback = [*forecasts.models, *([table.fallback] if table.fallback else [])]
        check_max_points([args.max_points], with_fallback, None, bool(args.levels))
        given = coin_list(args.coins)
        return SendRequest(**common, forecasts=forecasts, table=table,
                           coins=tuple(given) if given else None, flower=args.flower)
    if getattr(args, "fallback_model", None) is not None:
        raise ConfigError("--fallback-model is for table runs (--input TABLE): a folder run's "
                          "failed forecasts are listed as they failed")
    refuse_given(args, TABLE_ONLY, "is for table runs (--input TABLE); this run reads the "
                 "data folder")
    best = checked_best(args) if args.model == BEST else None
    fitted = best.models if best is not None else forecasts.models
    if best is not None and args.epochs is not None:
        check_option_names(fitted, ["epochs"], "--{}")
    if args.retrain and not any(model_class(m).stored for m in fitted):
        stored = ", ".join(n for n in model_names() if model_class(n).stored)
        raise ConfigError(f"--retrain is for the models whose fits the model store keeps "
                          f"({stored}); {', '.join(fitted)} {'is' if len(fitted) == 1 else 'are'} "
                          "fitted afresh every time")
    if args.output is not None and args.output.suffix.lower() == ".parquet":
        raise ConfigError(f"--output {args.output}: a run over the data folder writes JSON; "
                          "name it *.json (Parquet comes from a table run, --input TABLE)")
    check_writable(args.output, "--output")
    check_writable(args.plot, "--plot")
    if args.plot is not None and (why := picture_problem(args.plot, args.output)):
        raise ConfigError(f"--plot {args.plot}: {why}")
    check_max_points([args.max_points], fitted, None, bool(args.levels))
    loader, coins = checked_coins(settings, args.coins)
    return SendRequest(**common, forecasts=forecasts, coins=coins, loader=loader, best=best,
                       retrain=args.retrain, format=args.format, plot=args.plot,
                       flower=args.flower)


def checked_best(args: argparse.Namespace) -> Best:
    """``--model best``: the saved backtest read, or the candidates checked, before any work."""
    if args.backtest:
        if args.candidates:
            raise ConfigError("--candidates is for --model best without --backtest: the saved "
                              "backtest's models are the candidates")
        return Best((), load_saved(args.backtest))
    return Best(tuple(checked_models(args.candidates or DEFAULT_CANDIDATES)), None)


def checked_coins(settings: Settings, spec: str | None, to_date: str | None = None
                  ) -> tuple[CryptoLoader, tuple[str, ...] | None]:
    """The data folder's loader and ``--coins`` as ids (None: every coin), failing (exit 2)
    on no data, an unknown coin, or coins none of whose files can be read."""
    names = coin_list(spec)  # a --coins naming no coin is refused before the folder is read
    loader = CryptoLoader(settings.data_dir, to_date=to_date, cache_dir=settings.cache_dir)
    coins = resolve_coins(names, known_coins(loader), loader.data_dir)
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
    check_horizon(settings, args.horizon)
    check_option_names(models, options, "--param {}")
    check_option_names(models, [o for o in ("epochs", "seed") if getattr(args, o) is not None],
                       "--{}")
    check_option_values(models, {**options, **({} if args.epochs is None
                                               else {"epochs": args.epochs})}, "--model {}")
    windows: tuple[int | None, ...] = tuple(args.max_points or [None])
    check_max_points(windows, models, options)
    given = {"horizon": args.horizon, "origins": args.origins, "stride": args.stride,
             "min_train": args.min_train, "epochs": args.epochs, "seed": args.seed}
    table = table_of(args)
    if table is not None:  # the table's series are picked by their exact ids
        refuse_given(args, ("data_dir",), "is for the data folder; this backtest reads --input")
        given_coins = coin_list(args.coins)
        loader, coins = None, tuple(given_coins) if given_coins else None
    else:
        refuse_given(args, TABLE_ONLY, "is for a table (--input TABLE); this backtest reads "
                     "the data folder")
        loader, coins = checked_coins(settings, args.coins, args.until)
    return BacktestRequest(settings, stderr_of(args, settings), models, coins, windows,
                           tuple(args.levels), options, args.timeout, args.out,
                           {k: v for k, v in given.items() if v is not None}, table, loader,
                           args.until)


def checked_models(spec: str, also: Sequence[str] = ()) -> list[str]:
    """The models of ``spec``; an error listing every choice, ``also`` (``best``) too."""
    names = spec.split(",")
    for extra in also:
        if extra in names and len(names) > 1:
            raise ConfigError(f"--model {extra} picks one model per coin by itself: give it "
                              "alone (--candidates names the models it picks from)")
    try:
        return parse_models(spec)
    except UnknownModel as exc:
        if not also:
            raise
        raise UnknownModel(f"{exc}, or {', or '.join(also)}") from None


def check_horizon(settings: Settings, horizon: int | None) -> None:
    """A ConfigError when ``--horizon`` is above what the workers accept."""
    if horizon is not None and (why := settings.horizon_problem(horizon)) is not None:
        raise ConfigError(f"--horizon {why}; set CRYPTO_ML_MAX_HORIZON here and on the workers "
                          "for more")


def check_max_points(windows: Sequence[int | None], models: Sequence[str],
                     params: Mapping[str, object] | None = None, intervals: bool = False) -> None:
    """A ConfigError if a ``--max-points`` window is shorter than the models need."""
    short = [w for w in windows if w]  # None: each model's default; 0: all
    if short and (why := window_problem(min(short), models, params, intervals)):
        raise ConfigError(f"--max-points {why}")


def check_readable(loader: CryptoLoader, coins: Sequence[str] | None) -> None:
    """A ConfigError naming the file and why it cannot be read when not one coin of ``coins``
    (None: every coin) can be read; a few unreadable ones among others fail in the run
    itself (exit 1), and every other forecast is still delivered."""
    if coins is not None:  # some unreadable among readable ones: the run fails just those
        found = [(coin, loader.unreadable(coin)) for coin in coins]
        if all(reason for _, reason in found):
            coin, reason = found[0]
            raise ConfigError(f"cannot read the price file of coin {coin!r}: {reason} "
                              "(fix or replace the file, or leave the coin out of --coins)")
        return
    reasons = []
    for coin in loader.coin_ids():
        reason = loader.unreadable(coin)
        if reason is None:
            return
        reasons.append(reason)
    listed = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3
                                        else "")
    raise DataNotFound(f"no readable price file in {loader.data_dir} ({listed}); "
                       f"{HOW_TO_GET_DATA}")


def known_coins(loader: CryptoLoader) -> list[str]:
    """Coin ids the data folder's files name, read from the listing (headers, not rows)."""
    ids = loader.coin_ids()
    if not ids:
        raise DataNotFound(f"no price files in {loader.data_dir}; {HOW_TO_GET_DATA}")
    return ids


def resolve_coins(spec: str | Sequence[str] | None, known: Sequence[str],
                  folder: Path | str = "the data folder") -> list[str] | None:
    """``--coins`` as coin ids, in the order given, duplicates dropped; None for every coin.

    Names match in any case and spacing (``Bitcoin Cash`` is ``bitcoin_cash``); a name
    the data folder does not hold is a ConfigError naming it and the nearest ids.
    """
    names = coin_list(spec) if isinstance(spec, str) or spec is None else list(spec)
    if not names:
        return None
    ids = list(dict.fromkeys(coin_id(name) for name in names))
    unknown = [c for c in ids if c not in known]
    if unknown:
        near = dict.fromkeys(m for c in unknown for m in difflib.get_close_matches(c, known, 3))
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"unknown coin(s) {', '.join(repr(c) for c in unknown)}{hint} "
                          f"(--coins takes the file names in {folder}, in any case)")
    return ids


def coin_list(spec: str | None) -> list[str] | None:
    """``--coins a,b`` as a list; None (no ``--coins``) for every coin. A ``--coins`` that
    names none (``""``, ``,``: an empty shell variable, say) is an error, not every coin."""
    if spec is None:
        return None
    names = comma_list(spec)
    if not names:
        raise ConfigError(f"--coins {spec!r} names no coin; leave --coins out for every coin")
    return names


def check_writable(path: Path | None, option: str, make_folder: bool = False) -> None:
    """A ConfigError unless ``path`` can be written: not a folder, its folder there (or
    creatable, with ``make_folder``: a missing folder is otherwise an error, not made)."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    parent = path.parent
    if not make_folder and not parent.exists():
        raise ConfigError(f"{option} {path}: the folder {parent} does not exist; "
                          f"create it first (mkdir -p {parent}) or give another path")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:  # a file made and removed: permissions alone do not say it (root, /proc, read-only)
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {parent} "
                          f"({exc.strerror or exc})") from None
