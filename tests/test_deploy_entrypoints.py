"""The container entry points (``python -m crypto_ml.worker``, run as workers/worker.py, and
manager/job.py): how they size workers for the hardware they find, that every worker's command
line is built in one place, and how the job refuses bad setups with one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import ROOT, local_env

from crypto_ml.dispatch.cluster import LocalCluster
from crypto_ml.ops.processes import free_port
from crypto_ml.worker import nodes as worker

#: a worker's broker (never reached by these commands)
BROKER = {"CRYPTO_ML_BROKER_URL": "redis://worker:pw@redis:6379/0"}


def run(script: str, *args: str, env: dict[str, str] | None = None,
        tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=local_env(env or {}, 0, tmp))


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu.max": "50000 100000\n"}, 0.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     None),
    ({}, None),
])
def test_cgroup_cpu_limit_reads_v2_and_v1(tmp_path: Path, files: dict[str, str],
                                          expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert worker.cgroup_cpu_limit(tmp_path) == expected


def test_usable_cores_obey_the_quota_not_the_host(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert worker.usable_cores(tmp_path) == 1  # half a core: one process, never zero
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert worker.usable_cores(tmp_path) == len(__import__("os").sched_getaffinity(0))


@pytest.mark.parametrize(("cuda", "gpus"), [
    ("0", ["0"]), ("1,3", ["1", "3"]), ("", []), ("-1", []),
    ("GPU-8f2e", ["GPU-8f2e"]),
])
def test_visible_gpus_honour_cuda_visible_devices(cuda: str, gpus: list[str]) -> None:
    assert worker.visible_gpus({"CUDA_VISIBLE_DEVICES": cuda}) == gpus


def test_plan_cpu_worker_uses_every_core_and_both_queues() -> None:
    [node] = worker.plan("auto", [], cores=8, host="h")
    assert (node.name, node.queues, node.concurrency) == ("cpu@h", "cpu,gpu", 8)
    assert node.env["OMP_NUM_THREADS"] == "1" and node.env["TF_NUM_INTRAOP_THREADS"] == "1"
    [node] = worker.plan("cpu", ["0"], cores=8, host="h", queues="cpu", concurrency=2)
    assert (node.queues, node.concurrency, node.env["OMP_NUM_THREADS"]) == ("cpu", 2, "4")


def test_plan_reads_queues_as_a_comma_list_and_refuses_none() -> None:
    [node] = worker.plan("cpu", [], cores=2, host="h", queues=" cpu , gpu,")
    assert node.queues == "cpu,gpu"
    for empty in ("", " , "):  # it became the role's own queues without a word
        with pytest.raises(ValueError, match="--queues names no queue"):
            worker.plan("cpu", [], cores=2, host="h", queues=empty)


def test_plan_gpu_worker_one_process_per_gpu_on_the_gpu_queue() -> None:
    nodes = worker.plan("auto", ["0", "1"], cores=8, host="h")
    assert [(n.name, n.queues, n.concurrency, n.env["CUDA_VISIBLE_DEVICES"]) for n in nodes] == [
        ("gpu0@h", "gpu", 1, "0"), ("gpu1@h", "gpu", 1, "1")]
    assert nodes[0].env["TF_NUM_INTRAOP_THREADS"] == "4"
    with pytest.raises(ValueError, match="no GPU is visible"):
        worker.plan("gpu", [], cores=8, host="h")


def test_explicit_thread_settings_win_over_the_plan() -> None:
    node = worker.Node("cpu@h", "cpu", 2, {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "3"})
    env = worker.node_env(node, {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.integration  # runs a command in a subprocess
def test_worker_start_dry_run_prints_the_celery_command(tmp_path: Path) -> None:
    out = run("workers/worker.py", "start", "--role", "gpu", "--dry-run", "--",
              "--max-memory-per-child", "4000000",
              env={"CUDA_VISIBLE_DEVICES": "0,1", **BROKER}, tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in plan] == ["0", "1"]
    command = plan[0]["command"]
    assert command[1:3] == ["-m", "crypto_ml.worker.launch"]
    assert command[command.index("--queues") + 1] == "gpu"
    assert command[-2:] == ["--max-memory-per-child", "4000000"]
    module = run("-m", "crypto_ml.worker", "start", "--role", "gpu", "--dry-run", "--",
                 "--max-memory-per-child", "4000000",
                 env={"CUDA_VISIBLE_DEVICES": "0,1", **BROKER}, tmp=tmp_path)
    assert module.returncode == 0 and json.loads(module.stdout) == plan, module.stderr


def test_containers_and_the_embedded_cluster_build_the_worker_command_alike() -> None:
    """One builder: the same launcher and options; the embedded cluster's workers run one
    pool process each and skip mingle (its workers all start at once, nothing to sync)."""
    [node] = worker.plan("cpu", [], cores=4, host="h")
    container = node.command("INFO", ["--max-tasks-per-child", "5"])
    assert container == worker.command("cpu@h", "cpu,gpu", 4, "INFO",
                                       ["--max-tasks-per-child", "5"])
    assert container[:3] == [sys.executable, "-m", "crypto_ml.worker.launch"]
    cluster = LocalCluster(workers=1, queues=("cpu", "gpu"), loglevel="INFO",
                           extra_worker_args=["--max-tasks-per-child", "5"])
    try:
        embedded = cluster.worker_command("cpu@h")
    finally:
        cluster.stop()  # nothing was started: removes its work folder
    assert embedded[:3] == container[:3]  # tests/hoarding.py slices the options after these
    assert embedded[embedded.index("--concurrency") + 1] == "1"
    assert sorted(set(embedded) ^ set(container)) == ["--without-mingle", "1", "4"]


@pytest.mark.integration  # runs a command in a subprocess
def test_gpu_role_without_a_gpu_fails_in_one_line(tmp_path: Path) -> None:
    out = run("workers/worker.py", "start", "--role", "gpu",
              env={"CUDA_VISIBLE_DEVICES": "", **BROKER}, tmp=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no GPU is visible" in out.stderr


@pytest.mark.integration  # runs a command in a subprocess
@pytest.mark.parametrize("command", [
    ("workers/worker.py", "start", "--concurrency", "1"),
    ("workers/worker.py", "start", "--dry-run"),  # a plan that could not run is no plan
    ("-m", "crypto_ml.worker.launch", "--concurrency", "1"),  # the node itself
])
def test_a_worker_without_a_broker_says_so_in_one_line(command: tuple[str, ...],
                                                       tmp_path: Path) -> None:
    """A traceback and exit 1 before (Celery's app made from an environment with no broker)."""
    out = run(*command, tmp=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no broker configured" in out.stderr, out.stderr


@pytest.mark.integration  # runs a command in a subprocess
def test_ping_without_a_started_worker_fails(tmp_path: Path) -> None:
    out = run("workers/worker.py", "ping", tmp=tmp_path)
    assert out.returncode == 1 and "no worker was started here" in out.stderr


@pytest.mark.integration  # runs a command in a subprocess
def test_ping_with_a_timeout_below_zero_is_a_usage_error(tmp_path: Path) -> None:
    out = run("workers/worker.py", "ping", "--timeout", "-1", tmp=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "argument --timeout: must be a number of seconds above 0" in out.stderr


@pytest.mark.integration  # runs a command in a subprocess
def test_job_refuses_to_run_without_a_broker(tmp_path: Path) -> None:
    out = run("manager/job.py", "send-tasks", "--coins", "bitcoin", tmp=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no broker configured" in out.stderr


@pytest.mark.integration  # runs a command in a subprocess
def test_job_gives_up_on_an_unreachable_broker(tmp_path: Path) -> None:
    url = f"redis://:pw@127.0.0.1:{free_port()}/0"
    out = run("manager/job.py", "--broker-wait", "1", "send-tasks", "--coins", "bitcoin",
              env={"CRYPTO_ML_BROKER_URL": url}, tmp=tmp_path)
    assert out.returncode == 2
    assert "an answer from the broker at redis://:**@127.0.0.1" in out.stderr
    assert "pw@" not in out.stderr  # the password is never printed


@pytest.mark.integration  # runs a command in a subprocess
def test_job_rejects_a_misspelt_option_even_with_help(tmp_path: Path) -> None:
    out = run("manager/job.py", "send-tasks", "--modle", "linear", "--help", tmp=tmp_path)
    assert out.returncode == 2 and "--modle" in out.stderr
    out = run("manager/job.py", "--help", tmp=tmp_path)
    assert out.returncode == 0 and "--results-dir" in out.stdout
