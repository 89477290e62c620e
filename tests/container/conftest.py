"""Fixtures of the container tier (tests/container): real images, a real compose stack.

The tier runs only when selected with ``-m container`` (``pytest -m container``); a plain
``pytest`` deselects it, so the README's normal test command stays as fast as before.
Everything skips, with the reason, where no Docker engine answers.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import ROOT

from . import docker_support as ds

# Beside the clone (CI) or two levels up from a worktree: the same place tests/conftest.py uses.
SHARED_DATA = next((p / "shared" / "data" / "top100-2017" for p in (ROOT.parent, ROOT.parents[1])
                    if (p / "shared" / "data" / "top100-2017").is_dir()),
                   ROOT.parent / "shared" / "data" / "top100-2017")
PROJECT = "crypto-ml-ctest"
WORKERS = 3
# An LSTM task takes seconds, but a pool process's first one imports TensorFlow: measured at
# 85 s on a loaded 2-core machine. See compose.test.yml for the visibility timeout.
SOFT_LIMIT, HARD_LIMIT = 150, 170
# 3 workers on a 2-core CI machine: one core each (the compose file's knob), one pool process each
WORKER_CPUS = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this folder's tests ``container``; deselect them unless -m names the marker."""
    here = Path(__file__).parent
    mine = [item for item in items if here in Path(str(item.fspath)).parents]
    for item in mine:
        item.add_marker(pytest.mark.container)
    if "container" in (config.option.markexpr or ""):
        return
    if mine:
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]


@pytest.fixture(scope="session")
def engine() -> None:
    problem = ds.engine_problem()
    if problem:
        pytest.skip(f"container tier needs a Docker engine: {problem}")


@pytest.fixture(scope="session")
def bases(engine: None) -> ds.BaseImages:
    start = time.monotonic()
    found = ds.base_images()
    ds.record("images", {"python_base": found.python, "redis_image": found.redis,
                         "standin_bases": found.standin,
                         "base_images_seconds": round(time.monotonic() - start, 1)})
    return found


@pytest.fixture(scope="session")
def cpu_image(bases: ds.BaseImages) -> ds.Build:
    """crypto-ml:0.1.0 built from this checkout (a warm build where the cache has the layers)."""
    had_layers = ds.image_exists(ds.CPU_IMAGE)
    build = ds.build_image(ds.CPU_IMAGE, bases.python)
    cached = build.cached_steps()
    kind = "warm" if any(cached.values()) else "cold"
    ds.record("images", {f"cpu_build_{kind}_seconds": round(build.seconds, 1),
                         "cpu_image_bytes": ds.image_size(ds.CPU_IMAGE),
                         "cpu_image_existed_before": had_layers})
    return build


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (SHARED_DATA / "Bitcoin.csv").is_file():
        pytest.skip(f"shared data set not found at {SHARED_DATA}")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def compose_env() -> dict[str, str]:
    data = SHARED_DATA.resolve() if SHARED_DATA.is_dir() else ROOT / "data" / "crypto"
    return {"REDIS_PASSWORD": secrets.token_hex(16),
            "FLOWER_BASIC_AUTH": f"admin:{secrets.token_hex(8)}",
            "CRYPTO_ML_DATA_HOST_DIR": str(data),
            "CRYPTO_ML_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
            "CRYPTO_ML_HARD_TIME_LIMIT": str(HARD_LIMIT),
            "CRYPTO_ML_WORKER_CPUS": str(WORKER_CPUS)}


@pytest.fixture(scope="session")
def stack(cpu_image: ds.Build, bases: ds.BaseImages, compose_env: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ds.Compose]:
    """``compose up -d --scale worker=3``: Redis (AOF, password), 3 workers, Flower, healthy."""
    command = ds.compose_command()
    work = tmp_path_factory.mktemp("compose")
    files = [ds.compose_file_for(command, work), *bases.compose_overrides(), ds.TEST_OVERRIDE]
    compose = ds.Compose(command, files, PROJECT, compose_env)
    compose("down", "-v", "--remove-orphans", timeout=300, check=False)  # an aborted run's
    try:
        start = time.monotonic()
        compose("up", "-d", "--no-build", "--scale", f"worker={WORKERS}", timeout=600)
        containers = [*compose.containers("redis"), *compose.containers("worker"),
                      *compose.containers("flower")]
        assert len(containers) == WORKERS + 2, containers
        ds.wait_healthy(containers, timeout=300)
        ds.record("compose", {"compose": " ".join(command), "compose_files": [
            str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else "copy of docker-compose.yml "
            "without name:" for f in files],
            "stack_healthy_seconds": round(time.monotonic() - start, 1)})
        yield compose
    finally:
        for service in ("worker", "flower", "redis"):
            for container in compose.containers(service):
                (work / f"{container}.log").write_text(ds.logs(container))
        compose("down", "-v", "--remove-orphans", "-t", "30", timeout=600, check=False)
