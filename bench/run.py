"""crypto-ml benchmarks: every figure a ratio of two things measured side by side in one run.

    python bench/run.py                # all benchmarks on the shared data (about 15 min, 2 cores)
    python bench/run.py --smoke        # seconds-long check that the harness works (run by the tests)
    python bench/run.py --only dispatch,jobs
    python bench/run.py --only command,small   # the whole-command and small-run ratios
    python bench/run.py --only best            # --model best against a run of its candidates
    python bench/run.py --only curve           # 100 / 1,000 / 10,000 series, 1 and 2 workers + PNG

Writes bench/results/<name>.json and .md (override with --out) and appends one line per run
(time, commit, load average, every figure) to history.tsv there. Start it on an otherwise idle
machine: the in-process and cluster sides share the same cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import curve, peers, whole  # noqa: E402
from crypto_ml.core.settings import Settings  # noqa: E402
from crypto_ml.data.loader import CryptoLoader  # noqa: E402
from crypto_ml.dispatch.cluster import LocalCluster  # noqa: E402
from crypto_ml.dispatch.manager import CryptoManager  # noqa: E402
from crypto_ml.models import get_model, model_class  # noqa: E402
from crypto_ml.worker.app import create_app  # noqa: E402
from crypto_ml.worker.requests import ForecastRequest  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "top100-2017"


def requests_for(loader: CryptoLoader, model: str, coins: list[str], cuts: int = 1,
                 horizon: int = 10) -> list[ForecastRequest]:
    """One request per coin and cut; cut k drops the newest 5*k closes (distinct series).

    Coins whose cleaned closes are too short for the model are left out. Point forecasts
    only (the in-process side and the peers compute no intervals) and no model store:
    every system trains every network, so none answers from a cache.
    """
    params = {"epochs": 1} if model_class(model).heavy else {}
    min_len = get_model(model, **params).min_points
    out = []
    for coin in coins:
        prices = loader.get_closes(coin)[1].tolist()
        for k in range(cuts):
            series = prices[: len(prices) - 5 * k] if k else prices
            if len(series) >= min_len:
                out.append(ForecastRequest(f"{coin}#{k}", model, series, horizon, None, params,
                                           levels=(), use_store=False))
    return out


def in_process(requests: list[ForecastRequest]) -> float:
    """Seconds for the plain loop: fit and forecast each request in this process (warmed up)."""
    first = requests[0]
    get_model(first.model, **first.params).fit(first.prices).forecast(first.horizon)
    started = time.perf_counter()
    for r in requests:
        get_model(r.model, **r.params).fit(r.prices, coin=r.coin).forecast(r.horizon)
    return time.perf_counter() - started


#: per worker count, the seconds the workers spent in fit-and-forecast in the latest run
FIT_SECONDS: dict[int, float] = {}


def through_cluster(cluster: LocalCluster, requests: list[ForecastRequest],
                    batch_size: int = 64) -> float:
    """Seconds for the same requests sent through the warm cluster and all collected (the
    workers' own fit seconds, summed, go to :data:`FIT_SECONDS`)."""
    settings = Settings(batch_size=batch_size).with_broker(cluster.broker_url)
    manager = CryptoManager(app=create_app(settings), settings=settings)
    started = time.perf_counter()
    report = manager.dispatch(requests, timeout=3600)
    seconds = time.perf_counter() - started
    got = sum(len(m) for m in report.results.values())
    FIT_SECONDS[cluster.n_workers] = sum(r["fit_seconds"] for m in report.results.values()
                                         for r in m.values())
    if report.failed or got != len(requests):
        raise RuntimeError(f"cluster run lost work: {got}/{len(requests)}, {report.failed}")
    return seconds


def warm(cluster: LocalCluster, loader: CryptoLoader, coins: list[str], model: str) -> None:
    """Run a few forecasts of ``model`` until every worker has done one (TF loaded and the
    model's graph built in each pool process, as the peers' warm-up rounds do)."""
    for _ in range(10):
        settings = Settings().with_broker(cluster.broker_url)
        manager = CryptoManager(app=create_app(settings), settings=settings)
        report = manager.dispatch(requests_for(loader, model, coins[: 2 * cluster.n_workers]))
        workers = {r["worker"] for m in report.results.values() for r in m.values()}
        if workers >= set(cluster.worker_names):
            return
    raise RuntimeError("could not get every worker to take a warm-up task")


def cluster_of(workers: int, deep: bool) -> LocalCluster:
    env = {**os.environ, "CRYPTO_ML_PRELOAD_KERAS": "1" if deep else "0"}
    return LocalCluster(workers=workers, loglevel="WARNING", env=env).start()


def bench_startup(loader: CryptoLoader, coins: list[str], smoke: bool) -> dict[str, Any]:
    cluster = LocalCluster(workers=2, loglevel="WARNING").start()
    cluster.stop()
    return {"embedded_startup_seconds": round(cluster.startup_seconds, 2), "workers": 2}


def bench_dispatch(loader: CryptoLoader, coins: list[str], smoke: bool) -> dict[str, Any]:
    """Cheap forecasts end to end through a warm cluster vs the same loop in one process."""
    requests = requests_for(loader, "linear", coins, cuts=1 if smoke else 20)
    n = len(requests)
    local = in_process(requests)
    out: dict[str, Any] = {"forecasts": n, "in_process_per_s": round(n / local, 1)}
    for workers in (1,) if smoke else (1, 2):
        cluster = cluster_of(workers, deep=False)
        try:
            warm(cluster, loader, coins, "linear")
            batched = through_cluster(cluster, requests)
            out[f"cluster_{workers}w_per_s"] = round(n / batched, 1)
            out[f"overhead_{workers}w"] = round(batched / local, 2)
            if workers == 2:
                single = through_cluster(cluster, requests, batch_size=1)
                out["cluster_2w_unbatched_per_s"] = round(n / single, 1)
                out["overhead_2w_unbatched"] = round(single / local, 2)
        finally:
            cluster.stop()
    return out


def bench_jobs(loader: CryptoLoader, coins: list[str], smoke: bool,
               models: Sequence[str] = ("linear", "lstm", "gru")) -> dict[str, Any]:
    """The 100-coin linear, LSTM and GRU jobs: cluster (1, 2 workers) vs in-process, Ray,
    joblib (the peers on 2 worker processes)."""
    out: dict[str, Any] = {}
    for model in ("linear",) if smoke else models:
        deep = model_class(model).heavy
        requests = requests_for(loader, model, coins)
        seconds: dict[str, float | None] = {"in_process": in_process(requests)}
        for workers in (1,) if smoke else (1, 2):
            cluster = cluster_of(workers, deep)
            try:
                warm(cluster, loader, coins, model)
                seconds[f"cluster_{workers}w"] = through_cluster(cluster, requests)
            finally:
                cluster.stop()
        fits: dict[str, float] = {}
        for name, run in (("ray", peers.ray_job), ("joblib", peers.joblib_job)):
            job = None if smoke and name == "ray" else run(requests, workers=2)
            seconds[name] = None if job is None else job[0]
            if job is not None:
                fits[name] = job[1]
        row: dict[str, Any] = {"coins": len(requests)}
        row.update({f"{k}_s": None if v is None else round(v, 3) for k, v in seconds.items()})
        ours = seconds.get("cluster_2w") or seconds["cluster_1w"]
        for other in ("in_process", "ray", "joblib"):
            if seconds[other]:
                row[f"cluster_vs_{other}"] = round(ours / seconds[other], 3)  # type: ignore[operator]
        if seconds.get("cluster_2w"):
            row["speedup_2w_vs_1w"] = round(seconds["cluster_1w"] / ours, 2)  # type: ignore[operator]
            row.update(fit_bounds(seconds, {"cluster_2w": FIT_SECONDS[2], **fits}))
        out[model] = row
    return out


def fit_bounds(seconds: dict[str, float | None], fits: dict[str, float]) -> dict[str, Any]:
    """What bounds a 2-process run: its own fit seconds split evenly over the 2 processes (no
    overhead, perfect packing). ``fit_ratio_cluster_vs_P``: the workers' fit seconds over peer
    P's for the same fits (1: the same code ran as fast); ``cluster_vs_P_floor``: the lowest
    cluster/P ratio any scheduler could reach with the workers' fits, the cluster's bound over
    P's measured wall time. A floor above a target ratio means only faster fits can reach it."""
    row: dict[str, Any] = {}
    for name, fit in fits.items():
        row[f"{name}_fit_bound_s"] = round(fit / 2, 3)
        if seconds.get(name):
            row[f"{name}_vs_own_fit_bound"] = round(seconds[name] / (fit / 2), 3)  # type: ignore[operator]
    for peer in ("ray", "joblib"):
        if peer in fits and seconds.get(peer):
            row[f"fit_ratio_cluster_vs_{peer}"] = round(fits["cluster_2w"] / fits[peer], 3)
            row[f"cluster_vs_{peer}_floor"] = round(fits["cluster_2w"] / 2 / seconds[peer], 3)  # type: ignore[operator]
    return row


def bench_command(loader: CryptoLoader, coins: list[str], smoke: bool) -> dict[str, Any]:
    return whole.bench_command(loader.data_dir, runs=1 if smoke else 3)


def bench_best(loader: CryptoLoader, coins: list[str], smoke: bool) -> dict[str, Any]:
    return whole.bench_best(loader.data_dir, coins if smoke else None, runs=1 if smoke else 3)


BENCHES: dict[str, Callable[[CryptoLoader, list[str], bool], dict[str, Any]]] = {
    "startup": bench_startup,
    "command": bench_command,
    "best": bench_best,
    "small": whole.bench_small,
    "dispatch": bench_dispatch,
    "jobs": bench_jobs,
    "curve": curve.bench_curve,
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def history_line(results: dict[str, Any], stem: str) -> str:
    """One line per run: when, which commit, the load, and every figure (key=value)."""
    figures = []
    for bench, values in results["benchmarks"].items():
        for key, value in values.items():
            if isinstance(value, dict):
                figures += [f"{bench}.{key}.{k}={v}" for k, v in value.items()]
            else:
                figures.append(f"{bench}.{key}={value}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{stamp}\t{commit()}\t{stem}\tload={os.getloadavg()[0]:.1f}\t{' '.join(figures)}\n"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# crypto-ml benchmarks ({results['machine']})", "",
             f"Command: `{results['command']}`", "", "| benchmark | figure | value |",
             "| --- | --- | --- |"]
    for bench, figures in results["benchmarks"].items():
        for key, value in figures.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    lines.append(f"| {bench}/{key} | {sub} | {v} |")
            else:
                lines.append(f"| {bench} | {key} | {value} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--only", help="comma list of: " + ", ".join(BENCHES))
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default=None, help="file name stem (default: full or smoke)")
    parser.add_argument("--models", help="the jobs benchmark's models (default: linear,lstm,gru)")
    args = parser.parse_args(argv)
    benches = dict(BENCHES)
    if args.models:
        benches["jobs"] = functools.partial(bench_jobs, models=args.models.split(","))
    loader = CryptoLoader(args.data_dir, cache_dir=Settings.from_env().cache_dir)
    coins = loader.get_crypto_names()
    if args.smoke:
        coins = [c for c in coins if len(loader.get_df(c)) > 60][:4]
    chosen = args.only.split(",") if args.only else list(BENCHES)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "benchmarks": {},
    }
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results["benchmarks"][name] = benches[name](loader, coins, args.smoke)
        print(json.dumps(results["benchmarks"][name]), file=sys.stderr, flush=True)
    stem = args.name or ("smoke" if args.smoke else "full")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    if "curve" in results["benchmarks"]:
        curve.plot(results["benchmarks"]["curve"], args.out / f"{stem}_curve.png")
    with (args.out / "history.tsv").open("a") as history:  # a regression shows as a line
        history.write(history_line(results, stem))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
