"""What a run produces and who watches it: :class:`RunReport`, :class:`RunObserver`, output lines."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from celery import Celery, states

#: Why a forecast that had not arrived when its run was interrupted failed.
INTERRUPTED = "interrupted before it arrived (Ctrl-C or a stop signal); run again for it"


@dataclass
class RunReport:
    """Everything one run produced: results and failures by coin and model."""

    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def add_result(self, result: dict[str, Any]) -> None:
        self.results.setdefault(result["coin"], {})[result["model"]] = result

    def add_failure(self, coin: str, model: str, reason: str) -> None:
        self.failed.setdefault(coin, {})[model] = reason

    def fail_rest(self, asked: Iterable[tuple[str, str]], reason: str) -> list[tuple[str, str]]:
        """Each (coin, model) of ``asked`` that has neither arrived nor failed fails for
        ``reason``: those, in order."""
        rest = [(c, m) for c, m in dict.fromkeys(asked)
                if m not in self.results.get(c, ()) and m not in self.failed.get(c, ())]
        for coin, model in rest:
            self.add_failure(coin, model, reason)
        return rest

    def forecasts(self, model: str) -> dict[str, np.ndarray]:
        """``{coin: forecast}`` of one model."""
        return {coin: np.asarray(by_model[model]["forecast"], dtype=np.float64)
                for coin, by_model in self.results.items() if model in by_model}

    def to_json(self) -> dict[str, Any]:
        return {"results": self.results, "failed": self.failed}


def failure_reason(meta: dict[str, Any]) -> str:
    """The reason a non-successful task result gives, as the manager prints it."""
    exc = meta.get("result")
    reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    return reason if meta["status"] == states.FAILURE else f"{meta['status']}: {reason}"


def add_meta(report: RunReport, items: Sequence[tuple[str, str]], meta: dict[str, Any],
             on_result: Callable[[dict[str, Any]], None] = lambda result: None,
             on_failure: Callable[[str, str, str], None] = lambda coin, model, reason: None,
             ) -> None:
    """Record one finished task message (a single forecast or a batch) of ``items`` in
    ``report``, calling ``on_result`` / ``on_failure(coin, model, reason)`` for each."""
    if meta["status"] != states.SUCCESS:
        reason = failure_reason(meta)
        for coin, model in items:
            report.add_failure(coin, model, reason)
            on_failure(coin, model, reason)
        return
    results = meta["result"]
    for result in results if isinstance(results, list) else [results]:
        if "error" in result:
            report.add_failure(result["coin"], result["model"], result["error"])
            on_failure(result["coin"], result["model"], result["error"])
        else:
            report.add_result(result)
            on_result(result)


class RunObserver(Protocol):
    """Hooks a run calls as forecasts go out and come back (e.g. :mod:`crypto_ml.core.progress`).

    A protocol: an observer implements the hooks (or subclasses this for no-op defaults).

    One call per (coin, model): a batch message gives several with the same ``task_id``.
    ``on_done`` is called before the run prints anything about that forecast, so an
    observer drawing on the terminal can clear its line first. ``task_id`` is None
    for a coin that failed before dispatch (unreadable data).
    """

    def on_sent(self, app: Celery, task_id: str, coin: str, model: str) -> None:
        """A forecast was published in message ``task_id``."""

    def on_done(self, task_id: str | None, coin: str, model: str,
                result: dict[str, Any] | None, reason: str | None) -> None:
        """A forecast finished: ``result`` on success, else ``reason``."""

    def on_wait(self) -> None:
        """Called at every poll while results are awaited (every 5 to 500 ms)."""


class NullObserver(RunObserver):
    """The observer of a run nobody watches: every hook does nothing."""

    def on_sent(self, app: Celery, task_id: str, coin: str, model: str) -> None:
        return None

    def on_done(self, task_id: str | None, coin: str, model: str,
                result: dict[str, Any] | None, reason: str | None) -> None:
        return None

    def on_wait(self) -> None:
        return None


def format_forecast(coin: str, forecast: np.ndarray, model: str | None = None) -> str:
    """One output line, as the product was first shown: ``bitcoin [[4952.28 ...]]``."""
    array = np.array2string(np.asarray(forecast).reshape(1, -1), max_line_width=sys.maxsize,
                            threshold=sys.maxsize)  # every value, however long the horizon
    return f"{coin} {model} {array}" if model else f"{coin} {array}"
