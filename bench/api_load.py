"""Load on the HTTP API: many small forecast requests with ``wait``, concurrent clients.

    python bench/api_load.py                    # 2,000 requests x (1 and 10 coins), 32 clients
    python bench/api_load.py --requests 100     # a quick look

Starts ``python -m crypto_ml.api`` twice, each in its own process: on the embedded
cluster (2 workers, the queue path) and ``--in-process`` (the same model called
in the API process, no queue), and sends both the same requests: ``linear`` on 1
coin and on 10 coins, each with ``wait=30``. Every response must be 200 and its
forecasts equal to the model's, computed here. Reports throughput, p50/p99 latency
under load, p50 of one client alone, and the API process's RSS before and after
each load; and the floor: ``GET /v1/models`` (a request with no forecast and no
Redis) from the same clients, the most any forecast request could get. The clients
are aiohttp's (see :func:`client_session`). Writes bench/results/api_load.{json,md}.
Not a test: run it on an otherwise idle machine (client, API and workers share the
cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crypto_ml.data.loader import CryptoLoader  # noqa: E402
from crypto_ml.models import default_max_points, get_model  # noqa: E402
from crypto_ml.ops.processes import free_port, spawn, terminate, wait_until  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "top100-2017"
HORIZON = 10


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@contextmanager
def served(command: Callable[[int], list[str]], data: Path, log: Path, what: str,
           extra_env: dict[str, str] | None = None, cwd: Path = ROOT
           ) -> Iterator[tuple[str, int]]:
    """``command(port)`` in its own process (and session: :func:`terminate` ends its whole
    group), run in ``cwd``, with none of the caller's ``CRYPTO_ML_`` variables but the data
    directory (and ``extra_env``): its URL and pid once its ``/healthz`` answers and it is
    idle (:func:`settle`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    env.update(CRYPTO_ML_DATA_DIR=str(data), **(extra_env or {}))
    proc = spawn(command(port), log, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 180, what,
                   lambda: f"exited: {log.read_text()}" if proc.poll() is not None else None)
        settle(proc.pid)
        yield url, proc.pid
    finally:
        terminate(proc)


def tree_cpu_seconds(pid: int) -> dict[tuple[int, float], float]:
    """CPU seconds used so far by a process and each of its children alive now, by (pid,
    start time): a process that came or went between two looks is seen as such."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    used = {}
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            used[proc.pid, proc.create_time()] = times.user + times.system
    return used


def settle(pid: int, idle: float = 0.05, most: float = 60.0) -> None:
    """Wait until a server that answers is also done starting: its process tree (embedded
    Redis and workers included) uses under ``idle`` of a core over a second, for at most
    ``most`` seconds. A server's /healthz answers while its workers still import and warm
    up, and a figure measured then counts their start-up against the server."""
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        before = tree_cpu_seconds(pid)
        time.sleep(1.0)
        after = tree_cpu_seconds(pid)  # the same processes (none started or ended), idle
        if after.keys() == before.keys() and sum(after[k] - before[k] for k in after) < idle:
            return
    print(f"warning: the server (pid {pid}) was still busy after {most:.0f} s; measuring "
          "anyway", file=sys.stderr, flush=True)


def api_server(data: Path, workers: int, in_process: bool, log: Path, reuse: bool = False
               ) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """``python -m crypto_ml.api`` in its own process: its URL and pid. ``reuse``: a question
    asked again gets its kept answer (the default, crypto_ml.api.answers); else (what this
    load measures unless said) every request is forecast."""
    return served(lambda port: [
        sys.executable, "-m", "crypto_ml.api", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", *(["--in-process"] if in_process else [])],
        data, log, "the API", None if reuse else {"CRYPTO_ML_API_ANSWER_SECONDS": "0"})


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def client_session(url: str, clients: int) -> aiohttp.ClientSession:
    """The load generator: aiohttp keeps up with the server here; httpx's AsyncClient did not
    (about 210 req/s against a bare Starlette route on this 2-core machine, aiohttp 12,600),
    so it measured itself, not the API."""
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(total=60))


def api_forecast(answer: Any, coin: str) -> Any:
    """The ``linear`` forecast of ``coin`` in the API's answer (None: missing)."""
    return answer.get("results", {}).get(coin, {}).get("linear", {}).get("forecast")


async def load(url: str, bodies: list[dict[str, Any]], expected: dict[str, list[float]],
               clients: int, path: str = "/v1/forecasts?wait=30",
               forecast_of: Callable[[Any, str], Any] = api_forecast) -> dict[str, Any]:
    """Send ``bodies`` (POST ``path``) from ``clients`` concurrent clients; latencies and
    correctness: ``forecast_of(answer, coin)`` must equal ``expected[coin]`` (another server
    than the API answers in its own shape: bench/serve_peers.py)."""
    left = iter(bodies)
    latencies: list[float] = []
    errors: list[str] = []
    async with client_session(url, clients) as session:

        async def client() -> None:
            for body in left:
                started = time.perf_counter()
                try:
                    async with session.post(path, json=body) as reply:
                        status, payload = reply.status, await reply.read()
                except aiohttp.ClientError as exc:  # counted, not fatal: the run goes on
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"{status}: {payload[:200]!r}")
                    continue
                answer = json.loads(payload)
                for coin in body["coins"]:
                    got = forecast_of(answer, coin)
                    if got is None or not np.allclose(got, expected[coin], rtol=1e-9, atol=0):
                        errors.append(f"{coin}: wrong or missing forecast")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return {"requests": len(bodies), "wall_seconds": round(wall, 3),
            "throughput_rps": round(len(bodies) / wall, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "errors": len(errors), "first_errors": errors[:3]}


async def floor(url: str, n: int, clients: int) -> dict[str, Any]:
    """The HTTP stack's own ceiling: ``GET /v1/models`` (no forecast, no Redis) from the same
    clients. No forecast request can be served faster than this on the same machine."""
    latencies: list[float] = []
    left = iter(range(n))
    async with client_session(url, clients) as session:

        async def client() -> None:
            for _ in left:
                started = time.perf_counter()
                async with session.get("/v1/models") as reply:
                    await reply.read()
                    reply.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return {"requests": n, "throughput_rps": round(n / wall, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2)}


def rss_mb(pid: int) -> float:
    """The API process's resident memory (its embedded cluster's processes not included)."""
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def measure(url: str, pid: int, coins: list[str], expected: dict[str, list[float]],
            n: int, clients: int, per_request: int) -> dict[str, Any]:
    bodies = [{"coins": [coins[(i * per_request + j) % len(coins)] for j in range(per_request)],
               "model": "linear", "horizon": HORIZON} for i in range(n)]
    asyncio.run(load(url, bodies[: min(200, n)], expected, clients))  # warm-up, not counted
    rss_before = rss_mb(pid)
    loaded = asyncio.run(load(url, bodies, expected, clients))
    rss_after = rss_mb(pid)
    alone = asyncio.run(load(url, bodies[: min(200, n)], expected, 1))
    return {**loaded, "single_client_p50_ms": alone["p50_ms"],
            "single_client_p99_ms": alone["p99_ms"], "rss_mb_before": rss_before,
            "rss_mb_after": rss_after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    loader = CryptoLoader(args.data_dir)
    closes = {c: loader.get_closes(c)[1] for c in loader.get_crypto_names()}
    window = default_max_points("linear")  # the API fits each model on its default window
    coins = [c for c, v in closes.items() if len(v) >= 2]
    # what the API answers: the model's prediction (a price's forecast floored at zero)
    expected = {c: get_model("linear").fit(closes[c][-window:].tolist()).predict(HORIZON, ())
                .forecast.tolist() for c in coins}
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average_at_start": round(os.getloadavg()[0], 1)},
                               "requests": args.requests, "clients": args.clients,
                               "workers": args.workers, "coins": len(coins)}
    args.out.mkdir(parents=True, exist_ok=True)
    for mode in ("queue", "in_process"):
        log = args.out / f"api_load_{mode}.log.tmp"
        with api_server(args.data_dir, args.workers, mode == "in_process", log) as (url, pid):
            if mode == "queue":  # the same server, a request with no forecast in it
                asyncio.run(floor(url, min(200, args.requests), args.clients))  # warm-up
                results["floor"] = asyncio.run(floor(url, args.requests, args.clients))
                print(f"floor: {json.dumps(results['floor'])}", flush=True)
            for per_request in (1, 10):
                key = f"{mode}_{per_request}_coin"
                print(f"{key}: {args.requests} requests, {args.clients} clients ...", flush=True)
                results[key] = measure(url, pid, coins, expected, args.requests, args.clients,
                                       per_request)
                print(json.dumps(results[key]), flush=True)
        log.unlink(missing_ok=True)
    results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 1)
    (args.out / "api_load.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "api_load.md").write_text(table(results))
    print(table(results))
    ok = all(results[f"{m}_{n}_coin"]["errors"] == 0 for m in ("queue", "in_process")
             for n in (1, 10))
    return 0 if ok else 1


def table(results: dict[str, Any]) -> str:
    lines = [f"# API load: {results['requests']} requests per row, {results['clients']} "
             f"concurrent clients, linear, horizon {HORIZON}, wait=30",
             "", f"Embedded cluster with {results['workers']} workers vs the same model run in "
             f"the API process; {results['machine']['cpus']} CPUs shared by client, API and "
             "workers (and whatever else the machine runs: 1-minute load average "
             f"{results['machine'].get('load_average_at_start', '?')} at the start, "
             f"{results['machine'].get('load_average_at_end', '?')} at the end).", "",
             "| path | coins/request | throughput req/s | p50 ms | p99 ms | p50 ms, 1 client "
             "| errors | API RSS MB before -> after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode in ("queue", "in_process"):
        for n in (1, 10):
            r = results[f"{mode}_{n}_coin"]
            lines.append(f"| {mode.replace('_', '-')} | {n} | {r['throughput_rps']} | "
                         f"{r['p50_ms']} | {r['p99_ms']} | {r['single_client_p50_ms']} | "
                         f"{r['errors']} | {r['rss_mb_before']} -> {r['rss_mb_after']} |")
    if "floor" in results:
        f = results["floor"]
        lines += ["", f"Floor: `GET /v1/models` (no forecast, no Redis) from the same "
                  f"{results['clients']} clients: {f['throughput_rps']} req/s, p50 {f['p50_ms']} "
                  f"ms, p99 {f['p99_ms']} ms. With {results['clients']} requests always in "
                  f"flight, p50 under 20 ms needs {results['clients'] / 0.020:.0f} req/s "
                  "(Little's law)."]
    for n in (1, 10):
        q, p = results[f"queue_{n}_coin"], results[f"in_process_{n}_coin"]
        lines.append("")
        lines.append(f"Queue overhead, {n} coin(s)/request: "
                     f"{q['single_client_p50_ms'] - p['single_client_p50_ms']:.2f} ms per request "
                     f"at p50 with one client; throughput {q['throughput_rps'] / p['throughput_rps']:.2f}x "
                     "the in-process path under load.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
