"""LSTM and GRU fits on a GPU against the same machine's CPU: seconds per fit, and the ratio.

    KERAS_BACKEND=torch python bench/gpu.py --coins 24 --out DIR   # DIR/gpu.json; about 2 min
    python bench/gpu.py report --results bench/results              # gpu.md from gpu.json

It fits the project's own ``get_model("lstm")`` and ``get_model("gru")`` (crypto_ml.models) on
the ``--coins`` real coins with the longest history (``CRYPTO_ML_DATA_DIR``), each setting in a
fresh interpreter: ``gpu`` with the GPU visible, ``cpu`` with ``CUDA_VISIBLE_DEVICES=""`` and
the backend's own thread count (all cores), ``cpu1`` with one math thread (what each pool process
of a CPU worker node gets: :func:`crypto_ml.core.settings.threads_env`). A setting's first fit
of each network builds and traces it (and, on the GPU, starts CUDA): it is reported apart, and
the per-fit figures are the medians of the other fits.

Variants: ``lstm`` and ``gru`` as ``send-tasks`` runs them (lstm on the newest 200 closes, gru
on all of them, window 50, batch 512, one epoch; fit, then ``predict`` of 10 closes with the
80/95 % bands) and three larger ones, to see whether more work per fit changes the ratio: three
epochs over all closes at batch 512 and at batch 4096, and windows of 200 closes. gru runs on
the 8 longest coins, the larger variants on the 2 or 3 longest. The batch
size is a module constant of :mod:`crypto_ml.models.rnn`, no model option: the bench sets it.
``windows_per_s`` counts each window once per epoch.
bench/gpu_device.sh runs this with the GPU tests and an end-to-end ``send-tasks``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HORIZON = 10


@dataclass(frozen=True)
class Variant:
    """One configuration of a recurrent fit: cell, closes (0: all), window, epochs, batch."""

    name: str
    cell: str
    points: int
    window: int = 50
    epochs: int = 1
    batch: int = 512
    predict: bool = False
    #: At most this many of the coins (the longest first): the larger variants take fewer.
    coins: int = 1000


VARIANTS = {v.name: v for v in (
    Variant("lstm", "lstm", 200, predict=True),
    Variant("gru", "gru", 0, predict=True, coins=8),
    Variant("lstm-all-e3", "lstm", 0, epochs=3, coins=2),
    Variant("lstm-all-e3-b4096", "lstm", 0, epochs=3, batch=4096, coins=2),
    Variant("lstm-all-w200", "lstm", 0, window=200, coins=3),
)}
#: The fresh-interpreter settings: extra environment, and the variants each one runs.
SETTINGS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "gpu": ({}, tuple(VARIANTS)),
    "cpu1": ({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
             ("lstm", "gru")),
    "cpu": ({"CUDA_VISIBLE_DEVICES": ""}, tuple(VARIANTS)),
}


def longest_coins(data_dir: Path, n: int) -> dict[str, int]:
    """The ``n`` coins with the most closes (ties by name), with their counts."""
    from crypto_ml.data.loader import CryptoLoader

    loader = CryptoLoader(data_dir)
    counts = {c: len(loader.get_closes(c)[1]) for c in loader.get_crypto_names()}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def fit_variant(variant: Variant, series: dict[str, Any]) -> dict[str, Any]:
    """Fit ``variant`` on its series in this process: the medians of the fits, the first one
    apart when it built the network (a variant after one of the same cell and window reuses it)."""
    from crypto_ml.models import get_model, rnn

    builds = (variant.cell, variant.window, 42) not in rnn._NETWORKS
    rnn.BATCH_SIZE = variant.batch  # no model option: the bench's knob (module docstring)
    fits, predicts, windows, device = [], [], [], ""
    for prices in list(series.values())[: variant.coins]:
        closes = prices[-variant.points:] if variant.points else prices
        model = get_model(variant.cell, window=variant.window, epochs=variant.epochs)
        start = time.perf_counter()
        model.fit(closes)
        fits.append(time.perf_counter() - start)
        if variant.predict:
            start = time.perf_counter()
            model.predict(HORIZON)
            predicts.append(time.perf_counter() - start)
        windows.append(len(closes) - variant.window)
        device = model.device
    later = fits[1:] if builds and len(fits) > 1 else fits
    row: dict[str, Any] = {
        "device": device, "fits": len(fits), "first_fit_s": round(fits[0], 4),
        "fit_s": round(statistics.median(later), 4), "fit_s_total": round(sum(later), 3),
        "windows_per_fit": round(statistics.mean(windows), 1),
        "windows_per_s": round(variant.epochs * sum(windows[-len(later):]) / sum(later), 1),
        "first_fit_builds": builds}
    if predicts:
        row["predict_s"] = round(statistics.median(predicts[1:] or predicts), 4)
    return row


def probe(coins: list[str], variants: list[str]) -> None:
    """Every variant in this interpreter, on ``coins`` of CRYPTO_ML_DATA_DIR: a JSON line for
    the backend, then one per variant as it ends (a setting cut short keeps those done)."""
    from crypto_ml.data.loader import CryptoLoader
    from crypto_ml.models.device import keras_and_device

    loader = CryptoLoader(os.environ["CRYPTO_ML_DATA_DIR"])
    series = {c: loader.get_closes(c)[1] for c in coins}
    start = time.perf_counter()
    keras, device = keras_and_device()
    out: dict[str, Any] = {"device": device, "backend": keras.backend.backend(),
                           "keras": keras.__version__, "import_s": round(time.perf_counter() - start, 3)}
    if out["backend"] == "torch":
        import torch

        out |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    print(json.dumps(out), flush=True)
    for name in variants:
        print(json.dumps({"variant": name, **fit_variant(VARIANTS[name], series)}), flush=True)


def run_setting(name: str, coins: list[str], timeout: float) -> dict[str, Any]:
    extra, variants = SETTINGS[name]
    cmd = [sys.executable, str(Path(__file__).resolve()), "probe", "--coins", ",".join(coins),
           "--variants", ",".join(variants)]
    start, problem = time.perf_counter(), None
    try:
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **extra}, capture_output=True,
                              text=True, timeout=timeout)
        stdout = done.stdout
        if done.returncode != 0:
            problem = " | ".join(done.stderr.strip().splitlines()[-3:])
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        stdout = raw.decode() if isinstance(raw, bytes) else raw
        problem = f"timed out after {timeout:.0f} s"
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    row: dict[str, Any] = {**(lines[0] if lines else {}), "env": extra,
                           "wall_s": round(time.perf_counter() - start, 1), "variants": {}}
    for line in lines[1:]:
        row["variants"][line.pop("variant")] = line
    if problem:
        row["error"] = problem
    return row


def ratios(settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per variant: CPU seconds per fit over GPU seconds per fit (above 1: the GPU is faster)."""
    gpu = settings.get("gpu", {}).get("variants", {})
    out: dict[str, dict[str, float]] = {}
    for cpu in ("cpu", "cpu1"):
        for name, row in settings.get(cpu, {}).get("variants", {}).items():
            if name in gpu:
                out.setdefault(name, {})[f"{cpu}_over_gpu"] = round(row["fit_s"] / gpu[name]["fit_s"], 2)
    return out


