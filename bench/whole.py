"""Whole-command and small-run benchmarks: a whole command, and small runs, against plain code.

* ``command``: ``python -m crypto_ml.manager send-tasks --model linear`` on the embedded
  default against ``bench/plain_sklearn.py`` (one process, pandas + scikit-learn, same CSV
  files, same trend lines), whole processes, run in turn A B A B ..., best of N and the
  median of the pairwise ratios. Target: ``ratio_best`` <= 0.6.
* ``small``: through a warm 2-worker cluster, one ``dispatch`` of the 100 coins against
  the same forecasts in-process (target <= 1.5x, medians), in two forms: point forecasts
  over each whole history (``overhead``: tiny fits, so the queue's own cost shows) and the
  run ``send-tasks --model linear`` makes (``default_overhead``: the 200-close window, 80
  and 95% intervals); and a single coin's round trip (target p50 <= 5 ms). The ``transport``
  form sends the point form's closes to ``naive`` (a fit that costs nothing): the cost of
  moving the data alone, the floor of the point form.

* ``best``: ``send-tasks --model best`` (its own backtest of the cheap candidates, then each
  coin's chosen forecast) against ``send-tasks --model`` those candidates, whole processes in
  turn. Target: ``ratio_median_pairwise`` <= 3.

Every figure comes with the load average, as the machine may be shared.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crypto_ml.backtest.best import DEFAULT_CANDIDATES
from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.models import default_max_points
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import ForecastRequest, run_forecast

ROOT = Path(__file__).resolve().parents[1]


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys of it and its children) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-1000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def embedded_env(data_dir: Path) -> dict[str, str]:
    """The environment of a command on the embedded default over ``data_dir``."""
    env = {**os.environ, "CRYPTO_ML_DATA_DIR": str(data_dir)}
    env.pop("CRYPTO_ML_BROKER_URL", None)
    return env


def in_turn(a_cmd: list[str], b_cmd: list[str], env: dict[str, str], runs: int,
            names: tuple[str, str]) -> dict[str, Any]:
    """Two whole commands run in turn, A B A B ..., after one warm-up each (it fills the price
    cache, as any earlier run would have): best and median wall, pairwise ratios, CPU."""
    _timed(a_cmd, env)
    _timed(b_cmd, env)
    a, b, ratios, load = [], [], [], []
    for _ in range(runs):
        load.append(load_average())
        a.append(_timed(a_cmd, env))
        b.append(_timed(b_cmd, env))
        ratios.append(a[-1][0] / b[-1][0])
    best_a, best_b = min(w for w, _ in a), min(w for w, _ in b)
    return {f"{names[0]}_best_s": round(best_a, 2), f"{names[1]}_best_s": round(best_b, 2),
            "ratio_best": round(best_a / best_b, 3),
            "ratio_median_pairwise": round(statistics.median(ratios), 3),
            f"{names[0]}_cpu_median_s": round(statistics.median(c for _, c in a), 2),
            f"{names[1]}_cpu_median_s": round(statistics.median(c for _, c in b), 2),
            "runs": runs, "load_avg": load}


def bench_command(data_dir: Path, runs: int = 3) -> dict[str, Any]:
    """send-tasks (embedded, 100 coins, linear) vs the plain pandas + scikit-learn script."""
    ours = [sys.executable, "-m", "crypto_ml.manager", "send-tasks", "--model", "linear",
            "--log-level", "warning"]
    plain = [sys.executable, str(ROOT / "bench" / "plain_sklearn.py"), str(data_dir)]
    return in_turn(ours, plain, embedded_env(data_dir), runs, ("send_tasks", "plain_script"))


def bench_best(data_dir: Path, coins: list[str] | None = None, runs: int = 3) -> dict[str, Any]:
    """``send-tasks --model best`` (its own backtest, then the chosen forecasts) vs a plain
    run of its candidates, both whole commands on the embedded default. Target: <= 3x."""
    send = [sys.executable, "-m", "crypto_ml.manager", "send-tasks", "-q",
            *(["--coins", ",".join(coins)] if coins else [])]
    return in_turn([*send, "--model", "best"], [*send, "--model", DEFAULT_CANDIDATES],
                   embedded_env(data_dir), runs, ("best", "candidates"))


def _small_requests(loader: CryptoLoader, coins: list[str]) -> dict[str, list[ForecastRequest]]:
    """Two forms of the 100-coin linear run: ``points`` (whole history, point forecasts only:
    the fits are tiny, so the queue's overhead shows) and ``default`` (what ``send-tasks
    --model linear`` sends: the model's default window, intervals at 80 and 95%)."""
    window = default_max_points("linear")
    out: dict[str, list[ForecastRequest]] = {"points": [], "default": [], "transport": []}
    for coin in coins:
        _, closes = loader.get_closes(coin)
        if len(closes) >= 30:  # conformal intervals need a few dozen closes
            out["points"].append(ForecastRequest(coin, "linear", closes.tolist(), 10, levels=()))
            out["transport"].append(ForecastRequest(coin, "naive", closes.tolist(), 10,
                                                    levels=()))
            out["default"].append(ForecastRequest(coin, "linear", closes[-window:].tolist(), 10,
                                                  use_store=False))
    return out


def _in_turn(manager: CryptoManager, requests: list[ForecastRequest], reps: int
             ) -> tuple[float, float]:
    """Median seconds of the same run in-process and through the cluster, taken in turn so
    that both sides see the same load."""
    local, remote = [], []
    for _ in range(reps):
        started = time.perf_counter()
        for r in requests:
            run_forecast(r, "in-process")
        local.append(time.perf_counter() - started)
        started = time.perf_counter()
        report = manager.dispatch(requests)
        remote.append(time.perf_counter() - started)
        if report.failed:
            raise RuntimeError(f"small run failed: {report.failed}")
    return statistics.median(local), statistics.median(remote)


def bench_small(loader: CryptoLoader, coins: list[str], smoke: bool) -> dict[str, Any]:
    """Warm 2-worker cluster: the 100-coin cheap run vs in-process (point forecasts over the
    whole history, and the default run with intervals); one coin's round trip."""
    forms = _small_requests(loader, coins)
    reps, trips = (3, 20) if smoke else (15, 200)
    out: dict[str, Any] = {"coins": len(forms["points"]), "load_avg_start": load_average()}
    with LocalCluster(workers=1 if smoke else 2, loglevel="WARNING") as cluster:
        settings = Settings().with_broker(cluster.broker_url)
        manager = CryptoManager(app=create_app(settings), settings=settings)
        for form, requests in forms.items():
            for _ in range(3):  # warm: every worker has imported and run the model
                manager.dispatch(requests)
            local, remote = _in_turn(manager, requests, reps)
            prefix = {"points": "", "default": "default_", "transport": "transport_"}[form]
            out.update({f"{prefix}in_process_median_ms": round(local * 1000, 1),
                        f"{prefix}cluster_median_ms": round(remote * 1000, 1),
                        f"{prefix}overhead": round(remote / local, 2)})
        one = [forms["points"][0]]
        trip = []
        for _ in range(trips):
            started = time.perf_counter()
            manager.dispatch(one)
            trip.append(time.perf_counter() - started)
    trip.sort()
    # the floor of the point-only form: the same closes shipped through the cluster to a
    # model that does nothing with them (naive), against the linear fits in-process
    out["transport_floor_vs_points_in_process"] = round(
        out["transport_cluster_median_ms"] / out["in_process_median_ms"], 2)
    out.update({
        "one_coin_p50_ms": round(trip[len(trip) // 2] * 1000, 2),
        "one_coin_p90_ms": round(trip[int(len(trip) * 0.9)] * 1000, 2),
        "load_avg_end": load_average(),
    })
    return out
