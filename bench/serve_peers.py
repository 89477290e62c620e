"""Peers, side by side: the API vs Ray Serve vs the textbook FastAPI + Celery service.

    python bench/serve_peers.py                  # 1,000 requests at 8 and 32 clients, 200 at 1
    python bench/serve_peers.py --requests 100   # a quick look (20 at 1 client)

Three servers on this machine's cores, one after the other, each answering one-coin
``linear`` forecasts (horizon 10, intervals at 80 and 95 %, fitted on the model's default
window of the coin's closes, loaded once per server process):

1. **Ray Serve** (``ray.init(num_cpus=2)``): a deployment of 2 replicas (Serve's default
   ``num_cpus=1`` and ``max_ongoing_requests=5`` each) behind Serve's HTTP proxy; each
   request runs ``get_model("linear").fit(closes[-window:]).predict(10, (80, 95))`` in the
   replica and answers the forecast and intervals as JSON.
2. **The textbook FastAPI + Celery service** (bench/textbook_celery.py under uvicorn, its
   own process): the route calls the project's Celery task with ``.delay(...).get(timeout=30)``
   on an embedded :class:`~crypto_ml.dispatch.cluster.LocalCluster` of 2 workers.
3. **This API** (``python -m crypto_ml.api`` on its embedded cluster of 2 workers, started as
   bench/api_load.py starts it): ``POST /v1/forecasts?wait=30``; and its floor,
   ``GET /v1/models`` at 32 clients. Twice: ``api``, every request forecast by a worker
   (``CRYPTO_ML_API_ANSWER_SECONDS=0``, what the peers do), and ``api_reuse``, the default,
   where a question asked again (after the warm-up, every one) gets the answer kept for it.

The load client is bench/api_load.py's (:func:`bench.api_load.load`, aiohttp): the same
bodies (``{"coins": [coin], "model": "linear", "horizon": 10}``, coins in turn) to each
server at 1, 8 and 32 concurrent clients after a warm-up; every answer must be 200 with the
forecast computed here (relative tolerance 1e-9; the model floors a price's forecast at
zero). Writes bench/results/serve_peers.{json,md}, with the issue's ratios at 32 clients.
Not a test: run it on an otherwise idle machine (clients and servers share the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import (  # noqa: E402
    DATA,
    HORIZON,
    api_forecast,
    api_server,
    floor,
    load,
    served,
)
from crypto_ml.core.settings import threads_env  # noqa: E402
from crypto_ml.data.loader import CryptoLoader  # noqa: E402
from crypto_ml.dispatch.cluster import LocalCluster  # noqa: E402
from crypto_ml.models import default_max_points, get_model  # noqa: E402
from crypto_ml.ops.processes import free_port  # noqa: E402

MODEL = "linear"
LEVELS = (80.0, 95.0)
CLIENTS = (1, 8, 32)
WORKERS = 2  # Celery workers of the textbook service and the API; Ray Serve replicas
RAY_CPUS = 2
SERVERS = ("ray_serve", "textbook", "api", "api_reuse")
LABELS = {"ray_serve": "Ray Serve (2 replicas)", "textbook": "FastAPI + Celery (textbook)",
          "api": "crypto-ml API, every request forecast",
          "api_reuse": "crypto-ml API, answers reused (the default)"}


class LinearForecast:
    """The Ray Serve deployment's class: the closes loaded once per replica, one forecast per
    request (the project's own model function)."""

    def __init__(self, data_dir: str, horizon: int, levels: tuple[float, ...]) -> None:
        loader = CryptoLoader(Path(data_dir))
        window = default_max_points(MODEL)
        self.closes = {c: loader.get_closes(c)[1][-window:].tolist()
                       for c in loader.get_crypto_names()}
        self.horizon, self.levels = horizon, levels

    async def __call__(self, request: Any) -> dict[str, Any]:  # a starlette Request
        coin = (await request.json())["coins"][0]
        prediction = get_model(MODEL).fit(self.closes[coin]).predict(self.horizon, self.levels)
        return {"coin": coin, "forecast": prediction.forecast.tolist(),
                "intervals": prediction.intervals_json()}


@contextmanager
def ray_serve(data: Path) -> Iterator[str]:
    """Ray Serve on a local Ray of ``RAY_CPUS`` CPUs: its proxy's URL."""
    import ray
    from ray import serve

    port = free_port()
    # one math thread per replica on these cores, as the Celery workers get (threads_env)
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": threads_env(os.cpu_count() or 1, WORKERS)})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = serve.deployment(num_replicas=WORKERS)(LinearForecast)
        serve.run(deployment.bind(str(data), HORIZON, LEVELS), name="peers",
                  route_prefix="/forecast")
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


@contextmanager
def textbook(data: Path, log: Path) -> Iterator[str]:
    """bench/textbook_celery.py under uvicorn (its own process) on a LocalCluster of
    ``WORKERS`` workers: its URL."""
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(LocalCluster(workers=WORKERS))  # as the API's: INFO logs
        url, _pid = stack.enter_context(served(
            lambda port: uvicorn("bench.textbook_celery:app", port), data, log,
            "the textbook FastAPI + Celery service", {"CRYPTO_ML_BROKER_URL": cluster.broker_url}))
        yield url


def uvicorn(app: str, port: int) -> list[str]:
    """The command serving ``app`` (module:attribute) on ``port``, quietly."""
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]


