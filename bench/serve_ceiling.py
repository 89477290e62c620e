"""The ceiling of a forecast route on these cores, as a share of the API's no-forecast floor.

    python bench/serve_ceiling.py                         # 3 rounds of 3,000 requests
    python bench/serve_ceiling.py --rounds 1 --requests 500

Serving issue III asks the API for at least half its own floor (``GET /v1/models``) at 32
clients, one-coin ``linear``. This measures how much room the machine leaves for that. Each
round, with bench/api_load.py's client at 32 clients, it counts the CPU seconds per request of
the client process and of the server process with its children (the API's embedded Redis and
workers included), and the throughput, of:

1. the API (``python -m crypto_ml.api --workers 2``): its floor, and ``POST /v1/forecasts``;
2. bench/bare_forecast.py, a bare Starlette app that fits the project's linear model in its
   handler (no validation, keys, metrics, queue or Redis): its floor (the same model list) and
   its forecast.

A forecast request on the API costs at least: the client's CPU for a forecast (measured on the
bare server: the same body, the same answer checked), the API's server CPU for its floor (its
HTTP stack, middleware and key check, which every request pays), and what the bare server's
forecast costs over its own floor (the body, the fit, the answer). With every core busy on
nothing else, ``ceiling = cores / that``; it is reported as a share of the API's floor
throughput in the same round, beside the API's own share. Writes bench/results/
serve_ceiling.{json,md}. Not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import (  # noqa: E402
    DATA,
    api_forecast,
    api_server,
    floor,
    load,
    served,
    tree_cpu_seconds,
)
from bench.serve_peers import (  # noqa: E402
    CLIENTS,
    HORIZON,
    LEVELS,
    MODEL,
    WORKERS,
    machine,
    peer_forecast,
    uvicorn,
    workload,
)

LOAD_CLIENTS = max(CLIENTS)


def bare_server(data: Path, log: Path) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """bench/bare_forecast.py under uvicorn, in its own process: its URL and pid."""
    return served(lambda port: uvicorn("bench.bare_forecast:app", port), data, log,
                  "the bare server")


def cpu_seconds(pid: int) -> float:
    """User and system CPU of ``pid`` and its living children."""
    return sum(tree_cpu_seconds(pid).values())


def measured(server_pid: int, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """``run()``'s result, with the client's and the server's CPU microseconds per request."""
    me = psutil.Process()
    client0, server0 = sum(me.cpu_times()[:2]), cpu_seconds(server_pid)
    result = asyncio.run(run())
    client1, server1 = sum(me.cpu_times()[:2]), cpu_seconds(server_pid)
    n = result["requests"]
    return {**result, "client_us": round((client1 - client0) / n * 1e6, 1),
            "server_us": round((server1 - server0) / n * 1e6, 1)}


def one_round(data: Path, bodies: list[dict[str, Any]], expected: dict[str, list[float]],
              log: Path) -> dict[str, Any]:
    n = len(bodies)
    out: dict[str, Any] = {}
    with bare_server(data, log) as (url, pid):
        asyncio.run(load(url, bodies[:200], expected, LOAD_CLIENTS, "/forecast", peer_forecast))
        out["bare_floor"] = measured(pid, lambda: floor(url, n, LOAD_CLIENTS))
        out["bare_forecast"] = measured(pid, lambda: load(url, bodies, expected, LOAD_CLIENTS,
                                                          "/forecast", peer_forecast))
    with api_server(data, WORKERS, False, log) as (url, pid):
        asyncio.run(load(url, bodies[:200], expected, LOAD_CLIENTS))
        out["api_floor"] = measured(pid, lambda: floor(url, n, LOAD_CLIENTS))
        out["api_forecast"] = measured(pid, lambda: load(url, bodies, expected, LOAD_CLIENTS,
                                                         forecast_of=api_forecast))
    cores = os.cpu_count() or 1
    least_us = (out["bare_forecast"]["client_us"] + out["api_floor"]["server_us"]
                + out["bare_forecast"]["server_us"] - out["bare_floor"]["server_us"])
    floor_rps = out["api_floor"]["throughput_rps"]
    out["least_us_per_forecast"] = round(least_us, 1)
    out["ceiling_rps"] = round(cores / least_us * 1e6, 1)
    out["ceiling_share_of_floor"] = round(out["ceiling_rps"] / floor_rps, 3)
    out["api_share_of_floor"] = round(out["api_forecast"]["throughput_rps"] / floor_rps, 3)
    out["bare_share_of_its_floor"] = round(out["bare_forecast"]["throughput_rps"]
                                           / out["bare_floor"]["throughput_rps"], 3)
    return out


