"""bench/gpu.py's figures from what its settings measured: the CPU/GPU ratios and the page
(the measuring itself needs a GPU machine: bench/gpu_device.sh)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def setting(device: str, fit_s: float, **extra: object) -> dict[str, object]:
    row = {"fit_s": fit_s, "first_fit_s": 2.0, "windows_per_fit": 150, "predict_s": 0.2}
    return {"device": device, "backend": "torch", "keras": "3", "torch": "2", "torch_threads": 16,
            "cudnn": None, "env": {}, "variants": {"lstm": row}, **extra}


def test_ratios_and_page_from_the_settings(tmp_path: Path) -> None:
    bench = load_bench()
    settings = {"gpu": setting("GPU:0 NVIDIA H200", 0.1), "cpu1": setting("CPU", 0.5),
                "cpu": {"env": {}, "variants": {}, "error": "timed out after 90 s"}}
    assert bench.ratios(settings) == {"lstm": {"cpu1_over_gpu": 5.0}}
    results = {"command": "c", "machine": {"gpu": "NVIDIA H200", "cpu_count": 16, "python": "3.12"},
               "coins": {"bitcoin": 1609, "ethereum": 900},
               "variants": {"lstm": {"points": 200, "window": 50, "batch": 512, "epochs": 1}},
               "settings": settings, "ratios": bench.ratios(settings)}
    (tmp_path / "gpu.json").write_text(json.dumps(results))
    bench.report(argparse.Namespace(results=tmp_path))
    page = (tmp_path / "gpu.md").read_text()
    assert "| lstm (w50, b512, e1) | 200 | 150 | 0.100 | 0.500 | - | - | 5.0 |" in page
    assert "`cpu`: failed: timed out after 90 s" in page
    assert "900 to 1609 closes" in page
