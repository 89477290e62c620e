"""Markdown tables of a backtest for the README: ``python bench/quality_table.py DIR/backtest.json``.

One row per model: coins, MASE mean and median, rel_mae (geometric mean over coins of MAE over
naive's MAE), coins where it beat naive, MAPE, and per interval level the mean coverage (percent
of actuals inside, against the nominal level) and the mean scaled Winkler score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    levels = [f"{float(x):g}" for x in data["config"].get("levels", [])]
    header = ["model", "coins", "MASE mean", "MASE median", "rel_mae", "beats naive", "MAPE %"]
    header += [f"{kind} {lv}" for lv in levels for kind in ("coverage", "Winkler")]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for model, row in data["aggregate"].items():
        n = int(row["n_coins"])
        cells = [model, str(n), f"{row['mase_mean']:.2f}", f"{row['mase_median']:.2f}",
                 f"{row.get('rel_mae', float('nan')):.3f}",
                 f"{int(row.get('beats_naive', 0))}/{n}", f"{row['mape_mean']:.2f}"]
        for lv in levels:
            cells += [f"{row[f'coverage_{lv}_mean']:.1f}", f"{row[f'winkler_{lv}_mean']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}:\n{table(Path(arg))}\n")
