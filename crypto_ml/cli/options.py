"""What the subcommands share: exit codes, option types, the cluster and output options, the
settings, the checks of coins and output files, and how a run stops on a signal.

The settings of a command are the environment's (:meth:`Settings.from_env`) with
the command line's overrides; this is where the command line reads them. The runs'
arguments are checked and typed once by :mod:`crypto_ml.cli.requests`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from crypto_ml.core.errors import ConfigError, DataNotFound, InvalidTaskInput
from crypto_ml.core.settings import LOG_FORMATS, Settings
from crypto_ml.data.loader import HOW_TO_GET_DATA, CryptoLoader
from crypto_ml.data.names import coin_id
from crypto_ml.dispatch.manager import DEFAULT_TIMEOUT
from crypto_ml.models.intervals import check_levels
from crypto_ml.ops.processes import kill_spawned

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def max_points(text: str) -> int:
    """argparse type of ``--max-points``: a positive N, or ``all`` (0 here) for the whole
    history; whether N is enough for the models is
    :mod:`crypto_ml.cli.requests`' to say."""
    if text.strip().lower() == "all":
        return 0
    if text.strip() == "0":
        raise argparse.ArgumentTypeError("0 closes: give all for the whole history, or N")
    return positive_int(text)


def levels(text: str) -> tuple[float, ...]:
    """argparse type of ``--levels``: ``80,95`` -> (80.0, 95.0); ``none`` for no intervals."""
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return check_levels(text)
    except InvalidTaskInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: broker, wait limit, data folder, embedded worker count."""
    parser.add_argument("--broker",
                        help="Redis URL (default: CRYPTO_ML_BROKER_URL, else embedded)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for all results ({DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--data-dir", type=Path, help="price data folder (CRYPTO_ML_DATA_DIR)")
    parser.add_argument("--workers", type=positive_int,
                        help="worker processes of the embedded cluster (default: one per core)")


def add_log_options(parser: argparse.ArgumentParser,
                    verbose: str = "also a line per task") -> None:
    """What stderr shows, the same for every subcommand: ``-v``, ``-q``, ``--log-level``,
    ``--log-format``. By default: notices, progress (a bar on a terminal, a few plain
    lines elsewhere) and the summary; ``-v`` adds a line per task, ``-q`` leaves errors only."""
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="stderr lines as text or json (CRYPTO_ML_LOG_FORMAT, default text)")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="info",
                      help=f"{verbose} (same as --log-level info)")
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="stdout only: no progress, notices or summary on stderr, "
                      "only errors and failures")
    loud.add_argument("--log-level", choices=("debug", "info", "warning"),
                      help="how much crypto_ml logs besides progress and summary (warning)")


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's overrides."""
    settings = Settings.from_env().with_broker(getattr(args, "broker", None))
    changes = {}
    if getattr(args, "data_dir", None) is not None:
        changes["data_dir"] = args.data_dir
    if getattr(args, "workers", None) is not None:
        changes["workers"] = args.workers
    if getattr(args, "log_format", None):
        changes["log_format"] = args.log_format
    return dataclasses.replace(settings, **changes)


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
    """``--coins a,b`` as a list; None for every coin."""
    return [c.strip() for c in spec.split(",") if c.strip()] if spec else None


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
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {parent}")


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


def stop_on_signals(manager: Stoppable | None) -> None:
    """Ctrl-C and SIGTERM stop the run: at once, and by flag should the exception be lost.
    A second one while it stops does not interrupt the stopping (that would leave processes
    behind): it kills every process the run started at once (:func:`kill_spawned`)."""

    def again(signum: int, frame: object) -> None:
        kill_spawned()  # the waits of the stopping now end at once

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, again)
        signal.signal(signal.SIGTERM, again)
        if manager is not None:
            manager.request_stop()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