ROWS = (("bare_floor", "bare server, GET /v1/models"),
        ("bare_forecast", "bare server, POST /forecast (fit in the handler)"),
        ("api_floor", "API, GET /v1/models (the floor)"),
        ("api_forecast", "API, POST /v1/forecasts?wait=30 (queue, 2 workers)"))


def table(results: dict[str, Any]) -> str:
    rounds = results["rounds"]
    lines = [f"# The ceiling of a forecast route: share of the API's floor at {LOAD_CLIENTS} "
             "clients", "",
             f"`{results['command']}` on {results['date']}: {results['machine']['cpus']} CPUs "
             f"({results['machine']['platform']}, Python {results['machine']['python']}), "
             f"{results['requests']} requests per cell, `{MODEL}`, horizon {HORIZON}, levels "
             f"{list(LEVELS)}, one coin a request; every answer checked against the model's "
             "forecast. CPU is per request, user + system, of the load client and of the "
             "server process with its children (the API's Redis and workers).", "",
             "| round | cell | req/s | client CPU us | server CPU us |",
             "| --- | --- | --- | --- | --- |"]
    for i, r in enumerate(rounds, 1):
        lines += [f"| {i} | {label} | {r[key]['throughput_rps']} | {r[key]['client_us']} | "
                  f"{r[key]['server_us']} |" for key, label in ROWS]
    lines += ["", "| round | least CPU us a forecast | ceiling req/s | ceiling / API floor | "
              "API / API floor | bare / bare floor |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {r['least_us_per_forecast']} | {r['ceiling_rps']} | "
              f"{r['ceiling_share_of_floor']} | {r['api_share_of_floor']} | "
              f"{r['bare_share_of_its_floor']} |" for i, r in enumerate(rounds, 1)]
    med = results["median"]
    lines += ["", f"Medians: ceiling {med['ceiling_share_of_floor']} of the API's floor, the API "
              f"{med['api_share_of_floor']}; the bare server reaches "
              f"{med['bare_share_of_its_floor']} of its own floor.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--requests", type=int, default=3000, help="requests per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        parser.error(f"no data directory {args.data_dir} (the top-100 data set beside the repo)")
    _coins, expected, bodies = workload(args.data_dir, args.requests)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "serve_ceiling.log.tmp"
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "machine": machine(), "requests": args.requests, "clients": LOAD_CLIENTS,
        "rounds": []}
    for i in range(args.rounds):
        started = time.perf_counter()
        results["rounds"].append(one_round(args.data_dir, bodies, expected, log))
        print(f"round {i + 1} in {time.perf_counter() - started:.0f} s: "
              f"{json.dumps(results['rounds'][-1])}", flush=True)
    log.unlink(missing_ok=True)
    results["median"] = {key: statistics.median(r[key] for r in results["rounds"])
                         for key in ("ceiling_share_of_floor", "api_share_of_floor",
                                     "bare_share_of_its_floor", "least_us_per_forecast")}
    results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 1)
    (args.out / "serve_ceiling.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "serve_ceiling.md").write_text(table(results))
    print(table(results))
    errors = [r[k]["errors"] for r in results["rounds"] for k, _ in ROWS if "errors" in r[k]]
    return 0 if not any(errors) else 1


if __name__ == "__main__":
    raise SystemExit(main())
