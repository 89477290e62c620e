"""Log lines for people (``text``) or for log collectors (``json``, one object per line).

The manager logs one line per task (:func:`log_task`: task id, coin, model,
worker, seconds); workers log one per task too (:mod:`crypto_ml.worker.tasks`).
Structured values travel in a record's ``fields`` attribute (``extra={"fields":
{...}}``), which the JSON formatter merges into the object it writes.

What a command says to the person running it (notices, plain progress lines, the
summary) goes through the *console* loggers (:data:`CONSOLE_LOGGERS`): shown at
INFO unless ``--quiet``, while the rest of crypto_ml logs at ``--log-level``
(WARNING unless ``-v``). In ``text`` format console lines are written bare, without
time and level; in ``json`` format they are JSON objects like every other line.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("crypto_ml.manager")
#: Loggers of what a command says to its user: shown unless --quiet, bare in text format.
CONSOLE_LOGGERS = ("crypto_ml.console", "crypto_ml.progress", "crypto_ml.summary")
console = logging.getLogger("crypto_ml.console")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, except console lines, which are their message alone, and, with
    ``plain``, a warning or an error: ``warning: MESSAGE``, as a command's other lines (the
    time and logger are for ``-v``, whose task lines they order)."""

    def __init__(self, plain: bool = False) -> None:
        super().__init__(TEXT_FORMAT)
        self.plain = plain

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info:
            return super().format(record)
        if record.name.startswith(CONSOLE_LOGGERS):
            return record.getMessage()
        if self.plain and record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {record.getMessage()}"
        return super().format(record)


def formatter(log_format: str, plain: bool = False) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter(plain)


def configure(log_format: str, level: int | str, stream: TextIO, quiet: bool = False) -> None:
    """The CLI's logging: WARNING and up from everything, ``level`` from crypto_ml, and the
    console loggers at INFO. ``quiet`` is errors only: ERROR from everything (no warning
    such as a skipped file), and the console loggers at WARNING (the run's failures)."""
    handler = logging.StreamHandler(stream)
    threshold = logging.getLevelName(level) if isinstance(level, str) else level
    handler.setFormatter(formatter(log_format, plain=threshold > logging.INFO))  # not -v
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    logging.getLogger("crypto_ml").setLevel(level)
    for name in CONSOLE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    logging.captureWarnings(True)  # library warnings in the same format, not raw on stderr


def error_line(line: str) -> str:
    """A command's one error ``line`` as its console says it: a JSON object when the logs are
    (``--log-format json``), so that a log pipeline reads the refusal too."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        return JsonFormatter().format(logging.makeLogRecord(
            {"name": "crypto_ml.cli", "levelno": logging.ERROR, "levelname": "ERROR",
             "msg": line}))
    return line


def use_format(logger: logging.Logger, log_format: str) -> None:
    """Switch every handler of ``logger`` to ``log_format`` (workers, after Celery set them up)."""
    if log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


def log_task(task_id: str, coin: str, model: str, result: dict[str, Any] | None = None,
             reason: str | None = None) -> None:
    """The manager's line for one finished task."""
    fields: dict[str, Any] = {"task_id": task_id, "coin": coin, "model": model}
    if result is not None:
        fields.update(status="ok", worker=result["worker"], seconds=result["fit_seconds"],
                      closes_to=result.get("last_date"))
        # closes_to tells apart the forecasts of one message (a backtest's origins of a coin)
        log.info("task %s ok: coin=%s model=%s worker=%s seconds=%.3f closes_to=%s", task_id,
                 coin, model, result["worker"], result["fit_seconds"], result.get("last_date"),
                 extra={"fields": fields})
    else:
        fields.update(status="failed", reason=reason)
        log.info("task %s failed: coin=%s model=%s: %s", task_id, coin, model, reason,
                 extra={"fields": fields})


class LogWriter(io.TextIOBase):
    """A text stream that logs each whole line written to it (plain notices, in JSON mode)."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        super().__init__()
        self.logger, self.level, self.pending = logger, level, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, line.strip())
        return len(text)

    def isatty(self) -> bool:
        return False
