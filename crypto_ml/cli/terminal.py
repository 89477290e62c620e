"""What a command shows in the terminal: forecast lines on stdout, its progress, notices and
summary on stderr, and how long the whole run took.

stdout carries the forecasts only, in one format for every run (``--format``):

* ``text`` (default): ``coin model [[f1 f2 ...]]``, one line per forecast, the coin's id,
  the model that made it and the forecast as numpy prints a 1 x horizon array;
* ``json-lines``: one JSON object per forecast, the result ``--output`` holds
  (``coin, model, horizon, forecast, last_date, n_points, fit_seconds, worker, device``).

stderr follows the rule of :func:`crypto_ml.cli.options.add_log_options`: notices,
progress and the summary by default (the console loggers of :mod:`crypto_ml.core.logs`),
a line per task with ``-v``, only errors and failures with ``-q``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO, cast

import numpy as np

from crypto_ml import IMPORTED_AT
from crypto_ml.core.logs import LogWriter
from crypto_ml.core.progress import Progress, is_terminal
from crypto_ml.core.settings import Settings
from crypto_ml.dispatch.report import format_forecast

if TYPE_CHECKING:
    from crypto_ml.cli.requests import Stderr

FORMATS = ("text", "json-lines")
console = logging.getLogger("crypto_ml.console")


def seconds_since_start() -> float:
    """Seconds since this command started: since the process imported ``crypto_ml``
    (:data:`crypto_ml.IMPORTED_AT`), which is before any of its own work."""
    return time.monotonic() - IMPORTED_AT


def console_writer() -> TextIO:
    """A stream for notices that writes each line to the console logger (hidden by ``-q``)."""
    return cast(TextIO, LogWriter(console))


def draws_bar(quiet: bool, log_format: str) -> bool:
    """Whether progress is a bar redrawn on stderr: a terminal (not a dumb one, which shows
    control codes as text: :func:`~crypto_ml.core.progress.is_terminal`), text logs, not
    ``-q``."""
    return is_terminal(sys.stderr) and log_format != "json" and not quiet


def progress_stream(quiet: bool, log_format: str) -> TextIO:
    """Where a progress bar draws: stderr if it :func:`draws_bar`, else the console logger
    (which a bar writes plain lines to, hidden by ``-q``)."""
    return sys.stderr if draws_bar(quiet, log_format) else console_writer()


def make_progress(stderr: Stderr) -> Progress:
    """The run's progress: a bar on a terminal's stderr (text logs, not ``-q``), else a few
    plain lines through the console logger."""
    return Progress(sys.stderr, tty=draws_bar(stderr.quiet, stderr.log_format))


class ForecastWriter:
    """Writes each forecast to ``out`` as it arrives, in one of :data:`FORMATS`."""

    def __init__(self, out: TextIO, fmt: str = "text") -> None:
        self.out, self.format = out, fmt

    def __call__(self, result: dict[str, Any]) -> None:
        if self.format == "json-lines":
            line = json.dumps(result, separators=(",", ":"), allow_nan=True)
        else:
            line = format_forecast(result["coin"], np.asarray(result["forecast"]),
                                   result["model"])
        print(line, file=self.out, flush=True)


def flower_option(flower: bool, settings: Settings) -> dict[str, Any]:
    """``--flower``: the embedded cluster starts Flower; with a broker, say how to run it."""
    if not flower:
        return {}
    if settings.broker_url:
        console.info("--flower starts Flower for the embedded cluster only; for your broker run "
                     "`crypto-ml flower` (docs/operations.md#monitoring)")
        return {}
    return {"flower": settings}
