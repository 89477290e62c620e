"""Table runs against statsforecast (alone, on Dask, on Ray), side by side in one run.

    python -m bench.table_vs_peers --series 100000 --length 200 --models naive,theta,ets

For each model, this project's whole command as a user runs it on the embedded default
(``python -m crypto_ml send-tasks --input T --output O --model M``: Redis and 2 workers
started and stopped, the table read, the forecasts written) and each peer's whole job
(:func:`bench.table_peers.run_peer`: its imports, its cluster, reading, forecasting,
writing) run one after another on the same table, the same cores and the same horizon and
levels. The figure is whole-job series per second and its ratio to the best peer's.

``--log-peers`` also runs each peer on the log of the closes (``y`` replaced by ``log y`` in a
second table, written before the clocks start): this project's ``ets``, ``theta`` and
``arima`` fit statsforecast's classes to log closes (:mod:`crypto_ml.models.statistical`),
and on these windows AutoTheta takes about 8.4 ms a series on plain log closes against
6.4 ms on raw ones (the optimiser's path depends on the scale). For ``ets`` and ``arima``
the peers' log rows are the same numerical work as this project's, so their ratio measures
the systems, not the models' inputs; ``theta`` fits its log closes at a working scale of its
own (``error_scale``), so its log row is the same model on plain log closes. The peers'
forecasts stay in log units (mapping back is left out, in the peers' favour).
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

import pyarrow.compute as pc
import pyarrow.parquet as pq

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


def log_table(table: Path) -> Path:
    """A copy of ``table`` with ``y`` replaced by its natural log, row group by row group."""
    out = table.with_name(table.stem + "-log.parquet")
    if out.exists():
        return out
    source = pq.ParquetFile(table)
    with pq.ParquetWriter(out.with_suffix(".tmp"), source.schema_arrow) as writer:
        for i in range(source.num_row_groups):
            group = source.read_row_group(i)
            at = group.schema.get_field_index("y")
            writer.write_table(group.set_column(at, "y", pc.ln(group["y"])))
    out.with_suffix(".tmp").replace(out)
    return out


def run_peers(peers: list[str], model: str, table: Path, work: Path, horizon: int,
              levels: list[int] | None, label: str = "") -> list[dict[str, Any]]:
    rows = []
    for peer in peers:
        row = run_peer(peer, model, table, work / f"{peer}{label}-{model}.out", horizon, levels)
        rows.append({**row, "peer": peer + (" (log y)" if label else "")})
    return rows


def ratio(ours: dict[str, Any], peers: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    best = max((p for p in peers if p["ok"]), key=lambda p: p["series_per_s"], default=None)
    if best is None or not ours["ok"]:
        return None, None
    return round(ours["series_per_s"] / best["series_per_s"], 2), best["peer"]


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
    parser.add_argument("--log-peers", action="store_true",
                        help="also run each peer on log closes: the same work as ours")
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
        peers = run_peers(args.peers.split(","), model, table, args.work, args.horizon, levels)
        ours["ratio_to_best_peer"], ours["best_peer"] = ratio(ours, peers)
        if args.log_peers:
            same = run_peers(args.peers.split(","), model, log_table(table), args.work,
                             args.horizon, levels, label="-log")
            ours["ratio_to_best_log_peer"], ours["best_log_peer"] = ratio(ours, same)
            peers += same
        rows += [ours, *peers]
        print(json.dumps(ours), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"`python -m bench.table_vs_peers --series {args.series} --length {args.length} "
             f"--models {args.models} --levels {args.levels}"
             f"{' --log-peers' if args.log_peers else ''}` (2 cores; whole jobs)", "",
             "| model | system | wall s | series/s | vs best peer | vs best peer on log y |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        versus = [f"{r[k]}x ({r[p]})" if r.get(k) is not None else ""
                  for k, p in (("ratio_to_best_peer", "best_peer"),
                               ("ratio_to_best_log_peer", "best_log_peer"))]
        rate = r.get("series_per_s", "failed") if r["ok"] else "failed"
        lines.append(f"| {r['model']} | {r['peer']} | {r['wall_s']} | {rate} | "
                     f"{versus[0]} | {versus[1]} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
