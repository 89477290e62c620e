"""The CPU image, built for real: it imports the app, runs as uid 10001, turns healthy, and a
one-file source edit rebuilds without reinstalling the dependencies."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import ROOT

from . import docker_support as ds

CONTEXT = ["Dockerfile", ".dockerignore", "pyproject.toml", "crypto_ml", "workers", "manager",
           "docker"]


def run_in_image(*argv: str, extra: tuple[str, ...] = ()) -> str:
    return ds.docker("run", "--rm", *extra, ds.CPU_IMAGE, *argv, timeout=300).stdout


def test_image_imports_the_app_and_runs_as_uid_10001(cpu_image: ds.Build) -> None:
    # the app needs a broker URL to configure itself; nothing connects to it here
    broker = ("-e", "CRYPTO_ML_BROKER_URL=redis://redis:6379/0")
    out = run_in_image("python", "-c",
                       "import os, pathlib, crypto_ml; app = crypto_ml.app; "
                       "print(os.getuid(), os.getgid(), app.main, "
                       "pathlib.Path(crypto_ml.__file__).stat().st_size)", extra=broker)
    uid, gid, main, init_size = out.split()
    assert (uid, gid) == ("10001", "10001")
    assert main == "crypto_ml"
    assert int(init_size) > 0, "site-packages/crypto_ml/__init__.py is empty (the stub's)"
    assert ds.inspect(ds.CPU_IMAGE)["Config"]["User"] == "10001:10001"
    # what the workers and Flower run: `celery -A crypto_ml` must find the app
    assert "crypto_ml" in run_in_image("celery", "-A", "crypto_ml", "report", extra=broker)


@pytest.fixture
def network() -> Iterator[str]:
    name = f"crypto-ml-ctest-{secrets.token_hex(4)}"
    ds.docker("network", "create", name)
    try:
        yield name
    finally:
        ds.docker("network", "rm", name, check=False)


def start_redis(bases: ds.BaseImages, network: str, password: str) -> str:
    name = f"redis-{network}"
    ds.docker("run", "-d", "--name", name, "--network", network, "--network-alias", "redis",
              "-e", f"REDISCLI_AUTH={password}", "--user", "999:1000", bases.redis,
              "redis-server", "--appendonly", "yes", "--requirepass", password, "--dir", "/data")
    ds.wait_for(lambda: ds.docker("exec", name, "redis-cli", "-e", "ping",
                                  check=False).returncode == 0, 60, "redis answering")
    return name


def test_image_healthcheck_turns_healthy(cpu_image: ds.Build, bases: ds.BaseImages,
                                         network: str) -> None:
    """The image's default CMD (a CPU worker) and HEALTHCHECK command, unchanged; only the
    check's timing is shortened (the image waits 60 s before its first check)."""
    password = secrets.token_hex(12)
    redis = start_redis(bases, network, password)
    worker = f"worker-{network}"
    try:
        ds.docker("run", "-d", "--name", worker, "--network", network,
                  "-e", f"CRYPTO_ML_BROKER_URL=redis://:{password}@redis:6379/0",
                  "--health-interval", "5s", "--health-start-period", "120s", ds.CPU_IMAGE)
        config = ds.inspect(worker)["Config"]
        image_config = ds.inspect(ds.CPU_IMAGE)["Config"]
        assert config["Cmd"] == ["python", "workers/worker.py", "start"]
        assert config["Healthcheck"]["Test"] == image_config["Healthcheck"]["Test"] == \
            ["CMD", "python", "workers/worker.py", "ping"]
        start = time.monotonic()
        ds.wait_healthy([worker], timeout=240)
        ds.record("images", {"cpu_healthy_after_seconds": round(time.monotonic() - start, 1)})
    finally:
        ds.remove(worker, redis)


def test_one_source_edit_rebuilds_without_reinstalling_dependencies(
        cpu_image: ds.Build, bases: ds.BaseImages, tmp_path: Path) -> None:
    context = tmp_path / "context"
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(source, context / name)
    marker = f"# rebuild probe {secrets.token_hex(4)}\n"
    with (context / "crypto_ml" / "errors.py").open("a") as f:
        f.write(marker)
    tag = f"crypto-ml:rebuild-probe-{secrets.token_hex(4)}"
    try:
        build = ds.build_image(tag, bases.python, context=context)
        steps = build.cached_steps()
        deps = [s for s in steps if "requirements.txt" in s or
                s.startswith("COPY --from=build /opt/venv")]
        source = next(s for s in steps if s.startswith("COPY crypto_ml"))
        assert len(deps) >= 3 and all(steps[s] for s in deps), f"dependency layers rebuilt: {steps}"
        assert not steps[source]
        old, new = ds.image_layers(ds.CPU_IMAGE), ds.image_layers(tag)
        shared = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                      len(old))
        history = json.loads("[" + ",".join(ds.docker(
            "history", "--no-trunc", "--format", "{{json .}}", tag).stdout.split("\n")[:-1])
            + "]")
        assert shared >= 3 and len(new) - shared <= 6, (shared, len(new))
        assert marker.strip() in ds.docker("run", "--rm", tag, "python", "-c",
                                           "import crypto_ml.errors as e, inspect; "
                                           "print(inspect.getsource(e))").stdout
        ds.record("images", {"rebuild_after_one_source_edit_seconds": round(build.seconds, 1),
                             "rebuild_new_layers": len(new) - shared,
                             "rebuild_layers_total": len(new),
                             "history_steps": len(history)})
    finally:
        ds.docker("rmi", tag, check=False)


@pytest.mark.parametrize("cpus", [None, "1"])
def test_worker_pool_follows_the_container_cpu_limit(cpu_image: ds.Build,
                                                     cpus: str | None) -> None:
    extra = ("-e", "CRYPTO_ML_BROKER_URL=redis://redis:6379/0",  # checked, never reached
             *(("--cpus", cpus) if cpus else ()))
    out = run_in_image("python", "workers/worker.py", "start", "--role", "cpu", "--dry-run",
                       extra=extra)
    [node] = json.loads(out)
    command = node["command"]
    concurrency = int(command[command.index("--concurrency") + 1])
    expected = int(cpus) if cpus else len(os.sched_getaffinity(0))  # the host's cores
    assert concurrency == expected
    assert node["env"]["OMP_NUM_THREADS"] == "1"
