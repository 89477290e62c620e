"""The command line: one ``crypto-ml`` script with a subcommand per job, and its exit codes.

Owns every entry point's argument parsing and the one path from an error to an
exit code (:func:`main`): 0 success; 1 some work failed (each failure listed) or
another crypto-ml error; 2 a usage error (argparse's, as one ``crypto-ml: error:`` line,
:class:`Parser`) or a configuration error (unknown model, missing data,
unreachable broker, a port in use, an unknown coin, an unreadable file), said in one
line before any work starts; 130 interrupted (Ctrl-C, SIGTERM; a second one kills what
the run started). A reader of stdout that leaves (``| head``) ends the run quietly, exit 0.
What every subcommand shows is the same: its output on stdout; on stderr notices,
progress and a summary (``-v``: a line per task too; ``-q``: errors only), see
:mod:`crypto_ml.cli.terminal`. Only this package (and the historical aliases ``crypto_ml.manager`` and
``crypto_ml.data_loader``) reads the environment's settings. May import every
other part of crypto_ml; nothing but the entry points above it (``crypto_ml.__main__``,
``crypto_ml.manager``, ``crypto_ml.api.__main__``) imports it.

=================  ========================================  ============================
Subcommand         What it does                              Module
=================  ========================================  ============================
``send-tasks``     forecast every coin (or ``--coins``)      :mod:`crypto_ml.cli.send`
``backtest``       walk-forward backtest of models           :mod:`crypto_ml.cli.backtest`
``data download``  fetch the top coins' daily history        :mod:`crypto_ml.cli.data`
``cluster up``     run a local Redis + workers until Ctrl-C  :mod:`crypto_ml.cli.cluster`
``flower``         Flower for the configured broker          :mod:`crypto_ml.cli.flower`
``queue-depth``    serve queue depth for autoscalers         :mod:`crypto_ml.cli.queue_depth`
``acl``            Redis users: template, passwords, rules   :mod:`crypto_ml.cli.acl`
=================  ========================================  ============================

``python -m crypto_ml`` is the same command; ``python -m crypto_ml.manager`` and
``python -m crypto_ml.data`` are aliases kept for the commands first shown with them.
:mod:`crypto_ml.cli.worker` is the worker containers' own command (``python -m
crypto_ml.worker start|ping``, also run as ``workers/worker.py``), not a subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from crypto_ml.cli.options import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, stop_on
from crypto_ml.core.errors import ConfigError, CryptoMLError, caused_by_interrupt
from crypto_ml.core.logs import configure as configure_logging
from crypto_ml.core.logs import error_line
from crypto_ml.core.settings import Settings

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "build_parser", "guarded",
           "main"]


#: Subcommand -> the module that defines it (``add_parser``); imported only when needed.
COMMANDS = {"send-tasks": "send", "backtest": "backtest", "data": "data", "cluster": "cluster",
            "flower": "flower", "queue-depth": "queue_depth", "acl": "acl"}


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line on stderr, ``crypto-ml: error: ...``
    and where to read more, then exit 2 (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"crypto-ml: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """``crypto-ml 0.1.0``: the installed distribution's version."""
    try:
        return f"crypto-ml {importlib.metadata.version('crypto-ml')}"
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return "crypto-ml (version unknown: not installed)"


EPILOG = """examples:
  crypto-ml send-tasks --coins bitcoin,ethereum --model linear
  crypto-ml backtest --coins bitcoin --model naive,linear,theta
  crypto-ml data download --top 20

exit codes: 0 success; 1 some work failed (each failure listed); 2 a usage or
configuration error, said in one line before any work starts; 130 interrupted.
"""


def build_parser(prog: str = "crypto-ml", only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``only`` (a start-up of one command imports one
    subcommand's module, not the whole package: ``send-tasks`` starts without pandas)."""
    parser = Parser(
        prog=prog, description="Distributed price forecasts: dispatch them to Celery workers "
        "and collect them, backtest models, get data, run a local cluster and its tools.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)
    for command, module in COMMANDS.items():
        if only in (None, command):
            # lazy by design (CLI start-up speed): import only the subcommand being run
            importlib.import_module(f"crypto_ml.cli.{module}").add_parser(sub)
    return parser


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def guarded(command: Callable[[], int], interrupted: str | None) -> int:
    """Run ``command``; the one place where an error becomes an exit code and one line
    (every subcommand, and the container entry points crypto_ml.cli.worker and manager/job.py).

    ``interrupted`` is what a Ctrl-C or SIGTERM left behind, or None where that is the
    normal way to stop (servers): exit 0.
    """
    try:
        return command()
    except ConfigError as exc:
        print(error_line(f"crypto-ml: error: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    except CryptoMLError as exc:
        print(error_line(f"crypto-ml: error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return _stopped(interrupted)
    except BrokenPipeError:
        raise  # stdout's reader left: main() ends the run quietly
    except OSError as exc:  # a path no check could read (a folder this user may not enter)
        why = (f"{exc.strerror}: {exc.filename}; check the path and its permissions"
               if exc.filename else f"{exc.strerror or exc}")  # stdout on a full disk, say
        print(error_line(f"crypto-ml: error: {why}"), file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        if not caused_by_interrupt(exc):
            raise
        return _stopped(interrupted)  # a Ctrl-C that landed inside an import (a RuntimeError)


def _stopped(interrupted: str | None) -> int:
    if interrupted is None:
        return EXIT_OK
    print(f"crypto-ml: interrupted{'; ' if interrupted else ''}{interrupted}", file=sys.stderr)
    return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: its logging, SIGTERM as Ctrl-C, errors as exit codes."""
    stop_on(_stop_on_sigterm)  # SIGTERM and SIGHUP as Ctrl-C

    def command() -> int:
        log_format = getattr(args, "log_format", None) or Settings.from_env().log_format
        quiet = bool(getattr(args, "quiet", False))  # errors only
        level = "error" if quiet else (getattr(args, "log_level", None) or "warning")
        configure_logging(log_format, level.upper(), sys.stderr, quiet=quiet)
        return int(args.run(args))

    return guarded(command, _left_behind(args))


def _left_behind(args: argparse.Namespace) -> str | None:
    """What a Ctrl-C leaves as the command's ``interrupted`` line says, less the local
    cluster where the command runs on a broker (``--broker`` or ``CRYPTO_ML_BROKER_URL``)."""
    line: str | None = args.interrupted
    if not line or "broker" not in vars(args):
        return line
    try:
        broker = args.broker or Settings.from_env().broker_url
    except ConfigError:  # the command itself says so, in one line, when it runs
        return line
    return "" if broker else line  # its queued tasks: the engine says what became of them


def main(argv: Sequence[str] | None = None, prog: str = "crypto-ml") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(prog, first if first in COMMANDS else None)
    except (KeyboardInterrupt, Exception) as exc:  # a Ctrl-C while the command imports
        if not caused_by_interrupt(exc):
            raise
        return _stopped("nothing was started")
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "pass_through", False):
        command = f"{prog} {args.command}"  # the help that lists the command's own options
        parser.exit(EXIT_CONFIG, f"crypto-ml: error: unrecognized arguments: {' '.join(extra)} "
                                 f"(see {command} --help)\n")
    args.extra = extra
    try:
        return run(args)
    except BrokenPipeError:  # stdout's reader left (`| head`): stop quietly, as `cat` does
        return _reader_gone()


def _reader_gone() -> int:
    """Point stdout at /dev/null (so the exit's flush cannot fail again) and exit 0."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OK
