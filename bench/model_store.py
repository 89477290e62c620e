"""The model store's speed-up: the same LSTM request twice through the HTTP API.

    python bench/model_store.py                     # bitcoin, then ethereum, lstm, horizon 10
    python bench/model_store.py --preload           # workers load Keras when they start

Starts ``python -m crypto_ml.api`` on the embedded cluster (2 workers) and sends, per
coin, the same ``lstm`` request twice with ``wait``: the first trains and stores the
network, the second must come from the store (``from_store``) with an identical
forecast. The first coin meets cold workers (TensorFlow imported, network built on the
first deep task), the second coin warm ones. Writes bench/results/model_store.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import DATA, api_server  # noqa: E402


def post(url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    request = urllib.request.Request(f"{url}/v1/forecasts?wait=60", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as reply:
        answer = json.loads(reply.read())
    return time.perf_counter() - started, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--coins", default="bitcoin,ethereum")
    parser.add_argument("--epochs", type=int, default=1, help="lstm epochs (its default: 1)")
    parser.add_argument("--preload", action="store_true", help="CRYPTO_ML_PRELOAD_KERAS=1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.preload:
        os.environ["CRYPTO_ML_PRELOAD_KERAS"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    name = "model_store_preload" if args.preload else "model_store"
    rows: list[dict[str, Any]] = []
    with api_server(args.data_dir, 2, False, args.out / f"{name}.log.tmp") as (url, _):
        for coin in args.coins.split(","):
            body = {"coins": [coin], "model": "lstm", "horizon": 10,
                    "params": {"epochs": args.epochs}}
            timings, results = [], []
            for _ in range(2):
                seconds, answer = post(url, body)
                timings.append(seconds)
                results.append(answer["results"][coin]["lstm"])
            rows.append({"coin": coin, "first_seconds": round(timings[0], 3),
                         "second_seconds": round(timings[1], 3),
                         "speedup": round(timings[0] / timings[1], 1),
                         "first_from_store": results[0]["from_store"],
                         "second_from_store": results[1]["from_store"],
                         "first_fit_seconds": results[0]["fit_seconds"],
                         "identical_forecast": results[0]["forecast"] == results[1]["forecast"],
                         "workers": [r["worker"] for r in results]})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / f"{name}.log.tmp").unlink(missing_ok=True)
    summary = {"epochs": args.epochs, "preload_keras": args.preload, "rows": rows}
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Model store: the same lstm request twice (epochs {args.epochs}, "
             f"CRYPTO_ML_PRELOAD_KERAS={int(args.preload)}, 2 embedded workers)", "",
             "| coin | 1st request s (trains) | 2nd request s (store) | speed-up | "
             "2nd from store | identical forecast |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['coin']} | {r['first_seconds']} | {r['second_seconds']} | "
              f"{r['speedup']}x | {r['second_from_store']} | {r['identical_forecast']} |"
              for r in rows]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = all(r["second_from_store"] and not r["first_from_store"] and r["identical_forecast"]
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