def workload(data: Path, requests: int) -> tuple[list[str], dict[str, list[float]],
                                                 list[dict[str, Any]]]:
    """The coins, what every server must answer for each (the model's forecast on its
    default window, a price's floored at zero), and ``requests`` one-coin bodies in turn."""
    loader = CryptoLoader(data)
    window = default_max_points(MODEL)  # the API fits each model on its default window
    closes = {c: loader.get_closes(c)[1][-window:] for c in loader.get_crypto_names()}
    coins = [c for c, v in closes.items() if len(v) >= 2]
    expected = {c: get_model(MODEL).fit(closes[c].tolist()).predict(HORIZON, LEVELS)
                .forecast.tolist() for c in coins}
    bodies = [{"coins": [coins[i % len(coins)]], "model": MODEL, "horizon": HORIZON}
              for i in range(requests)]
    return coins, expected, bodies


def machine() -> dict[str, Any]:
    """This machine, for a result file (the load at the start: a busy machine says so)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": round(os.getloadavg()[0], 1)}


def peer_forecast(answer: Any, coin: str) -> Any:
    """The forecast in a peer's answer (``{"coin", "forecast", ...}``); None: missing."""
    return answer.get("forecast") if answer.get("coin") == coin else None


def run_server(url: str, path: str, forecast_of: Callable[[Any, str], Any],
               bodies: list[dict[str, Any]], expected: dict[str, list[float]],
               alone: int) -> dict[str, Any]:
    """A warm-up (not counted), then each client count: ``alone`` requests for one client,
    all ``bodies`` for the others."""
    asyncio.run(load(url, bodies[: min(200, len(bodies))], expected, max(CLIENTS), path,
                     forecast_of))
    out = {}
    for clients in CLIENTS:
        cell = asyncio.run(load(url, bodies[:alone] if clients == 1 else bodies, expected,
                                clients, path, forecast_of))
        out[str(clients)] = cell
        print(f"  {clients} client(s): {json.dumps(cell)}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per cell at 8 and 32 clients (a fifth of it at 1 client)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"which to run, in order (default: {','.join(SERVERS)})")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server(s) {sorted(unknown)}; choose from {SERVERS}")
    coins, expected, bodies = workload(args.data_dir, args.requests)
    alone = max(1, args.requests // 5)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": machine(),
        "requests": args.requests, "single_client_requests": alone, "clients": list(CLIENTS),
        "model": MODEL, "horizon": HORIZON, "levels": list(LEVELS),
        "window": default_max_points(MODEL),
        "coins": len(coins), "workers": WORKERS, "ray_cpus": RAY_CPUS, "servers": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for server in servers:
        log = args.out / f"serve_peers_{server}.log.tmp"
        started = time.perf_counter()
        print(f"{LABELS[server]}: starting ...", flush=True)
        if server == "ray_serve":
            import ray

            results["ray_version"] = ray.__version__
            with ray_serve(args.data_dir) as url:
                print(f"  up in {time.perf_counter() - started:.1f} s", flush=True)
                results["servers"][server] = run_server(url, "/forecast", peer_forecast, bodies,
                                                        expected, alone)
        elif server == "textbook":
            with textbook(args.data_dir, log) as url:
                print(f"  up in {time.perf_counter() - started:.1f} s", flush=True)
                results["servers"][server] = run_server(url, "/forecast", peer_forecast, bodies,
                                                        expected, alone)
        else:
            reuse = server == "api_reuse"
            with api_server(args.data_dir, WORKERS, False, log, reuse) as (url, _pid):
                print(f"  up in {time.perf_counter() - started:.1f} s", flush=True)
                asyncio.run(floor(url, min(200, args.requests), max(CLIENTS)))  # warm-up
                floors = results.setdefault("floors", {})
                floors[server] = asyncio.run(floor(url, args.requests, max(CLIENTS)))
                print(f"  floor: {json.dumps(floors[server])}", flush=True)
                results["servers"][server] = run_server(url, "/v1/forecasts?wait=30",
                                                        api_forecast, bodies, expected, alone)
        log.unlink(missing_ok=True)
    results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 1)
    results["ratios"] = ratios(results)
    (args.out / "serve_peers.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "serve_peers.md").write_text(table(results))
    print(table(results))
    return 0 if all(cell["errors"] == 0 for cells in results["servers"].values()
                    for cell in cells.values()) else 1


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets at the most clients: each ratio, its target and whether it is met."""
    top = str(max(CLIENTS))
    servers = results["servers"]
    out: dict[str, Any] = {}

    def ratio(name: str, value: float, target: float, higher: bool = True) -> None:
        out[name] = {"value": round(value, 2), "target": target,
                     "met": value >= target if higher else value <= target}

    for side in ("api", "api_reuse"):
        if side not in servers:
            continue
        api = servers[side][top]
        for peer, target in (("ray_serve", 1.5), ("textbook", 3.0)):
            if peer in servers:
                ratio(f"{side}_throughput_over_{peer}", api["throughput_rps"]
                      / servers[peer][top]["throughput_rps"], target)
                ratio(f"{side}_p50_over_{peer}_p50", api["p50_ms"]
                      / servers[peer][top]["p50_ms"], 1.0, higher=False)
        ratio(f"{side}_throughput_over_its_floor", api["throughput_rps"]
              / results["floors"][side]["throughput_rps"], 0.5)
    return out


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# Peers, side by side: one-coin `{results['model']}` forecasts, horizon "
             f"{results['horizon']}, intervals {'/'.join(f'{x:g}' for x in results['levels'])}",
             "", f"`{results['command']}` on {results['date']}: {m['cpus']} CPUs ({m['platform']}, "
             f"Python {m['python']}) shared by the load client and each server in turn (1-minute "
             f"load average {m['load_average_at_start']} at the start, "
             f"{m['load_average_at_end']} at the end). {results['requests']} requests per cell at "
             f"8 and 32 clients, {results['single_client_requests']} at 1 client, after a "
             f"warm-up; bench/api_load.py's aiohttp client; every answer checked against the "
             f"model's forecast (rtol 1e-9). Each server fits on the last {results['window']} "
             f"closes of {results['coins']} coins in turn.", "",
             f"- Ray Serve {results.get('ray_version', '')}: `ray.init(num_cpus="
             f"{results['ray_cpus']})`, {results['workers']} replicas (1 CPU, "
             "max_ongoing_requests 5 each: Serve's defaults), HTTP through Serve's proxy.",
             f"- Textbook: FastAPI under uvicorn, route `.delay(...).get(timeout=30)` on the "
             f"project's Celery task, embedded cluster of {results['workers']} workers.",
             f"- API: `python -m crypto_ml.api --workers {results['workers']}` (embedded "
             "cluster), `POST /v1/forecasts?wait=30`, twice: with `CRYPTO_ML_API_ANSWER_SECONDS=0`"
             " (every request forecast by a worker, as the peers do) and with the default (a "
             "question asked again, here every one after the warm-up, gets its kept answer: "
             "crypto_ml.api.answers); each against its own floor, measured in the same process.",
             "",
             "| server | clients | requests | throughput req/s | p50 ms | p99 ms | errors |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for server, cells in results["servers"].items():
        for clients, r in cells.items():
            lines.append(f"| {LABELS[server]} | {clients} | {r['requests']} | "
                         f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |")
    for side, f in results.get("floors", {}).items():
        lines.append(f"| its floor (`GET /v1/models`), {LABELS[side]} | {max(CLIENTS)} | "
                     f"{f['requests']} | {f['throughput_rps']} | {f['p50_ms']} | {f['p99_ms']} "
                     "| 0 |")
    if results.get("ratios"):
        lines += ["", f"Targets at {max(CLIENTS)} clients:", "",
                  "| ratio | value | target | met |", "| --- | --- | --- | --- |"]
        for name, r in results["ratios"].items():
            sign = "<=" if "_p50_" in name else ">="
            lines.append(f"| {name.replace('_', ' ')} | {r['value']} | {sign} {r['target']} | "
                         f"{'yes' if r['met'] else 'NO'} |")
    lines += ["", "One-client p50 (ms): " + ", ".join(
        f"{LABELS[s]} {cells['1']['p50_ms']}" for s, cells in results["servers"].items()
        if "1" in cells) + "."]
    errors = [f"{LABELS[s]} at {c} clients: {r['first_errors']}"
              for s, cells in results["servers"].items() for c, r in cells.items() if r["errors"]]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
