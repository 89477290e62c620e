"""Helpers of the container tier: a real Docker engine, real images, real containers.

* Base images: the Dockerfiles' pinned ``python:3.11...-slim`` and the compose file's pinned
  Redis are used when present or pullable; otherwise stand-ins built from Debian packages
  by tests/container/standin_images.sh (debootstrap of bookworm; Debian's redis-server),
  passed through the Dockerfiles' ``PYTHON_IMAGE`` build argument and, for Redis, a compose
  override file (tests/container/compose.standin.yml). The shipped files are not edited.
* Compose: ``docker compose`` (v2) where present, else Debian's ``docker-compose`` 1.29 on a
  copy of docker-compose.yml that differs only by the top-level ``name:`` key, which 1.29
  rejects (asserted by :func:`compose_file_for`).
* Builds use Docker's classic builder (``DOCKER_BUILDKIT=0``): it needs no buildx plugin and
  no ``docker/dockerfile`` frontend image from the registry; the Dockerfiles use nothing
  that only BuildKit understands.

Measurements (build times, image sizes, run wall times, fault counts) are written as JSON
to test-artifacts/container/ and printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from deploy_support import ROOT

HERE = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts" / "container"
STANDIN_SCRIPT = HERE / "standin_images.sh"
STANDIN_PYTHON = "crypto-ml-standin/python:3.11-bookworm"
STANDIN_REDIS = "crypto-ml-standin/redis:bookworm"
STANDIN_OVERRIDE = HERE / "compose.standin.yml"
TEST_OVERRIDE = HERE / "compose.test.yml"
CPU_IMAGE = "crypto-ml:0.1.0"
GPU_IMAGE = "crypto-ml-gpu:0.1.0"
PULL_TIMEOUT = float(os.environ.get("CRYPTO_ML_PULL_TIMEOUT", "60"))


def docker(*args: str, timeout: float = 120, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``docker ARGS``; with ``check``, fail the test with its stderr on a non-zero exit."""
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if check:
        assert out.returncode == 0, f"docker {' '.join(args)} -> {out.returncode}:\n" \
                                    f"{out.stderr[-3000:]}{out.stdout[-2000:]}"
    return out


def engine_problem() -> str | None:
    """None when a Docker engine answers, else why not."""
    if not shutil.which("docker"):
        return "the docker client is not installed (apt-get install docker.io)"
    try:
        out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if out.returncode != 0 or not out.stdout.strip():
        return f"no Docker engine answers: {out.stderr.strip()[-500:]}"
    return None


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 1.0,
             died: Callable[[], str | None] | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if died is not None and (reason := died()):
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False, timeout=30).returncode == 0


def pinned_python_image(dockerfile: Path = ROOT / "Dockerfile") -> str:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile.read_text(), re.M)
    assert match, f"{dockerfile} has no ARG PYTHON_IMAGE default"
    return match[1]


def pinned_redis_image() -> str:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["image"]


def available(ref: str) -> bool:
    """The image is here, or can be pulled within PULL_TIMEOUT seconds."""
    if image_exists(ref):
        return True
    try:
        return docker("pull", "-q", ref, check=False, timeout=PULL_TIMEOUT).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class BaseImages:
    python: str
    redis: str
    standin: bool

    def compose_overrides(self) -> list[Path]:
        return [STANDIN_OVERRIDE] if self.standin else []


