#!/usr/bin/env python3
"""Entry point of worker containers: start Celery workers sized for the hardware, or ping them.

    python workers/worker.py start [--role auto|cpu|gpu] [--queues Q] [--concurrency N] [-- ARGS]
    python workers/worker.py ping [--timeout S]

``start`` (role ``auto`` picks ``gpu`` when a GPU is visible, else ``cpu``):

* cpu: one node ``cpu@HOST`` consuming ``cpu,gpu`` with one prefork process per
  core this container may use (its cgroup CPU quota and CPU affinity, not the
  host's core count), each process's math libraries limited to one thread.
* gpu: one node ``gpu<i>@HOST`` per visible GPU consuming only ``gpu`` with
  concurrency 1, pinned to its GPU with ``CUDA_VISIBLE_DEVICES``. With one GPU
  the worker replaces this process; with several this process starts one worker
  per GPU, forwards SIGTERM/SIGINT to them and stops them all when one exits.

GPUs are those in ``CUDA_VISIBLE_DEVICES`` when it is set, else those that
``nvidia-smi -L`` lists (the NVIDIA container runtime provides it). Arguments
after ``--`` go to ``celery worker`` unchanged. The broker and every other
setting come from the ``CRYPTO_ML_*`` environment (see crypto_ml/core/settings.py).

``start`` writes the node names to a state file in the temporary directory;
``ping`` (the container's health check) sends ``celery inspect ping`` to exactly
those nodes and exits 0 only if every one answers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crypto_ml.cli import guarded
from crypto_ml.cli.options import EXIT_CONFIG
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import THREAD_VARS, threads_env

CGROUP = Path("/sys/fs/cgroup")
__all__ = ["EXIT_CONFIG", "THREAD_VARS", "threads_env"]


@dataclass
class Node:
    """One ``celery worker`` process to run: its name, queues, pool size and extra env."""

    name: str
    queues: str
    concurrency: int
    env: dict[str, str] = field(default_factory=dict)


def state_path() -> Path:
    """Where ``start`` records its node names for ``ping`` (honours TMPDIR)."""
    return Path(tempfile.gettempdir()) / "crypto-ml-worker.json"


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The container's CPU quota in cores (cgroup v2 ``cpu.max`` or v1 CFS files), if any."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    for sub in ("cpu", "cpu,cpuacct"):
        quota_file, period_file = root / sub / "cpu.cfs_quota_us", root / sub / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota_us = int(quota_file.read_text())
            return quota_us / int(period_file.read_text()) if quota_us > 0 else None
    return None


def usable_cores(root: Path = CGROUP) -> int:
    """Cores this process may use: CPU affinity, capped by the cgroup quota (at least 1)."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """Device ids of the GPUs this container may use; empty when there are none."""
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        ids = [d.strip() for d in cuda.split(",") if d.strip()]
        return [] if not ids or ids[0].startswith("-") else ids
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return [str(i) for i in range(len(lines))] if out.returncode == 0 else []


def plan(role: str, gpus: Sequence[str], cores: int, host: str, queues: str | None = None,
         concurrency: int | None = None) -> list[Node]:
    """The worker nodes to start for ``role`` on this hardware."""
    if role == "auto":
        role = "gpu" if gpus else "cpu"
    if role == "gpu":
        if not gpus:
            raise ValueError("--role gpu but no GPU is visible (nvidia-smi "
                             "finds none, CUDA_VISIBLE_DEVICES is empty); run the GPU image with "
                             "the NVIDIA runtime and a GPU reserved, or use --role cpu")
        per_node = concurrency or 1
        return [Node(f"gpu{i}@{host}", queues or "gpu", per_node,
                     {"CUDA_VISIBLE_DEVICES": gpu, **threads_env(cores // len(gpus), per_node)})
                for i, gpu in enumerate(gpus)]
    processes = concurrency or cores
    return [Node(f"cpu@{host}", queues or "cpu,gpu", processes, threads_env(cores, processes))]


def celery_command(node: Node, loglevel: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "crypto_ml", "worker",
            "--hostname", node.name, "--queues", node.queues,
            "--concurrency", str(node.concurrency), "--pool", "prefork",
            "--loglevel", loglevel, "--without-gossip", *extra]


def node_env(node: Node, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of one node: ``base`` wins for thread counts the user set explicitly."""
    env = dict(base)
    for key, value in node.env.items():
        if key == "CUDA_VISIBLE_DEVICES" or key not in env:
            env[key] = value
    return env


