"""Checks of a run's models, window and data made before any cluster starts (exit 2, one
line each): model names in any case, ``--max-points`` against what the models need, and
price files that cannot be read named with the reason. Used by
:func:`crypto_ml.cli.options.checked_inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from crypto_ml.core.errors import ConfigError, DataNotFound, InvalidTaskInput, UnknownModel
from crypto_ml.data.loader import HOW_TO_GET_DATA, CryptoLoader
from crypto_ml.models import get_model, parse_models
from crypto_ml.models.intervals import MIN_CALIBRATION_TRAIN


def model_names_option(text: str) -> str:
    """argparse type of ``--model`` and ``--candidates``: names in any case, as coin names
    (``LSTM,Linear`` is ``lstm,linear``)."""
    return ",".join(name.strip().lower() for name in text.split(",") if name.strip())


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


def fewest_points(models: Sequence[str], params: Mapping[str, object] | None = None,
                  intervals: bool = False) -> tuple[int, str]:
    """The fewest closes each of ``models`` fits on (with ``intervals``: and calibrates its
    prediction intervals on, :data:`MIN_CALIBRATION_TRAIN`), at most over them: (that
    number, the model that needs it)."""
    needs = {}
    for name in models:
        try:
            need = get_model(name, **dict(params or {})).min_points
        except InvalidTaskInput:  # a bad model option: said by the run itself
            need = 1
        needs[name] = max(need, MIN_CALIBRATION_TRAIN if intervals else 1)
    model = max(needs, key=lambda m: needs[m])
    return needs[model], model


def check_max_points(windows: Sequence[int | None], models: Sequence[str],
                     params: Mapping[str, object] | None = None, intervals: bool = False) -> None:
    """A ConfigError if a ``--max-points`` window is shorter than the models need."""
    short = [w for w in windows if w]  # None: each model's default; 0: all
    if not short or not models:
        return
    need, model = fewest_points(models, params, intervals)
    if min(short) < need:
        what = "fits and calibrates its prediction intervals on" if intervals else "fits on"
        raise ConfigError(f"--max-points {min(short)} is too few: {model} {what} at least "
                          f"{need} closes; give {need} or more, or all for the whole history")


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
