"""Table runs' cost curve: time, manager memory and Redis memory at 10k, 100k and 1M series.

    python -m bench.table_curve [--sizes 10000,100000,1000000] [--length 100] [--model linear]

For each size it makes the table from windows of the real coins (:mod:`bench.make_table`),
starts one ``crypto-ml cluster up --workers 2`` for all sizes, and runs the user's command,
``python -m crypto_ml send-tasks --input T --output O --model M --broker URL``, while
sampling the manager's peak resident memory (``VmHWM``) and Redis's ``used_memory`` every
50 ms. Beside it, the fit time of the same forecasts in one process (the same batch path,
:func:`crypto_ml.models.batch.predict_batch`, chunk by chunk, reading excluded): the bound
a perfect 2-core cluster would approach is that time / 2.

Beside the fit, what no design can skip, timed in the same process: ``read_s``, reading the
table and cutting it into the chunks' windows (the loop above without the fits), and
``write_s``, writing the run's own output table again (read back into Arrow first, untimed).
``least_ratio`` is ``(fit + read + write) / fit``: the ratio to fit / cores that a perfect
cluster would reach if reading and writing were spread over the cores as well as the fits.
``values_read_s``: pyarrow alone reading the table's value column (``pq.read_table(T,
columns=["y"])`` to numpy, on all cores), the least any reader of the table pays.
Results: ``bench/results/table_curve.json``, ``.md`` and ``table_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis

from bench.make_table import make_table
from crypto_ml.data.table import TableSource
from crypto_ml.models import model_class
from crypto_ml.models.batch import predict_batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


class Sampler(threading.Thread):
    """Peak VmHWM of a process and peak ``used_memory`` of a Redis, every 50 ms."""

    def __init__(self, pid: int, admin_url: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.client = pid, redis.Redis.from_url(admin_url)
        self.rss_kb = self.redis_bytes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM"):
                        self.rss_kb = max(self.rss_kb, int(line.split()[1]))
            except OSError:
                pass
            self.redis_bytes = max(self.redis_bytes, int(self.client.info("memory")["used_memory"]))
            self.done.wait(0.05)


def start_cluster(workers: int) -> tuple[subprocess.Popen[str], str, str]:
    """``crypto-ml cluster up``; its process, the manager's URL and the operator's URL."""
    proc = subprocess.Popen([sys.executable, "-m", "crypto_ml", "cluster", "up", "--workers",
                             str(workers)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "default:" in line:
            break
    text = "".join(lines)
    manager = re.search(r"CRYPTO_ML_BROKER_URL='([^']+)'", text)
    admin = re.search(r"default: (\S+)", text)
    assert manager and admin, text
    return proc, manager.group(1), admin.group(1)


def in_process_seconds(table: Path, model: str, horizon: int, levels: tuple[float, ...],
                       chunk: int) -> tuple[float, float]:
    """Seconds the forecasts themselves take in one process, and the reading around them."""
    began = time.perf_counter()
    source = TableSource(table)
    source.check()
    cls = model_class(model)
    window = cls.default_max_points
    took = 0.0
    for part in source.chunks(chunk):
        ends = part.lengths.cumsum()
        series = [part.values[e - n : e][-window:] for n, e in zip(part.lengths, ends, strict=True)]
        started = time.perf_counter()
        predict_batch(cls, series, horizon, levels)
        took += time.perf_counter() - started
    return took, time.perf_counter() - began - took


def values_read_seconds(table: Path) -> float:
    """Seconds pyarrow takes to read the value column alone into numpy (all cores)."""
    started = time.perf_counter()
    pq.read_table(table, columns=["y"]).column(0).to_numpy()
    return time.perf_counter() - started


def write_seconds(out: Path) -> float:
    """Seconds writing the output table ``out`` takes once it is in memory."""
    forecasts = pq.read_table(out)
    started = time.perf_counter()
    pq.write_table(forecasts, out.with_suffix(".again.parquet"))
    took = time.perf_counter() - started
    out.with_suffix(".again.parquet").unlink()
    return took


def run_size(size: int, args: argparse.Namespace, broker: str, admin: str) -> dict[str, Any]:
    table = args.work / f"windows-{size}x{args.length}.parquet"
    if not table.exists():
        make_table(table, size, args.length)
    out = args.work / f"forecast-{size}.parquet"
    command = [sys.executable, "-m", "crypto_ml", "send-tasks", "--input", str(table),
               "--output", str(out), "--model", args.model, "--horizon", str(args.horizon),
               "--overwrite", "--broker", broker, "-q"]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CRYPTO_ML_WORKERS": str(args.workers)})
    sampler = Sampler(proc.pid, admin)
    sampler.start()
    _, err = proc.communicate()
    wall = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    assert proc.returncode == 0, err
    fit, read = in_process_seconds(table, args.model, args.horizon, (80.0, 95.0),
                                   model_class(args.model).series_per_message)
    write = write_seconds(out)
    return {"series": size, "closes": args.length, "model": args.model, "wall_s": round(wall, 2),
            "series_per_s": round(size / wall), "manager_peak_rss_mb": round(sampler.rss_kb / 1024),
            "redis_peak_used_mb": round(sampler.redis_bytes / 2**20, 1),
            "in_process_fit_s": round(fit, 2),
            "ratio_to_fit_over_cores": round(wall / (fit / args.workers), 2),
            "read_s": round(read, 2), "write_s": round(write, 2),
            "values_read_s": round(values_read_seconds(table), 2),
            "least_ratio": round((fit + read + write) / fit, 2)}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["series"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(axes, ("wall_s", "manager_peak_rss_mb", "redis_peak_used_mb"),
                              ("whole command, s", "manager peak RSS, MB", "Redis peak used, MB"),
                              strict=True):
        ax.plot(n, [r[key] for r in rows], "o-")
        ax.set_xscale("log")
        ax.set_xlabel("series")
        ax.set_title(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(f"table runs, {rows[0]['model']} with 80/95 intervals, "
                 f"{rows[0]['closes']} closes a series, 2 workers")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--model", default="linear")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/crypto-ml-bench"))
    parser.add_argument("--name", default="table_curve")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cluster, broker, admin = start_cluster(args.workers)
    try:
        rows = [run_size(int(s), args, broker, admin) for s in args.sizes.split(",")]
    finally:
        cluster.terminate()
        cluster.wait(60)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = list(rows[0])
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    (RESULTS / f"{args.name}.md").write_text(
        f"`python -m bench.table_curve --sizes {args.sizes} --length {args.length} --model "
        f"{args.model}`\n\n" + "\n".join(table) + "\n")
    plot(rows, RESULTS / f"{args.name}.png")
    print("\n".join(table))


if __name__ == "__main__":
    main()