def base_images() -> BaseImages:
    """The pinned bases when reachable, else the Debian stand-ins (built if missing)."""
    python, redis = pinned_python_image(), pinned_redis_image()
    if available(python) and available(redis):
        return BaseImages(python, redis, standin=False)
    out = subprocess.run(["bash", str(STANDIN_SCRIPT)], capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, f"building the stand-in base images failed:\n{out.stderr}"
    return BaseImages(STANDIN_PYTHON, STANDIN_REDIS, standin=True)


@dataclass
class Build:
    tag: str
    seconds: float
    output: str

    def cached_steps(self) -> dict[str, bool]:
        """Each build step's instruction -> whether the classic builder took it from cache."""
        steps: dict[str, bool] = {}
        current = None
        for line in self.output.splitlines():
            if line.startswith("Step "):
                current = line.split(" : ", 1)[1].strip()
                steps[current] = False
            elif current and "Using cache" in line:
                steps[current] = True
        return steps


def build_image(tag: str, base: str, context: Path = ROOT, dockerfile: str = "Dockerfile",
                timeout: float = 1800) -> Build:
    start = time.monotonic()
    out = docker("build", "--build-arg", f"PYTHON_IMAGE={base}", "-f",
                 str(context / dockerfile), "-t", tag, str(context), timeout=timeout,
                 env={"DOCKER_BUILDKIT": "0"})
    return Build(tag, time.monotonic() - start, out.stdout)


def image_size(ref: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", ref).stdout)


def image_layers(ref: str) -> list[str]:
    return json.loads(docker("image", "inspect", "--format", "{{json .RootFS.Layers}}",
                             ref).stdout)


def record(name: str, data: dict[str, Any]) -> None:
    """Merge ``data`` into test-artifacts/container/NAME.json and print it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(data)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(f"[container tier] {name}: {json.dumps(data, sort_keys=True)}")


# --- containers -------------------------------------------------------------------------

def inspect(ref: str) -> dict[str, Any]:
    return json.loads(docker("inspect", ref).stdout)[0]


def health(container: str) -> str:
    out = docker("inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}"
                 "{{else}}none{{end}} {{.State.Status}}", container, check=False)
    return out.stdout.strip() if out.returncode == 0 else "gone"


def wait_healthy(containers: Sequence[str], timeout: float) -> None:
    def died() -> str | None:
        for c in containers:
            state = health(c)
            if state.endswith(("exited", "dead")) or state == "gone" or \
                    state.startswith("unhealthy"):
                return f"{c} is {state}: {logs(c)[-1500:]}"
        return None

    wait_for(lambda: all(health(c).startswith("healthy") for c in containers), timeout,
             f"{', '.join(containers)} to turn healthy", interval=2, died=died)


def logs(container: str) -> str:
    out = docker("logs", container, check=False, timeout=60)
    return out.stdout + out.stderr


def remove(*containers: str) -> None:
    if containers:
        docker("rm", "-f", "-v", *containers, check=False, timeout=120)


# --- compose ----------------------------------------------------------------------------

def compose_command() -> list[str]:
    """``docker compose`` (v2) where it works, else Debian's ``docker-compose`` 1.29."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise FileNotFoundError("neither `docker compose` (v2) nor docker-compose is installed "
                            "(apt-get install docker-compose)")


def compose_file_for(command: Sequence[str], workdir: Path) -> Path:
    """docker-compose.yml itself for Compose v2; for 1.29 a copy without the top-level name:."""
    shipped = ROOT / "docker-compose.yml"
    if command[:2] == ["docker", "compose"]:
        return shipped
    text = shipped.read_text()
    adapted = re.sub(r"^name: .*\n", "", text, count=1, flags=re.M)
    original, copy = yaml.safe_load(text), yaml.safe_load(adapted)
    original.pop("name")
    assert copy == original, "the adapted compose file must differ only by its name: key"
    path = workdir / "docker-compose.yml"
    path.write_text(adapted)
    return path


@dataclass
class Compose:
    """One compose project of the shipped file plus override files, run for real."""

    command: list[str]
    files: list[Path]
    project: str
    env: dict[str, str]
    log: list[str] = field(default_factory=list)

    def args(self, *args: str) -> list[str]:
        files = [arg for f in self.files for arg in ("-f", str(f))]
        return [*self.command, *files, "--project-directory", str(ROOT), "-p", self.project,
                *args]

    def __call__(self, *args: str, timeout: float = 600,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        self.log.append(" ".join(args))
        out = subprocess.run(self.args(*args), capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **self.env}, cwd=ROOT)
        if check:
            assert out.returncode == 0, f"compose {' '.join(args)} -> {out.returncode}:\n" \
                                        f"{out.stderr[-3000:]}"
        return out

    def popen(self, *args: str) -> subprocess.Popen[str]:
        self.log.append(" ".join(args))
        return subprocess.Popen(self.args(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **self.env}, cwd=ROOT)

    def containers(self, service: str) -> list[str]:
        """Names of the service's running containers (by compose's labels)."""
        out = docker("ps", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.service={service}",
                     "--format", "{{.Names}}")
        return sorted(out.stdout.split())

    def scale_workers(self, n: int, timeout: float = 600) -> None:
        self("up", "-d", "--no-build", "--no-recreate", "--scale", f"worker={n}", "worker",
             timeout=timeout)
        wait_for(lambda: len(self.containers("worker")) == n, 120, f"{n} worker containers")

    def run_manager(self, *args: str, env: dict[str, str] | None = None,
                    timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``run --rm manager ARGS`` (``-e`` for each of ``env``)."""
        options = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        return self("run", "--rm", "-T", *options, "manager", *args, timeout=timeout,
                    check=False)

    def manager(self, *args: str) -> subprocess.Popen[str]:
        return self.popen("run", "--rm", "-T", "manager", *args)

    def volume(self, name: str) -> str:
        return f"{self.project}_{name}"
