"""A backtest's results for people and programs: terminal table, JSON, CSV and a PNG chart."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crypto_ml.backtest.engine import BacktestResult, printable
from crypto_ml.backtest.metrics import METRICS, interval_metric_names
from crypto_ml.core.errors import OutputUnwritable


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join
    out = [line(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                                  strict=True)))]
    out += [line(c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join(out)


def per_coin_table(result: BacktestResult) -> str:
    """One row per coin: each model's MASE and the best model."""
    models = list(result.config.models)
    best = result.best()
    rows = [[printable(coin), *(_num(by[m]["mase"]) if m in by else "failed" for m in models),
             best[coin][0]] for coin, by in sorted(result.per_coin.items())]
    return _grid(["coin (MASE)", *models, "best"], rows)


def aggregate_table(result: BacktestResult) -> str:
    """One row per model: mean (and median) of each metric over the common coins, rel_mae
    (geometric mean), coverage (percent, against the nominal level) and scaled Winkler score."""
    agg = result.aggregate()
    header = ["model", "coins", "MAE", "RMSE", "MAPE %", "MASE", "MASE med."]
    naive = "naive" in result.config.models
    if naive:
        header += ["rel_mae", "beats naive"]
    interval = interval_metric_names(result.config.levels)
    header += [m.replace("coverage_", "cov ").replace("winkler_", "wink ") for m in interval]
    rows = []
    for model, row in agg.items():
        cells = [model, str(int(row["n_coins"])), *(_num(row[f"{m}_mean"]) for m in METRICS),
                 _num(row["mase_median"])]
        if naive:
            cells += [_num(row["rel_mae"]), f"{int(row['beats_naive'])}/{int(row['n_coins'])}"]
        cells += [_num(row[f"{m}_mean"]) for m in interval]
        rows.append(cells)
    return _grid(header, rows)


def window_table(results: dict[str, BacktestResult]) -> str:
    """Per model and window: mean MASE, median MASE, rel_mae and coverage; ``*`` marks each
    model's best window by mean MASE."""
    first = next(iter(results.values()))
    interval = [m for m in interval_metric_names(first.config.levels) if m.startswith("cov")]
    header = ["model", "window", "coins", "MASE", "MASE med.", "rel_mae", *interval]
    rows = []
    for model in first.config.models:
        by_window = {w: r.aggregate()[model] for w, r in results.items()}
        best = min(by_window, key=lambda w: by_window[w]["mase_mean"])
        for window, row in by_window.items():
            rows.append([model, window + (" *" if window == best else ""), str(int(row["n_coins"])),
                         _num(row["mase_mean"]), _num(row["mase_median"]),
                         _num(row.get("rel_mae", math.nan)),
                         *(_num(row[f"{m}_mean"]) for m in interval)])
    return _grid(header, rows)


def summary(result: BacktestResult) -> str:
    """What a terminal shows: the per-coin table, the aggregate, and what is missing."""
    cfg = result.config
    parts = [per_coin_table(result), "",
             f"aggregate over {len(result.common_coins())} coin(s) that every model scored "
             f"(mean over coins; MAE/RMSE mix price scales, compare MASE; rel_mae: geometric "
             f"mean of MAE / naive's MAE; cov: % of actuals inside the interval, to compare "
             f"with its level; wink: Winkler score / naive scale): horizon {cfg.horizon}, "
             f"{cfg.origins} origin(s) {cfg.stride} day(s) apart; "
             f"{len(result.per_coin)} coin(s) scored in {result.wall_seconds:.0f} s",
             aggregate_table(result)]
    for coin, by_model in sorted(result.failed.items()):
        parts += [f"failed: {printable(coin)} {m}: {why}" for m, why in by_model.items()]
    if result.skipped:
        parts.append(f"skipped {len(result.skipped)} coin(s): " + ", ".join(
            f"{printable(c)} ({why})" for c, why in sorted(result.skipped.items())))
    return "\n".join(parts)


def write_json(result: BacktestResult, path: Path) -> None:
    """``backtest.json``: strict JSON, a score that is no finite number (NaN, inf) as null."""
    path.write_text(json.dumps(_strict(result.to_json()), indent=1, allow_nan=False) + "\n")


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def write_csv(result: BacktestResult, path: Path) -> None:
    """Rows ``coin, model, n_forecasts, mae, rmse, mape, mase, rel_mae, coverage_80, ...``;
    then ``*mean*`` and ``*median*`` rows (rel_mae there: the geometric mean)."""
    metrics = [*METRICS, *interval_metric_names(result.config.levels)]
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["coin", "model", "n_forecasts", *METRICS, "rel_mae", *metrics[len(METRICS):]])
        for coin, by_model in sorted(result.per_coin.items()):
            for model, s in by_model.items():
                out.writerow([coin, model, s["n_forecasts"], *(s[m] for m in METRICS),
                              s.get("rel_mae", ""), *(s.get(m, "") for m in metrics[len(METRICS):])])
        for model, row in result.aggregate().items():
            for stat in ("mean", "median"):
                out.writerow([f"*{stat}*", model, int(row["n_coins"]),
                              *(row[f"{m}_{stat}"] for m in METRICS), row.get("rel_mae", ""),
                              *(row[f"{m}_{stat}"] for m in metrics[len(METRICS):])])


def write_chart(result: BacktestResult, path: Path) -> None:
    """Box plot of per-coin MASE by model (mean marked, log scale), with the MASE = 1 line."""
    import matplotlib  # lazy: matplotlib loads only when a chart is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coins = result.common_coins()
    models = list(result.config.models)
    data = [[min(result.per_coin[c][m]["mase"], 1e6) for c in coins] for m in models]
    fig, ax = plt.subplots(figsize=(1.6 * len(models) + 3, 4.5))
    if coins:
        ax.boxplot(data, showmeans=True, showfliers=True)
        ax.set_xticks(range(1, len(models) + 1), models)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="MASE = 1 (in-sample naive)")
    if coins and min(min(d) for d in data) > 0:
        ax.set_yscale("log")
    ax.set_ylabel("MASE per coin (lower is better)")
    cfg = result.config
    ax.set_title(f"Backtest: {len(coins)} coins, horizon {cfg.horizon}, {cfg.origins} origins")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: What a backtest writes into its ``--out`` folder
FILES = ("backtest.json", "backtest.csv", "backtest.png")


def write_all(result: BacktestResult, folder: Path) -> list[Path]:
    """``backtest.json``, ``backtest.csv`` and ``backtest.png`` in ``folder``;
    OutputUnwritable, in one line, when the folder refuses them (a full disk, say)."""
    paths = [folder / name for name in FILES]
    with refused_as_unwritable(folder):
        folder.mkdir(parents=True, exist_ok=True)
        write_json(result, paths[0])
        write_csv(result, paths[1])
        write_chart(result, paths[2])
    return paths


@contextlib.contextmanager
def refused_as_unwritable(folder: Path) -> Iterator[None]:
    """An OSError while writing into ``folder`` (a full disk, say) as OutputUnwritable: one
    line, the tables having been printed."""
    try:
        yield
    except OSError as exc:
        raise OutputUnwritable(f"could not write the backtest into {folder} "
                               f"({exc.strerror or exc}); its tables are printed above") from None
