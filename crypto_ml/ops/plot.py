"""``--plot FILE.png``: each coin's recent closes and its forecast(s), one panel per coin.

Rendered with matplotlib's Agg backend (no display needed). Forecast day ``i``
is ``last_date + i`` days, the way the task's horizon counts days. Each
forecast's prediction intervals are shaded in its colour, the widest palest. One
legend for the whole figure, below the panels: every panel uses the same colours,
and a legend in each covered a third of its history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto_ml.models import REGISTRY

if TYPE_CHECKING:
    import pandas as pd

HISTORY_DAYS = 90
MAX_PANELS = 30
COLUMNS = 3
#: Results by coin, then by model: what a run report holds (``RunReport.results``).
Results = Mapping[str, Mapping[str, Mapping[str, Any]]]


def model_color(model: str) -> str:
    """The model's own colour (declared on its class); red for a name we do not know."""
    cls = REGISTRY.get(model)
    return cls.color if cls is not None else "tab:red"


def picture_problem(path: Path, results: Path | None = None) -> str | None:
    """Why no picture can be written under ``path``'s name (matplotlib picks the format by
    its suffix, and it may not be the ``results`` file), or None."""
    from matplotlib.backend_bases import FigureCanvasBase  # lazy: only a run with --plot

    if results is not None and path.resolve() == results.resolve():
        return "it is --output too; the picture would replace the results: name another file"
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") in formats:
        return None
    return (f"name the picture's file with one of .{', .'.join(sorted(formats))} (the format "
            "follows the name)")


@dataclass(frozen=True)
class PlotInfo:
    """What was drawn: the file, its size in pixels, and each coin's panel box (pixels,
    origin top left: left, top, right, bottom)."""

    path: Path
    size: tuple[int, int]
    panels: dict[str, tuple[int, int, int, int]]
    left_out: list[str]
    legends: int  # legend boxes drawn: one for the figure


def forecast_dates(result: Mapping[str, Any], history: pd.DataFrame) -> pd.DatetimeIndex:
    import pandas as pd  # lazy: a plot is drawn at the end of a run, not at every CLI start

    last = pd.Timestamp(result.get("last_date") or history["Date"].iloc[-1])
    return pd.date_range(last + pd.Timedelta(days=1), periods=len(result["forecast"]), freq="D")


def _shade(ax: Any, dates: list[Any], start: float, intervals: Mapping[str, Any], color: str,
           model: str) -> None:
    """Shade each prediction interval from the last close out, the widest level palest."""
    levels = sorted(intervals, key=float, reverse=True)
    for i, level in enumerate(levels):
        band = intervals[level]
        ax.fill_between(dates, [start, *band["lower"]], [start, *band["upper"]], color=color,
                        alpha=0.12 + 0.1 * i, linewidth=0, label=f"{model} {level}%")


def _panel(ax: Any, coin: str, history: pd.DataFrame, by_model: Mapping[str, Any]) -> None:
    import matplotlib.dates as mdates  # lazy, as in plot_forecasts

    recent = history.dropna(subset=["Close"]).iloc[-HISTORY_DAYS:]
    ax.plot(recent["Date"], recent["Close"], color="black", linewidth=1.2, label="close")
    last = recent["Date"].iloc[-1]
    ax.axvline(last, color="0.6", linestyle="--", linewidth=0.8)
    for model, result in sorted(by_model.items()):
        dates = forecast_dates(result, recent)
        values = [recent["Close"].iloc[-1], *result["forecast"]]
        color = model_color(model)
        ax.plot([last, *dates], values, color=color,
                linewidth=1.6, marker="o", markersize=2.5, label=f"{model} forecast")
        _shade(ax, [last, *dates], values[0], result.get("intervals") or {}, color, model)
    locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_title(coin, fontsize=11)
    ax.set_ylabel("close (USD)")
    ax.grid(True, alpha=0.3)


def plot_forecasts(results: Results, histories: Mapping[str, pd.DataFrame], path: Path,
                   max_panels: int = MAX_PANELS) -> PlotInfo:
    """Draw every coin with a forecast and a history (up to ``max_panels``) into ``path``."""
    import matplotlib  # lazy: matplotlib loads only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coins = [c for c in results if c in histories and len(histories[c])]
    shown, left_out = coins[:max_panels], coins[max_panels:]
    if not shown:
        raise ValueError("nothing to plot: no coin has both a forecast and a price history")
    ncols = min(COLUMNS, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows + 0.6),
                             squeeze=False, dpi=100, layout="constrained")
    horizon = max(len(r["forecast"]) for c in shown for r in results[c].values())
    fig.suptitle(f"crypto-ml: last {HISTORY_DAYS} days and {horizon}-day forecasts")
    for ax, coin in zip(axes.flat, shown, strict=False):
        _panel(ax, coin, histories[coin], results[coin])
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    entries: dict[str, Any] = {}  # label -> handle, first panel first
    for ax in axes.flat[: len(shown)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center",
               ncols=min(len(entries), 5), fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    width, height = (round(v) for v in fig.get_size_inches() * fig.dpi)
    panels = {}
    for ax, coin in zip(axes.flat, shown, strict=False):
        box = ax.get_window_extent()  # display pixels, origin bottom left
        panels[coin] = (int(box.x0), int(height - box.y1), int(box.x1), int(height - box.y0))
    legends = len(fig.legends) + sum(ax.get_legend() is not None for ax in axes.flat)
    plt.close(fig)
    return PlotInfo(path, (width, height), panels, left_out, legends)
