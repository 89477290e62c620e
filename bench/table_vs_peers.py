"""Table runs against statsforecast (alone, on Dask, on Ray), side by side in one run.

    python -m bench.table_vs_peers --series 100000 --length 200 --models naive,theta,ets

For each model, this project's whole command as a user runs it on the embedded default
(``python -m crypto_ml send-tasks --input T --output O --model M``: Redis and 2 workers
started and stopped, the table read, the forecasts written) and each peer's whole job
(:func:`bench.table_peers.run_peer`: its imports, its cluster, reading, forecasting,
writing) run one after another on the same table, the same cores and the same horizon and
levels. The figure is whole-job series per second and its ratio to the best peer's.
Results: ``bench/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.make_table import make_table
from bench.table_peers import run_peer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def run_ours(model: str, table: Path, out: Path, horizon: int, levels: str,
             series: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "crypto_ml", "send-tasks", "--input", str(table),
               "--output", str(out), "--model", model, "--horizon", str(horizon),
               "--levels", levels, "--overwrite", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**env, "CRYPTO_ML_WORKERS": "2"},
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    return {"peer": "crypto-ml", "model": model, "series": series, "wall_s": round(wall, 2),
            "series_per_s": round(series / wall, 1), "ok": done.returncode == 0,
            **({} if done.returncode == 0 else {"error": done.stderr[-2000:]})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--models", default="naive,theta,ets")
    parser.add_argument("--peers", default="statsforecast,dask,ray")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--levels", default="80,95", help="80,95 or none")
    parser.add_argument("--work", type=Path, default=Path("/tmp/crypto-ml-bench"))
    parser.add_argument("--name", default="table_vs_peers")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table = args.work / f"windows-{args.series}x{args.length}.parquet"
    if not table.exists():
        make_table(table, args.series, args.length)
    levels = None if args.levels == "none" else [int(x) for x in args.levels.split(",")]
    rows = []
    for model in args.models.split(","):
        ours = run_ours(model, table, args.work / f"ours-{model}.parquet", args.horizon,
                        args.levels, args.series)
        peers = [run_peer(p, model, table, args.work / f"{p}-{model}.out", args.horizon, levels)
                 for p in args.peers.split(",")]
        best = max((p for p in peers if p["ok"]), key=lambda p: p["series_per_s"], default=None)
        ours["ratio_to_best_peer"] = (round(ours["series_per_s"] / best["series_per_s"], 2)
                                      if best and ours["ok"] else None)
        ours["best_peer"] = best["peer"] if best else None
        rows += [ours, *peers]
        print(json.dumps(ours), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"`python -m bench.table_vs_peers --series {args.series} --length {args.length} "
             f"--models {args.models} --levels {args.levels}` (2 cores; whole jobs)", "",
             "| model | system | wall s | series/s | vs best peer |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("ratio_to_best_peer")
        versus = "" if ratio is None else f"{ratio}x ({r['best_peer']})"
        rate = r.get("series_per_s", "failed") if r["ok"] else "failed"
        lines.append(f"| {r['model']} | {r['peer']} | {r['wall_s']} | {rate} | {versus} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
