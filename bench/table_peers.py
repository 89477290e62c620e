"""The peers of the table runs: statsforecast alone, on Dask and on Ray, on the same table.

    python -m bench.table_peers --input T.parquet [--models naive,theta,ets]
        [--peers statsforecast,dask,ray] [--horizon 10] [--levels 80,95|none]
        [--out bench/results/table_peers.json]

Each peer computes the same models (``naive``: ``Naive()``, ``theta``:
``AutoTheta(season_length=1)``, ``ets``: ``AutoETS(season_length=1)``, one model a job)
on the table of :mod:`bench.make_table`, with 80 and 95 % intervals (``--levels none``:
point forecasts), timed as a whole job in its own subprocess (imports and cluster
start-up included; a crash is reported and the next job runs):

- ``statsforecast``: ``StatsForecast(models=[m], freq="D", n_jobs=2).forecast(df=<pandas
  frame>, h=H, level=...)``; the frame read with pyarrow (``ds`` as datetime64), the
  forecasts written with ``DataFrame.to_parquet`` (a file);
- ``dask``: the same call given ``dd.read_parquet(T)`` (a partition per row group, at least
  4 per worker), on a
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` with its client current:
  statsforecast hands a Dask frame to its fugue backend, which returns a Dask frame,
  written with ``to_parquet`` (a folder);
- ``ray``: the same call given ``ray.data.read_parquet(T)`` after ``ray.init(num_cpus=2)``
  (statsforecast's documented Ray usage: a Ray Dataset in, a Ray Dataset out through
  fugue's Ray engine), written with ``write_parquet`` (a folder).

Figures per job: ``wall_s`` (the whole subprocess), ``inner_s`` (read + forecast + write,
timed inside it, with ``read_s``/``forecast_s``/``write_s``; lazy frames make Dask and Ray
do their reading and forecasting inside ``write_s``), ``series_per_s`` (series / wall)
and ``inner_series_per_s``, and the peak memory of the subprocess tree (cluster
processes included), sampled every 0.2 s with psutil: ``peak_rss_mb`` (the sum of the
processes' RSS: shared pages, e.g. Ray's object store, count once per process mapping
them) and ``peak_pss_mb`` (the sum of their PSS, shared pages split). Every process of a
job gets one math thread (:func:`crypto_ml.core.settings.threads_env`), as the cluster's
workers do. The job checks its output holds ``series x horizon`` rows.

:func:`run_peer` runs one job, so another script can time peers beside this project's own
command. Results: ``bench/results/table_peers.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PEERS = ("statsforecast", "dask", "ray")
MODELS = ("naive", "theta", "ets")
WORKERS = 2


# --- the job, in the subprocess ------------------------------------------------------------


def _model(name: str) -> Any:
    from statsforecast.models import AutoETS, AutoTheta, Naive

    makers = {"naive": Naive, "theta": lambda: AutoTheta(season_length=1),
              "ets": lambda: AutoETS(season_length=1)}
    if name not in makers:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(MODELS)}")
    return makers[name]()


def _count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _phases(read: Callable[[], Any], forecast: Callable[[Any], Any],
            write: Callable[[Any], Any]) -> dict[str, float]:
    """Run read -> forecast -> write, timing each phase (the peers' own frames between)."""
    t0 = time.perf_counter()
    frame = read()
    t1 = time.perf_counter()
    forecasts = forecast(frame)
    t2 = time.perf_counter()
    write(forecasts)
    t3 = time.perf_counter()
    return {"read_s": t1 - t0, "forecast_s": t2 - t1, "write_s": t3 - t2}


def _job_statsforecast(model: Any, input_path: Path, out_path: Path, horizon: int,
                       levels: list[int] | None) -> dict[str, float]:
    import pyarrow.parquet as pq
    from statsforecast import StatsForecast

    return _phases(
        # ds as datetime64, not objects
        lambda: pq.read_table(input_path).to_pandas(date_as_object=False),
        lambda df: StatsForecast(models=[model], freq="D", n_jobs=WORKERS).forecast(
            df=df, h=horizon, level=levels),
        lambda forecasts: forecasts.to_parquet(out_path, index=False))


def _partitioned(ddf: Any) -> Any:
    return ddf.repartition(npartitions=max(ddf.npartitions, 4 * WORKERS))


def _job_dask(model: Any, input_path: Path, out_path: Path, horizon: int,
              levels: list[int] | None) -> dict[str, float]:
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster
    from statsforecast import StatsForecast

    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        return _phases(
            # date32 reaches the models as objects; one partition per row group, and at least
            # 4 per worker (a one-file table is read as one partition, which fugue's group-by
            # keeps on one worker while the other idles)
            lambda: _partitioned(dd.read_parquet(input_path, split_row_groups=True)).astype(
                {"ds": "datetime64[ns]"}),
            lambda ddf: StatsForecast(models=[model], freq="D").forecast(df=ddf, h=horizon,
                                                                         level=levels),
            lambda forecasts: forecasts.to_parquet(out_path, write_index=False))


def _job_ray(model: Any, input_path: Path, out_path: Path, horizon: int,
             levels: list[int] | None) -> dict[str, float]:
    import logging

    import ray
    from statsforecast import StatsForecast

    ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": _one_thread()})
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        return _phases(
            lambda: ray.data.read_parquet(str(input_path)),
            lambda dataset: StatsForecast(models=[model], freq="D").forecast(
                df=dataset, h=horizon, level=levels),
            lambda forecasts: forecasts.write_parquet(str(out_path)))
    finally:
        ray.shutdown()


JOBS = {"statsforecast": _job_statsforecast, "dask": _job_dask, "ray": _job_ray}


def _child(peer: str, model_name: str, input_path: Path, out_path: Path, horizon: int,
           levels: list[int] | None) -> dict[str, Any]:
    """Run one job in this process; its inner timings and output row count."""
    if out_path.is_dir():
        shutil.rmtree(out_path)
    elif out_path.exists():
        out_path.unlink()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = _model(model_name)
    parts = JOBS[peer](model, input_path, out_path, horizon, levels)
    return {**{k: round(v, 3) for k, v in parts.items()},
            "inner_s": round(sum(parts.values()), 3), "rows_out": _count_rows(out_path)}


# --- the parent: one subprocess per job -------------------------------------------------------


def _one_thread() -> dict[str, str]:
    from crypto_ml.core.settings import threads_env

    return threads_env(cores=1, processes=1)


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak summed RSS and PSS of a process and all its descendants, every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.rss = self.pss = 0
        self.processes = 0
        self.done = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for p in tree:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
        self.rss = max(self.rss, rss)
        self.pss = max(self.pss, 1024 * sum(_pss_kb(p.pid) for p in tree))
        self.processes = max(self.processes, len(tree))

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.every)


