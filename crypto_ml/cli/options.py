"""What the subcommands share: exit codes, option types (model names in any case, windows,
levels), the cluster and log options, the settings, and how a run stops on a signal.

A command's arguments are read once, into its settings and a typed request, by
:mod:`crypto_ml.cli.requests`.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from crypto_ml.core.errors import InvalidTaskInput
from crypto_ml.core.settings import DEFAULT_TIMEOUT, LOG_FORMATS, MAX_TIMEOUT
from crypto_ml.models import model_names
from crypto_ml.models.intervals import check_levels
from crypto_ml.ops.processes import interrupt_later, kill_spawned

N = TypeVar("N", int, float)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def model_names_option(text: str) -> str:
    """argparse type of ``--model`` and ``--candidates``: names in any case, as coin names
    (``LSTM,Linear`` is ``lstm,linear``)."""
    names = ",".join(name.strip().lower() for name in text.split(",") if name.strip())
    if not names:  # --candidates "" meant the default candidates without a word
        raise argparse.ArgumentTypeError(f"names no model, got {text!r}; choose from "
                                         f"{', '.join(model_names())}")
    return names


def number_type(name: str, parse: Callable[[str], N], ok: Callable[[N], bool],
                need: str) -> Callable[[str], N]:
    """An argparse type called ``name``: ``parse`` the text, then refuse a value that is not
    ``ok``; either refusal says what it ``need``s (argparse's own "invalid NAME value" named
    this function)."""
    kind = need if need.startswith("a ") else \
        f"{'a whole number' if parse is int else 'a number'} {need}"

    def check(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text.strip()!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text.strip()}")
        return value

    check.__name__ = check.__qualname__ = name
    return check


positive_int = number_type("positive_int", int, lambda v: v >= 1, "at least 1")
whole_number = number_type("whole_number", int, lambda v: v >= 0, "0 or more")
port_number = number_type("port_number", int, lambda v: 1 <= v <= 65535,
                          "a TCP port, 1 to 65535")
pause_seconds = number_type("pause_seconds", float, lambda v: math.isfinite(v) and v >= 0,
                            "a finite number of seconds, 0 or more")
positive_seconds = number_type("positive_seconds", float,
                               lambda v: 0 < v <= MAX_TIMEOUT,  # not NaN, nor inf
                               f"a number of seconds above 0, at most {MAX_TIMEOUT:.0f} (30 days)")


def http_url(text: str) -> str:
    """argparse type: an ``http://`` or ``https://`` URL with a host."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


#: the longest file or folder name Linux and macOS file systems take (bytes), and path
NAME_MAX, PATH_MAX = 255, 4096


def path_option(text: str) -> Path:
    """argparse type of a file or folder option: an empty string is refused (``Path("")``
    would quietly be the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    path = Path(text)
    if any(len(os.fsencode(part)) > NAME_MAX for part in path.parts):
        raise argparse.ArgumentTypeError(f"a name in {text[:60]!r}... is longer than the "
                                         f"{NAME_MAX} bytes a file system allows")
    if len(os.fsencode(text)) >= PATH_MAX:
        raise argparse.ArgumentTypeError(f"{text[:60]!r}... is longer than the {PATH_MAX} "
                                         "bytes a path may have")
    return path


def max_points(text: str) -> int:
    """argparse type of ``--max-points``: a positive N, or ``all`` (0 here) for the whole
    history; whether N is enough for the models is
    :mod:`crypto_ml.cli.requests`' to say."""
    if text.strip().lower() == "all":
        return 0
    if text.strip() == "0":
        raise argparse.ArgumentTypeError("0 closes: give all for the whole history, or N")
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a whole number at least 1, or all, got "
                                         f"{text.strip()!r}") from None


def levels(text: str) -> tuple[float, ...]:
    """argparse type of ``--levels``: ``80,95`` -> (80.0, 95.0); ``none`` for no intervals."""
    if not text.replace(",", "").strip():  # unset shell variables: not "no intervals" unsaid
        raise argparse.ArgumentTypeError("names no level; give levels such as 80,95, or none "
                                         "for no intervals")
    if text.strip().lower() == "none":
        return ()
    try:
        return check_levels(text)
    except InvalidTaskInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where the work runs: broker, wait limit, data folder, embedded worker count."""
    parser.add_argument("--broker",
                        help="Redis URL (default: CRYPTO_ML_BROKER_URL, else embedded); "
                        "results are stored there too: CRYPTO_ML_RESULT_BACKEND, another "
                        "cluster's, is then not used")
    parser.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT,
                        help="give up when no result has come for this many seconds; what "
                        f"is left then fails as not come back ({DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--data-dir", type=path_option,
                        help="price data folder, or one file of every coin with a coin "
                        "column (CRYPTO_ML_DATA_DIR)")
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


class Stoppable(Protocol):
    def request_stop(self) -> None: ...


#: Signals that stop a command as Ctrl-C does: a supervisor's stop, a closed terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def stop_on(handler: Callable[[int, object], None]) -> None:
    """``handler`` for every one of :data:`STOP_SIGNALS` that is not ignored (``nohup`` ignores
    SIGHUP: such a command outlives its terminal, as its user asked)."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


def stop_on_signals(manager: Stoppable | None) -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop the run: at once, and by flag should the exception be
    lost.
    A second one while it stops does not interrupt the stopping (that would leave processes
    behind): it kills every process the run started at once (:func:`kill_spawned`)."""

    def again(signum: int, frame: object) -> None:
        kill_spawned()  # the waits of the stopping now end at once

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, again)
        stop_on(again)
        if manager is not None:
            manager.request_stop()
        if not interrupt_later():  # else spawn raises it, once its fork is done
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    stop_on(handler)
