"""The closing summary of a run: coins ok and failed (with reasons), fit times per model, workers.

:func:`summarize` turns a :class:`~crypto_ml.dispatch.report.RunReport` into plain data
(also what ``--log-format json`` logs); :func:`summary_lines` into text lines.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from crypto_ml.dispatch.report import RunReport


def summarize(report: RunReport) -> dict[str, Any]:
    """``coins_ok``, ``coins_failed`` {coin: {model: reason}}, ``models``, ``workers``."""
    failed = {coin: dict(reasons) for coin, reasons in sorted(report.failed.items())}
    ok = sorted(set(report.results) - set(failed))
    models: dict[str, dict[str, Any]] = {}
    workers: Counter[str] = Counter()
    for coin, by_model in sorted(report.results.items()):
        for model, result in by_model.items():
            seconds = float(result["fit_seconds"])
            entry = models.setdefault(model, {"fits": 0, "total_seconds": 0.0,
                                              "slowest_coin": coin, "slowest_seconds": seconds})
            entry["fits"] += 1
            entry["total_seconds"] += seconds
            if seconds > entry["slowest_seconds"]:
                entry.update(slowest_coin=coin, slowest_seconds=seconds)
            workers[result["worker"]] += 1
    return {"coins_ok": ok, "coins_failed": failed, "models": models,
            "workers": dict(workers.most_common()), "wall_seconds": report.wall_seconds}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`summarize`'s data."""
    ok, failed = summary["coins_ok"], summary["coins_failed"]
    lines = [f"summary: {len(ok)} coin(s) ok, {len(failed)} failed, "
             f"in {summary['wall_seconds']:.1f} s"]
    for coin, reasons in failed.items():
        for model, reason in reasons.items():
            lines.append(f"  failed {coin} {model}: {reason}")
    for model, entry in summary["models"].items():
        lines.append(f"  {model}: {entry['fits']} fit(s), {entry['total_seconds']:.3f} s in all, "
                     f"slowest {entry['slowest_coin']} {entry['slowest_seconds']:.3f} s")
    if summary["workers"]:
        done_by = ", ".join(f"{name} ({n})" for name, n in summary["workers"].items())
        lines.append(f"  workers: {done_by}")
    return lines