def machine() -> dict[str, Any]:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True) \
        if _which("nvidia-smi") else None
    return {"gpu": smi.stdout.strip() if smi and smi.returncode == 0 else None,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def measure(args: argparse.Namespace) -> int:
    data = Path(os.environ.get("CRYPTO_ML_DATA_DIR", ROOT.parent / "shared/data/top100-2017"))
    os.environ["CRYPTO_ML_DATA_DIR"] = str(data)
    counts = longest_coins(data, args.coins)
    results: dict[str, Any] = {
        "command": f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND', '?')} python bench/gpu.py "
                   f"--coins {args.coins}",
        "machine": machine(), "coins": counts, "variants": {k: asdict(v) for k, v in VARIANTS.items()},
        "settings": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.settings.split(","):
        results["settings"][name] = run_setting(name, list(counts), args.timeout)
        results["ratios"] = ratios(results["settings"])
        (args.out / "gpu.json").write_text(json.dumps(results, indent=1) + "\n")  # partial: kept
        print(name, json.dumps(results["settings"][name]), flush=True)
    print(json.dumps(results["ratios"], indent=1))
    return 0


def table(results: dict[str, Any]) -> list[str]:
    settings = results["settings"]
    lines = ["| variant | closes | windows/fit | " + " | ".join(
        f"{s} s/fit" for s in settings) + " | cpu/gpu | cpu1/gpu |", "|" + " --- |" * (5 + len(settings))]
    for name, spec in results["variants"].items():
        cells = []
        for s in settings.values():
            row = s.get("variants", {}).get(name)
            cells.append(f"{row['fit_s']:.3f}" if row else "-")
        rows = [s.get("variants", {}).get(name) for s in settings.values()]
        windows = next((r["windows_per_fit"] for r in rows if r), "-")
        ratio = results.get("ratios", {}).get(name, {})
        closes = spec["points"] or "all"
        label = f"{name} (w{spec['window']}, b{spec['batch']}, e{spec['epochs']})"
        lines.append(f"| {label} | {closes} | {windows} | " + " | ".join(cells) +
                     f" | {ratio.get('cpu_over_gpu', '-')} | {ratio.get('cpu1_over_gpu', '-')} |")
    return lines


def report(args: argparse.Namespace) -> int:
    """bench/results/gpu.md from gpu.json (and the device run's test and send-tasks lines)."""
    results = json.loads((args.results / "gpu.json").read_text())
    settings = results["settings"]
    lines = ["# LSTM and GRU on a GPU against the same machine's CPU", "",
             f"Command: `{results['command']}` (inside `bash bench/gpu_device.sh`).", "",
             f"Machine: {results['machine']['gpu']}; {results['machine']['cpu_count']} CPU cores; "
             f"Python {results['machine']['python']}.", ""]
    for name, s in settings.items():
        if "device" not in s:
            lines.append(f"* `{name}`: failed: {s.get('error')}")
            continue
        if "error" in s:
            lines.append(f"* `{name}`: cut short ({s['error']}): the variants it finished follow")
        lines.append(f"* `{name}`: {s['device']}, Keras {s['keras']} ({s['backend']} backend), "
                     f"torch {s.get('torch')} with {s.get('torch_threads')} threads, "
                     f"cuDNN {s.get('cudnn')}, env {s['env'] or '{}'}; first fit (build, trace"
                     f"{', CUDA start' if name == 'gpu' else ''}): "
                     f"{s['variants'].get('lstm', {}).get('first_fit_s')} s (lstm)")
    lines += ["", f"{len(results['coins'])} coins with the longest history "
              f"({min(results['coins'].values())} to {max(results['coins'].values())} closes); "
              "seconds per fit are medians over the fits after the first.", "", *table(results)]
    predict = [f"{n} {v} {s['variants'][v]['predict_s']} s" for n, s in settings.items()
               for v in ("lstm", "gru") if "predict_s" in s.get("variants", {}).get(v, {})]
    if predict:
        lines += ["", "`predict(10)` with 80/95 % bands after a default fit: "
                  + ", ".join(predict) + "."]
    extra = args.results / "gpu_notes.md"
    if extra.is_file():
        lines += ["", extra.read_text().strip()]
    (args.results / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    p = sub.add_parser("probe", help="(internal) one setting's fits in this interpreter")
    p.add_argument("--coins", required=True)
    p.add_argument("--variants", required=True)
    r = sub.add_parser("report", help="gpu.md from gpu.json")
    r.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--coins", type=int, default=24)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--timeout", type=float, default=150, help="seconds per setting")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.mode == "probe":
        probe(args.coins.split(","), args.variants.split(","))
        return 0
    if args.mode == "report":
        return report(args)
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
