"""Cost curve: cheap jobs over 100, 1,000 and 10,000 series, 1 and 2 workers.

Series are windows of the real coins (series ``k`` is ``WINDOW`` closes of coin ``k mod n``
starting ``k div n`` days in, wrapping), so every series is distinct and real. For each size
and worker count: wall seconds, forecasts per second, the manager's memory, each worker's
peak RSS (VmHWM of its processes) and Redis' peak memory.

The manager's memory is measured per run in this process (Linux): its resident size with
the run's requests built (``manager_rss_mib``), the peak above that during the dispatch
(``manager_dispatch_peak_mib``: the peak is reset first through ``/proc/self/clear_refs``)
and what is still held above it once the report is back (``manager_results_mib``: the
results). The dispatch must not need much more than the results it returns. ``plot``
draws seconds and forecasts per second against the series count (PNG).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from crypto_ml.core.settings import Settings
from crypto_ml.data.loader import CryptoLoader
from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.dispatch.manager import CryptoManager
from crypto_ml.worker.app import create_app
from crypto_ml.worker.requests import ForecastRequest

WINDOW = 200


def windows(loader: CryptoLoader, coins: list[str], n: int, model: str) -> list[ForecastRequest]:
    closes = {c: loader.get_closes(c)[1] for c in coins}
    long = sorted(c for c, v in closes.items() if len(v) >= WINDOW + 50)
    out = []
    for k in range(n):
        prices = closes[long[k % len(long)]]
        start = (k // len(long)) % (len(prices) - WINDOW + 1)
        out.append(ForecastRequest(f"{long[k % len(long)]}@{k}", model,
                                   prices[start:start + WINDOW].tolist(), 10, None, {}))
    return out


def _hwm_mib(pid: int) -> float:
    """Peak RSS of a process and its children (MiB), from /proc (Linux)."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total = max(total, int(line.split()[1]) / 1024)
    return round(total, 1)


def _proc_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _manager_run(manager: CryptoManager, requests: list[ForecastRequest]) -> dict[str, Any]:
    """Dispatch ``requests``; wall time and the manager's memory for this run alone."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _proc_mib("VmRSS")
    started = time.perf_counter()
    report = manager.dispatch(requests)
    wall = time.perf_counter() - started
    peak = _proc_mib("VmHWM")
    gc.collect()
    held = _proc_mib("VmRSS")
    got = sum(len(m) for m in report.results.values())
    if got != len(requests):
        raise RuntimeError(f"curve lost work: {got}/{len(requests)}")
    return {"wall_s": round(wall, 3), "per_s": round(len(requests) / wall, 1),
            "manager_rss_mib": round(before, 1),
            "manager_dispatch_peak_mib": round(peak - before, 1),
            "manager_results_mib": round(held - before, 1)}


def bench_curve(loader: CryptoLoader, coins: list[str], smoke: bool) -> dict[str, Any]:
    sizes = (20, 100) if smoke else (100, 1_000, 10_000)
    out: dict[str, Any] = {}
    for workers in (1,) if smoke else (1, 2):
        with LocalCluster(workers=workers, loglevel="WARNING") as cluster:
            settings = Settings().with_broker(cluster.broker_url)
            manager = CryptoManager(app=create_app(settings), settings=settings)
            manager.dispatch(windows(loader, coins, 2 * workers, "linear"))  # warm
            for model in ("naive", "linear"):
                for n in sizes:
                    run = _manager_run(manager, windows(loader, coins, n, model))
                    with cluster.client() as client:
                        redis_peak = int(client.info("memory")["used_memory_peak"])
                    out[f"{model}_{n}_{workers}w"] = {
                        **run, "worker_peak_mib": [_hwm_mib(p.pid) for p in cluster.workers],
                        "redis_peak_mib": round(redis_peak / 2**20, 1)}
    return out


def plot(curve: dict[str, Any], path: Path) -> None:
    import matplotlib  # lazy: only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({k.rsplit("_", 2)[0] + "_" + k.rsplit("_", 1)[1] for k in curve}):
        model, workers = key.split("_")
        points = sorted((int(k.split("_")[1]), v) for k, v in curve.items()
                        if k.startswith(model + "_") and k.endswith("_" + workers))
        xs = [n for n, _ in points]
        left.plot(xs, [v["wall_s"] for _, v in points], marker="o", label=f"{model}, {workers}")
        right.plot(xs, [v["per_s"] for _, v in points], marker="o", label=f"{model}, {workers}")
    for ax, title in ((left, "wall seconds"), (right, "forecasts per second")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("series")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