def supervise(commands: Sequence[tuple[list[str], dict[str, str]]]) -> int:
    """Run several workers; forward SIGTERM/SIGINT; when one exits, stop the others.

    Each worker gets its own session, so a terminal's Ctrl-C reaches them once, through
    this process, instead of twice (a second SIGINT would make Celery stop at once).
    """
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop_all(signum: int = signal.SIGTERM, _frame: object = None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for cmd, env in commands:
        if not stopping:
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    _pid, status = os.wait()
    first = os.waitstatus_to_exitcode(status)
    stop_all()
    codes = [proc.wait() for proc in procs]
    worst = first or max(codes, key=abs, default=0)
    return 128 - worst if worst < 0 else worst


def start(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    env = dict(os.environ)
    try:
        nodes = plan(args.role, visible_gpus(env), usable_cores(), socket.gethostname(),
                     args.queues, args.concurrency)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    commands = [(celery_command(n, args.loglevel, extra), node_env(n, env)) for n in nodes]
    if args.dry_run:
        print(json.dumps([{"command": cmd, "env": {k: env[k] for k in n.env}}
                          for n, (cmd, env) in zip(nodes, commands, strict=True)], indent=2))
        return 0
    state_path().write_text(json.dumps({"nodes": [n.name for n in nodes]}))
    described = ", ".join(f"{n.name} ({n.queues} x{n.concurrency})" for n in nodes)
    print(f"crypto-ml worker: starting {described}", flush=True)
    if len(commands) == 1:
        cmd, node_environment = commands[0]
        os.execve(cmd[0], cmd, node_environment)
    return supervise(commands)


def ping(args: argparse.Namespace) -> int:
    try:
        nodes = json.loads(state_path().read_text())["nodes"]
    except (OSError, ValueError, KeyError):
        print(f"crypto-ml worker: no worker was started here ({state_path()} missing)",
              file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "celery", "-A", "crypto_ml", "inspect", "ping",
           "--destination", ",".join(nodes), "--timeout", str(args.timeout), "--json"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout + 60)
        replies = json.loads(out.stdout or "{}")
    except (subprocess.TimeoutExpired, ValueError):
        replies = {}
    missing = sorted(set(nodes) - set(replies))
    if missing:
        print(f"crypto-ml worker: no pong from {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"crypto-ml worker: pong from {', '.join(nodes)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workers/worker.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("start", help="start worker(s) for this hardware (arguments after -- "
                                       "go to celery worker)")
    run.add_argument("--role", choices=("auto", "cpu", "gpu"), default="auto",
                     help="cpu, gpu, or auto: gpu when a GPU is visible (auto)")
    run.add_argument("--queues", help="comma list of queues (cpu role: cpu,gpu; gpu role: gpu)")
    run.add_argument("--concurrency", type=int,
                     help="pool processes per node (cpu role: usable cores; gpu role: 1)")
    run.add_argument("--loglevel", default="INFO", help="celery log level (INFO)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the celery command(s) and environment instead of running them")
    check = sub.add_parser("ping", help="exit 0 if every worker this container started answers")
    check.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for the answers (10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if args.command == "start":
        return guarded(lambda: start(args, extra), interrupted="workers stopped")
    return ping(args)


if __name__ == "__main__":
    sys.exit(main())
