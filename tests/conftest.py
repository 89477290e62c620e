"""Shared test fixtures: the real data set, a real local cluster, the CLI as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# beside the clone (CI), or two levels up from a worktree in /work/wt/NAME
SHARED_DATA = next((p / "shared" / "data" / "top100-2017" for p in (ROOT.parent, ROOT.parents[1])
                    if (p / "shared" / "data" / "top100-2017").is_dir()),
                   ROOT.parent / "shared" / "data" / "top100-2017")
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real top-100 data set beside the repository, or a skip saying where it should be."""
    if not (SHARED_DATA / "Bitcoin.csv").is_file():
        pytest.skip(f"shared data set not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """A real Redis server and two real `celery -A crypto_ml worker` processes."""
    from crypto_ml.cluster import LocalCluster

    with LocalCluster(workers=2) as running:
        yield running


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m crypto_ml.manager ARGS`` in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_ML_")}
    if data_dir is not None:
        full_env["CRYPTO_ML_DATA_DIR"] = str(data_dir)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "crypto_ml.manager", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped, with the reason, on machines without an NVIDIA GPU."""
    import shutil

    if shutil.which("nvidia-smi"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi not found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
