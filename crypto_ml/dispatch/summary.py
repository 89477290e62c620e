"""The closing summary of a run: coins ok and failed (with reasons), per model its fit times and
the device(s) it trained on, the workers, fits the model store refused, and the run's time.

:func:`summarize` turns a :class:`~crypto_ml.dispatch.report.RunReport` into plain data
(also what ``--log-format json`` logs); :func:`summary_lines` into text lines.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from crypto_ml.dispatch.report import RunReport


def summarize(report: RunReport, wall_seconds: float | None = None) -> dict[str, Any]:
    """``coins_ok``, ``coins_failed`` {coin: {model: reason}}, ``models`` (``fits``, the
    forecasts ``from_store`` without one, seconds, ``devices`` {device: forecasts}),
    ``workers``, ``unsaved`` {why a fit was not saved in the model store: fits} and
    ``wall_seconds`` (the report's, unless given: the command line gives the whole run's)."""
    failed = {coin: dict(reasons) for coin, reasons in sorted(report.failed.items())}
    ok = sorted(set(report.results) - set(failed))
    models: dict[str, dict[str, Any]] = {}
    workers: Counter[str] = Counter()
    unsaved: Counter[str] = Counter()
    for coin, by_model in sorted(report.results.items()):
        for model, result in by_model.items():
            if result.get("unsaved"):
                unsaved[str(result["unsaved"])] += 1
            seconds = float(result["fit_seconds"])
            entry = models.setdefault(model, {"fits": 0, "from_store": 0, "total_seconds": 0.0,
                                              "slowest_coin": coin, "slowest_seconds": seconds,
                                              "devices": {}})
            entry["from_store" if result.get("from_store") else "fits"] += 1
            device = str(result.get("device") or "unknown")
            entry["devices"][device] = entry["devices"].get(device, 0) + 1
            entry["total_seconds"] += seconds
            if seconds > entry["slowest_seconds"]:
                entry.update(slowest_coin=coin, slowest_seconds=seconds)
            workers[result["worker"]] += 1
    return {"coins_ok": ok, "coins_failed": failed, "models": models,
            "workers": dict(workers.most_common()), "unsaved": dict(unsaved.most_common()),
            "wall_seconds": report.wall_seconds if wall_seconds is None else wall_seconds}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`summarize`'s data."""
    ok, failed = summary["coins_ok"], summary["coins_failed"]
    n_ok = sum(entry["fits"] + entry["from_store"] for entry in summary["models"].values())
    n_failed = sum(len(reasons) for reasons in failed.values())
    lines = [f"summary: {len(ok)} coin(s) ok, {len(failed)} failed, "
             f"in {summary['wall_seconds']:.1f} s ({n_ok} forecast(s) arrived, {n_failed} failed)"]
    for coin, reasons in failed.items():
        for model, reason in reasons.items():
            lines.append(f"  failed: {coin} {model}: {reason}")
    for model, entry in summary["models"].items():
        devices = entry.get("devices") or {}
        forecasts = entry["fits"] + entry["from_store"]
        on = ", ".join(name if n == forecasts else f"{name} ({n})" for name, n in devices.items())
        stored = f" and {entry['from_store']} from the model store" if entry["from_store"] else ""
        lines.append(f"  {model}: {entry['fits']} fit(s){stored}, {entry['total_seconds']:.3f} s in all, "
                     f"slowest {entry['slowest_coin']} {entry['slowest_seconds']:.3f} s"
                     + (f", on {on}" if on else ""))
    if summary["workers"]:
        done_by = ", ".join(f"{name} ({n})" for name, n in summary["workers"].items())
        lines.append(f"  workers: {done_by}")
    for reason, n in summary.get("unsaved", {}).items():
        lines.append(f"  model store: {n} fit(s) not saved ({reason}); the next run trains them "
                     "again: check CRYPTO_ML_MODEL_STORE and the workers' access to it")
    return lines
