"""The API's floor (``GET /v1/models``, no forecast, no Redis) of two source trees, in turn.

    git worktree add /tmp/wt-old <commit>
    python bench/floor_pairs.py --b /tmp/wt-old                 # A = this tree, order ABBA
    python bench/floor_pairs.py --b /tmp/wt-old --order ABBAABBA

Each turn starts ``python -m crypto_ml.api`` from one tree (its own code on ``PYTHONPATH``,
the embedded cluster with 2 workers, as ``bench/api_load.py`` does), waits until the server
and its workers are idle (:func:`bench.api_load.settle`), then sends ``--rounds`` rounds of
``--requests`` from 32 aiohttp clients. Prints each round's req/s and each side's median,
and A's median over B's. Turns alternate so that a machine growing faster or slower over
the run weighs on both sides. Not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_load import DATA, floor, served  # noqa: E402


def one_turn(tree: Path, data: Path, requests: int, rounds: int, log: Path) -> list[float]:
    """One server from ``tree``: the req/s of each round of the floor."""
    log.unlink(missing_ok=True)
    command = [sys.executable, "-m", "crypto_ml.api", "--workers", "2", "--log-level", "warning"]
    with served(lambda port: [*command, "--port", str(port)], data, log,
                f"the API from {tree}", {"PYTHONPATH": str(tree)}, cwd=tree) as (url, _pid):
        asyncio.run(floor(url, min(300, requests), 32))  # warm-up, not counted
        return [asyncio.run(floor(url, requests, 32))["throughput_rps"] for _ in range(rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", type=Path, default=ROOT, help="tree A (default: this one)")
    parser.add_argument("--b", type=Path, required=True, help="tree B")
    parser.add_argument("--order", default="ABBA")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    args = parser.parse_args()
    if set(args.order) != {"A", "B"}:
        parser.error(f"--order must hold A and B and nothing else, got {args.order!r}")
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    got: dict[str, list[float]] = {"A": [], "B": []}
    for side in args.order:
        rates = one_turn(trees[side], args.data_dir.resolve(), args.requests, args.rounds,
                         Path(f"/tmp/floor_pairs_{side}.log"))
        got[side] += rates
        print(f"{side} ({trees[side]}): {', '.join(f'{r:,.1f}' for r in rates)} req/s", flush=True)
    for side, rates in got.items():
        print(f"{side}: median {statistics.median(rates):,.1f} req/s "
              f"({min(rates):,.1f}-{max(rates):,.1f})")
    print(f"A/B: {statistics.median(got['A']) / statistics.median(got['B']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
