"""What a cold process pays before its first ets / theta / arima forecast, and what warming saves.

    python bench/warmup.py            # writes bench/results/warmup.{json,md}; about a minute

statsforecast 2.x has no numba JIT any more (its ETS, Theta and ARIMA loops are compiled
ahead of time), so the cold cost is importing the library and the first call into each
model's code. Each figure comes from a fresh interpreter (``python -c``), repeated
``--repeats`` times (median): the first fit and forecast of each model (import included)
against a second one in the same process, and the cost of
:func:`crypto_ml.models.statistical.warm_up`, which a worker runs once in its parent
before forking its pool (``worker_init``), so no pool process pays the cold cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, time
t0 = time.perf_counter()
import numpy as np
from crypto_ml.models import get_model
rng = np.random.default_rng(0)
series = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.03, 200)))
out = {"import_crypto_ml": time.perf_counter() - t0}
model = "%s"
if model == "warm_up":
    from crypto_ml.models.statistical import warm_up
    t = time.perf_counter(); warm_up(); out["warm_up"] = time.perf_counter() - t
    t = time.perf_counter(); get_model("ets").fit(series).predict(10)
    out["ets_after"] = time.perf_counter() - t
else:
    for key in ("first", "second"):
        t = time.perf_counter(); get_model(model).fit(series).predict(10)
        out[key] = time.perf_counter() - t
print(json.dumps(out))
"""


def probe(model: str) -> dict[str, float]:
    run = subprocess.run([sys.executable, "-c", PROBE % model], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=300)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rows = {}
    for model in ("ets", "theta", "arima", "warm_up"):
        runs = [probe(model) for _ in range(args.repeats)]
        rows[model] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(model, {k: round(v, 4) for k, v in rows[model].items()}, file=sys.stderr)
    results = {"machine": platform.platform(), "python": platform.python_version(),
               "repeats": args.repeats, "seconds": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warmup.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"# statsforecast cold start per process (median of {args.repeats} fresh interpreters)",
             "", "| model | first fit+forecast, import included (s) | second (s) | ratio |",
             "| --- | --- | --- | --- |"]
    for model in ("ets", "theta", "arima"):
        r = rows[model]
        lines.append(f"| {model} | {r['first']:.3f} | {r['second']:.4f} | "
                     f"{r['first'] / r['second']:.0f}x |")
    w = rows["warm_up"]
    lines += ["", f"`warm_up()` (all three, once per worker parent before it forks): "
              f"{w['warm_up']:.3f} s; an ets fit after it: {w['ets_after']:.4f} s.",
              f"Machine: {results['machine']}, Python {results['python']}."]
    (args.out / "warmup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