_SERIES: dict[tuple[str, float], int] = {}


def count_series(path: str | Path) -> int:
    """Distinct ``unique_id`` of a table sorted by id, streamed (cached per file and mtime)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _SERIES:
        count, last = 0, None
        for batch in pq.ParquetFile(path).iter_batches(1_000_000, columns=["unique_id"]):
            ids = pc.unique(batch.column(0))
            count += len(ids) - (last is not None and ids[0].as_py() == last)
            last = ids[-1].as_py()
        _SERIES[key] = count
    return _SERIES[key]


def parse_levels(text: str | None) -> list[int] | None:
    """``"80,95"`` -> [80, 95]; ``"none"`` or empty -> None (point forecasts)."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    return [int(x) for x in text.split(",")]


def run_peer(peer: str, model: str, input_path: str | Path, out_path: str | Path,
             horizon: int = 10, levels: Sequence[int] | None = (80, 95),
             timeout: float = 3600) -> dict[str, Any]:
    """Run ``peer`` on ``model`` over the table at ``input_path`` in a subprocess; its figures.

    ``out_path`` is the forecasts' Parquet file (statsforecast) or folder (dask, ray),
    replaced. ``levels``: interval levels, or None for point forecasts. A failed job
    returns ``ok: False`` and the end of its stderr as ``error``.
    """
    if peer not in JOBS:
        raise ValueError(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")
    _model_check(model)
    input_path, out_path = Path(input_path).resolve(), Path(out_path).resolve()
    level_list = None if levels is None else [int(x) for x in levels]
    series = count_series(input_path)
    spec = json.dumps({"peer": peer, "model": model, "input": str(input_path),
                       "out": str(out_path), "horizon": horizon, "levels": level_list})
    env = {**os.environ, **_one_thread(), "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench.table_peers", "--child", spec], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, err = proc.communicate()
        err += f"\ntimed out after {timeout} s"
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    row: dict[str, Any] = {"peer": peer, "model": model, "series": series, "horizon": horizon,
                           "levels": level_list, "wall_s": round(wall, 2), "ok": False}
    result = next((json.loads(line[len("RESULT "):]) for line in out.splitlines()[::-1]
                   if line.startswith("RESULT ")), None)
    if proc.returncode == 0 and result is not None:
        row.update(result)
        row["ok"] = result["rows_out"] == series * horizon
        if not row["ok"]:
            row["error"] = f"{result['rows_out']} forecast rows, expected {series * horizon}"
        row["series_per_s"] = round(series / wall, 1)
        row["inner_series_per_s"] = round(series / result["inner_s"], 1)
    else:
        row["error"] = f"exit {proc.returncode}: " + _tail(err)
    row["peak_rss_mb"] = round(sampler.rss / 2**20)
    row["peak_pss_mb"] = round(sampler.pss / 2**20)
    row["processes"] = sampler.processes
    return row


def _model_check(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; one of {', '.join(MODELS)}")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()


def versions() -> dict[str, str]:
    """This machine and the peers' package versions."""
    import importlib.metadata as md
    import platform

    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    for name in ("statsforecast", "fugue", "dask", "distributed", "ray", "pandas", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def _markdown(rows: list[dict[str, Any]], command: str, about: dict[str, str]) -> str:
    keys = ["peer", "model", "series", "levels", "ok", "wall_s", "inner_s", "read_s",
            "forecast_s", "write_s", "series_per_s", "inner_series_per_s", "peak_rss_mb",
            "peak_pss_mb", "processes"]
    table = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    table += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    errors = [f"- {r['peer']} / {r['model']}: `{r['error'].splitlines()[-1]}`"
              for r in rows if r.get("error")]
    head = f"# table peers ({about['machine']})\n\nCommand: `{command}`\n\n" + ", ".join(
        f"{k} {v}" for k, v in about.items() if k != "machine") + "\n\n"
    return (head + "\n".join(table) + "\n"
            + ("\nErrors:\n\n" + "\n".join(errors) + "\n" if errors else ""))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        spec = json.loads(argv[1])
        result = _child(spec["peer"], spec["model"], Path(spec["input"]), Path(spec["out"]),
                        spec["horizon"], spec["levels"])
        print("RESULT " + json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="a table of bench.make_table")
    parser.add_argument("--models", default="naive,theta,ets")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--levels", default="80,95", help="interval levels, or none")
    parser.add_argument("--out", type=Path, default=RESULTS / "table_peers.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/crypto-ml-bench/table-peers"),
                        help="where the forecasts are written")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a job may run")
    args = parser.parse_args(argv)
    levels = parse_levels(args.levels)
    models, peers = args.models.split(","), args.peers.split(",")
    for m in models:
        _model_check(m)
    for p in peers:
        if p not in JOBS:
            parser.error(f"unknown peer {p!r}; one of {', '.join(PEERS)}")
    rows = []
    for model in models:
        for peer in peers:
            suffix = ".parquet" if peer == "statsforecast" else ""
            row = run_peer(peer, model, args.input, args.work / f"{peer}-{model}{suffix}",
                           args.horizon, levels, args.timeout)
            rows.append(row)
            shown = (f"{row['series_per_s']:>10,.0f} series/s  (wall {row['wall_s']} s, inner "
                     f"{row['inner_s']} s, peak RSS {row['peak_rss_mb']} MB)" if row["ok"]
                     else "FAILED: " + row["error"].splitlines()[-1])
            print(f"{peer:>13} {model:>6}: {shown}", flush=True)
    command = "python -m bench.table_peers " + " ".join(
        a if " " not in a else repr(a) for a in argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    about = versions()
    args.out.write_text(json.dumps({"command": command, "input": str(args.input), **about,
                                    "rows": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(rows, command, about))
    print()
    print(_markdown(rows, command, about))


if __name__ == "__main__":
    main()
