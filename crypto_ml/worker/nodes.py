"""The worker nodes to start on a machine, and the one place a worker's command line is built.

:func:`command` is every worker's command line (``python -m crypto_ml.worker.launch`` and
Celery ``worker`` options): the worker containers' nodes (:func:`plan`, run by
:mod:`crypto_ml.cli.worker`) and the embedded cluster's workers
(:meth:`crypto_ml.dispatch.cluster.LocalCluster.worker_command`) both use it.

:func:`plan` sizes a container's nodes for what it may use (:func:`usable_cores`: its
cgroup CPU quota and CPU affinity, not the host's core count; :func:`visible_gpus`):

* cpu: one node ``cpu@HOST`` consuming ``cpu,gpu`` with one prefork process per core, each
  process's math libraries limited to one thread.
* gpu: one node ``gpu<i>@HOST`` per visible GPU consuming only ``gpu`` with concurrency 1,
  pinned to its GPU with ``CUDA_VISIBLE_DEVICES``.

Light on purpose (no Celery import): the containers' health check imports it too.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crypto_ml.core.settings import comma_list, threads_env

CGROUP = Path("/sys/fs/cgroup")
#: The module every worker runs (``python -m``): Celery's ``worker`` command on crypto_ml's app.
LAUNCHER = "crypto_ml.worker.launch"


#: Set by the embedded cluster (:mod:`crypto_ml.dispatch.cluster`) on its workers to the pid of
#: the process that owns it: a worker ends when that process is gone
#: (:func:`crypto_ml.worker.launch.end_with`).
PARENT_ENV = "CRYPTO_ML_EMBEDDED_PARENT"


def command(hostname: str, queues: str, concurrency: int, loglevel: str = "INFO",
            extra: Sequence[str] = (), *, mingle: bool = True) -> list[str]:
    """One worker's command line: ``python -m crypto_ml.worker.launch`` (its first three items),
    then Celery ``worker`` options, then ``extra`` unchanged (where it repeats one, it wins).

    ``queues`` is a comma list (``cpu,gpu``). Every worker runs a prefork pool without gossip
    (liveness is :mod:`crypto_ml.worker.liveness`'s heartbeats, not other workers' events).
    ``mingle=False`` skips the start-up sync with the other workers (their revoked task ids;
    up to a second of every start): for the workers of a cluster that starts with them.
    """
    return [sys.executable, "-m", LAUNCHER, "--hostname", hostname, "--queues", queues,
            "--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", loglevel,
            "--without-gossip", *(() if mingle else ("--without-mingle",)), *extra]


@dataclass
class Node:
    """One worker process to run: its name, queues, pool size and extra env."""

    name: str
    queues: str
    concurrency: int
    env: dict[str, str] = field(default_factory=dict)

    def command(self, loglevel: str = "INFO", extra: Sequence[str] = ()) -> list[str]:
        """This node's command line (:func:`command`)."""
        return command(self.name, self.queues, self.concurrency, loglevel, extra)


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
    """Device ids of the GPUs this container may use; empty when there are none.

    Those in ``CUDA_VISIBLE_DEVICES`` when it is set, else those that ``nvidia-smi -L``
    lists (the NVIDIA container runtime provides it).
    """
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        ids = comma_list(cuda)
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
    """The worker nodes to start for ``role`` (``auto``: ``gpu`` when ``gpus``, else ``cpu``)
    on this hardware; ValueError for the gpu role without a GPU, or ``queues`` naming none."""
    if queues is not None:
        queues = ",".join(q.strip() for q in queues.split(",") if q.strip())
        if not queues:
            raise ValueError("--queues names no queue; give a comma list such as cpu,gpu, or "
                             "leave it out for the role's own")
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


def node_env(node: Node, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of one node: ``base`` wins for thread counts the user set explicitly."""
    env = dict(base)
    for key, value in node.env.items():
        if key == "CUDA_VISIBLE_DEVICES" or key not in env:
            env[key] = value
    return env
