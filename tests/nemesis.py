"""A nemesis in the Jepsen manner: faults thrown together at random through one table run,
then a checker that proves nothing was lost, doubled or changed.

The cluster is real and as shipped for high availability: a Redis master, a replica and three
Sentinels, celery workers and the manager reaching it through ``sentinel://`` URLs. The run is
the user's command, ``send-tasks --input TABLE --output OUT.parquet``. Faults, on a schedule
drawn from a seed and written to the history file before the run starts:

- ``kill_worker``: SIGKILL a worker's whole process group; a new worker starts in its place
  (a restart policy's part);
- ``pause_worker``: SIGSTOP a worker for 10-40 s, then SIGCONT;
- ``partition_worker``: drop every packet between a worker and Redis for 10-60 s, then heal
  (:mod:`partition`: iptables on the worker's cgroup; the worker lives on and reconnects);
- ``failover``: SIGKILL the Redis master; the Sentinels promote the replica, and the old
  master comes back as the new master's replica (ready for the next failover);
- ``kill_manager``: SIGKILL the manager; the same command runs again (it resumes).

Faults overlap: a worker fault takes a worker that no other fault holds and that has served
since its own last fault (so each recovery is measured whole), and at least one worker is
always left alone; a Redis or manager fault waits until the previous one has recovered.

**Recovery** of a fault is the time from its end (the kill, the SIGCONT, the heal) until what it
hit serves again: the worker (or its replacement) finishes a task; for the manager and Redis,
the output grows after the rerun has started or the replica has been promoted. The checker
asks for every recovery to be at most :data:`RECOVERY_LIMIT`, every series of the table
exactly once in the output, each value equal to a fault-free run's, and no failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import redis
from partition import Partitions
from sentinel_support import MASTER_NAME, SentinelCluster

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("kill_worker", "pause_worker", "partition_worker", "failover", "kill_manager")
WORKER_FAULTS = {"kill_worker", "pause_worker", "partition_worker"}
HELD = {"pause_worker": (10.0, 40.0), "partition_worker": (10.0, 60.0)}
RECOVERY_LIMIT = 30.0
SERVED = re.compile(r"\] task \S+ done")
DONE_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/[^\]]*\] task \S+ done")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the run's start
    kind: str
    hold: float = 0.0  # pause and partition: how long


def schedule(count: int, seed: int, span: float,
             held: dict[str, tuple[float, float]] = HELD) -> list[Fault]:
    """``count`` faults at random times, every kind at least once, each over (a held one
    healed) within ``span`` seconds, so that what it hit can be seen to serve again."""
    rng = random.Random(seed)
    kinds = rng.sample(KINDS, len(KINDS)) + [rng.choice(KINDS) for _ in range(count - len(KINDS))]
    faults = []
    for kind in kinds[:count]:
        hold = round(rng.uniform(*held[kind]), 1) if kind in held else 0.0
        faults.append(Fault(round(rng.uniform(3.0, max(3.0, span - hold)), 1), kind, hold))
    return sorted(faults, key=lambda fault: fault.at)


class NemesisCluster(SentinelCluster):
    """A Sentinel cluster whose workers each run in a cgroup of their own, so any one of them
    can be cut off the network."""

    def __init__(self, partitions: Partitions, workers: int) -> None:
        super().__init__(workers=workers)
        self.partitions = partitions

    def worker_command(self, name: str) -> list[str]:
        return self.partitions.command(group_of(name), super().worker_command(name))

    def rejoin(self, port: int) -> None:
        """Start the node that served on ``port`` again, as the current master's replica."""
        name = next(n for n, p in self.ports.items() if p == port)
        self._data_node(name, "--replicaof", "127.0.0.1", str(self.master_port()))

    def replica_ready(self) -> bool:
        """The master has a replica in sync, as the Sentinels see it (a failover can happen)."""
        try:
            replicas = self.sentinels().discover_slaves(MASTER_NAME)
            info = self.client().info("replication")
        except redis.RedisError:  # mid-failover: not ready
            return False
        return bool(replicas) and int(info.get("connected_slaves", 0)) >= 1


def group_of(worker_name: str) -> str:
    return worker_name.split("@", 1)[0]


@dataclass
class History:
    """What happened, in order, as JSON lines in ``path``: the schedule first."""

    path: Path
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    events: list[dict[str, object]] = field(default_factory=list)

    def write(self, event: str, **fields: object) -> dict[str, object]:
        entry = {"t": round(time.monotonic() - self.started, 2), "event": event, **fields}
        self.events.append(entry)
        with self.path.open("a") as out:
            out.write(json.dumps(entry) + "\n")
        return entry


class Manager(threading.Thread):
    """Runs the user's command until it exits 0; runs it again whenever the nemesis killed it."""

    def __init__(self, args: Sequence[str], env: dict[str, str], history: History) -> None:
        super().__init__(daemon=True)
        self.args, self.env, self.history = list(args), env, history
        self.proc: subprocess.Popen[str] | None = None
        self.killed = 0  # kills the nemesis made
        self.runs = 0
        self.error: str | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            with self.lock:
                kills = self.killed
                self.proc = subprocess.Popen([sys.executable, "-m", "crypto_ml", *self.args],
                                             cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True)
                self.runs += 1
                self.history.write("manager_started", run=self.runs)
            _, err = self.proc.communicate()
            with self.lock:
                if self.proc.returncode == 0:
                    self.history.write("manager_done", runs=self.runs)
                    return
                if self.killed == kills:  # it failed by itself
                    self.error = f"exit {self.proc.returncode}: {err.strip()[-2000:]}"
                    return

    def kill(self) -> bool:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return False
            self.proc.send_signal(signal.SIGKILL)
            self.killed += 1
            return True


class Progress(threading.Thread):
    """Watches the chunks the manager writes (the ``.OUT.parts`` folder): when each appeared,
    by its file's time (exact, not the sampling's)."""

    def __init__(self, out: Path, history: History) -> None:
        super().__init__(daemon=True)
        self.parts = out.parent / f".{out.name}.parts"
        self.history = history
        self.written: dict[str, float] = {}  # chunk file -> history seconds
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            with contextlib.suppress(OSError):  # the folder goes when the run ends
                for path in self.parts.glob("chunk-*.arrow"):
                    if path.name not in self.written:
                        self.written[path.name] = path.stat().st_mtime - self.history.started_wall

    def grew_after(self, t: float) -> float | None:
        """When the output first grew after ``t`` (history seconds)."""
        return min((at for at in self.written.values() if at > t), default=None)


class Nemesis:
    """Throws ``faults`` at one run of ``args`` on ``cluster``; :meth:`run` returns the history."""

    def __init__(self, cluster: NemesisCluster, args: Sequence[str], env: dict[str, str],
                 out: Path, faults: list[Fault], history_path: Path) -> None:
        self.cluster, self.faults, self.out = cluster, faults, out
        self.history = History(history_path)
        for fault in faults:
            self.history.write("scheduled", **asdict(fault))
        self.history.started, self.history.started_wall = time.monotonic(), time.time()
        self.manager = Manager(args, env, self.history)
        self.progress = Progress(out, self.history)
        self.held: dict[int, tuple[str, float]] = {}  # worker index -> (fault, heal at)
        self.recovering: dict[int, int] = {}  # worker index -> its log's size at the heal
        self.cluster_fault_at: float | None = None  # the last Redis or manager fault
        self.promoting: int | None = None  # the killed master's port, until a replica is promoted
        self.injected: list[dict[str, object]] = []

    def now(self) -> float:
        return time.monotonic() - self.history.started

    def run(self, timeout: float) -> list[dict[str, object]]:
        self.manager.start()
        self.progress.start()
        pending = list(self.faults)
        while self.manager.is_alive():
            assert self.now() < timeout, f"the run did not end in {timeout:.0f} s"
            self._heal_due()
            self._promoted()
            if pending and pending[0].at <= self.now() and self._inject(pending[0]):
                pending.pop(0)
            self.manager.join(0.1)
        for index in list(self.held):  # the run ended first: heal what is still held
            self._heal(index)
        self.progress.stop.set()
        self.progress.join()
        self.history.write("run_ended", not_injected=len(pending))
        assert self.manager.error is None, f"the manager failed: {self.manager.error}"
        return self.history.events

    # --- faults --------------------------------------------------------------------------
    def _free_worker(self) -> int | None:
        """A live worker that no fault holds and that has served since its last one."""
        alive = [i for i, p in enumerate(self.cluster.workers) if p.poll() is None]
        free = [i for i in alive if i not in self.held and self._served_since_fault(i)]
        if len(free) < 2:  # leave one worker alone at least
            return None
        return random.choice(free)

    def _log(self, index: int) -> Path:
        return self.cluster.workdir / f"worker{index + 1}.log"

    def _served_since_fault(self, index: int) -> bool:
        """True once the worker has finished a task after its heal (or its start, for a
        replacement), so a fault's recovery is never cut short by the next fault."""
        offset = self.recovering.get(index)
        if offset is None:
            return True
        with self._log(index).open("rb") as log:
            log.seek(offset)
            if not SERVED.search(log.read().decode(errors="replace")):
                return False
        del self.recovering[index]
        return True

    def _inject(self, fault: Fault) -> bool:
        if fault.kind in WORKER_FAULTS:
            index = self._free_worker()
            if index is None:
                return False
            getattr(self, f"_{fault.kind}")(index, fault)
            return True
        if self.cluster_fault_at is not None and not self._cluster_recovered():
            return False
        if fault.kind == "failover" and not self.cluster.replica_ready():
            return False
        if fault.kind == "kill_manager" and not self.manager.kill():
            return False
        if fault.kind == "failover":
            self.promoting = self.cluster.kill_master()
        self.injected.append(self.history.write("inject", kind=fault.kind, at=fault.at))
        self.cluster_fault_at = self.now()
        return True

    def _cluster_recovered(self) -> bool:
        assert self.cluster_fault_at is not None
        return (self.promoting is None
                and self.progress.grew_after(self.cluster_fault_at) is not None)

    def _promoted(self) -> None:
        """Once a replica is promoted, the killed master comes back as its replica."""
        if self.promoting is None or self.cluster.master_port() in (0, self.promoting):
            return
        self.cluster.rejoin(self.promoting)
        self.history.write("promoted", kind="failover", killed_port=self.promoting,
                           master_port=self.cluster.master_port())
        self.promoting = None

    def _signal(self, index: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.cluster.workers[index].pid, sig)

    def _kill_worker(self, index: int, fault: Fault) -> None:
        self._signal(index, signal.SIGKILL)
        self.cluster.workers[index].wait(10)
        name = self.cluster.worker_names[index]
        replacement = self.cluster.add_worker()
        self.recovering[len(self.cluster.workers) - 1] = 0
        self.injected.append(self.history.write("inject", kind=fault.kind, at=fault.at,
                                                worker=name, replacement=replacement))

    def _pause_worker(self, index: int, fault: Fault) -> None:
        self._signal(index, signal.SIGSTOP)
        self._hold(index, fault)

    def _partition_worker(self, index: int, fault: Fault) -> None:
        self.cluster.partitions.cut(group_of(self.cluster.worker_names[index]))
        self._hold(index, fault)

    def _hold(self, index: int, fault: Fault) -> None:
        self.held[index] = (fault.kind, self.now() + fault.hold)
        self.injected.append(self.history.write(
            "inject", kind=fault.kind, at=fault.at, worker=self.cluster.worker_names[index],
            hold=fault.hold))

    def _heal_due(self) -> None:
        for index, (_, heal_at) in list(self.held.items()):
            if heal_at <= self.now():
                self._heal(index)

    def _heal(self, index: int) -> None:
        kind, _ = self.held.pop(index)
        name = self.cluster.worker_names[index]
        if kind == "pause_worker":
            self._signal(index, signal.SIGCONT)
        else:
            self.cluster.partitions.heal(group_of(name))
        self.recovering[index] = self._log(index).stat().st_size
        self.history.write("heal", kind=kind, worker=name)


# --- the checker ----------------------------------------------------------------------------
def done_times(cluster: NemesisCluster, history: History) -> dict[str, list[float]]:
    """Each worker's finished tasks, in history seconds, from its log."""
    return {name: sorted(wall - history.started_wall
                         for wall in served(cluster.workdir / f"worker{index + 1}.log"))
            for index, name in enumerate(cluster.worker_names)}


def served(log: Path) -> list[float]:
    """When the worker logging to ``log`` finished its tasks (epoch seconds)."""
    return [datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for m in map(DONE_LINE.match, log.read_text(errors="replace").splitlines()) if m]


def recoveries(events: list[dict[str, object]], served: dict[str, list[float]],
               progress: Progress) -> list[dict[str, object]]:
    """For each injected fault: its end, and how long until what it hit served again."""
    found = []
    heals = {(e["kind"], e["worker"]): e["t"] for e in events if e["event"] == "heal"}
    for event in (e for e in events if e["event"] == "inject"):
        kind, start = str(event["kind"]), float(event["t"])  # type: ignore[arg-type]
        if kind in ("pause_worker", "partition_worker"):
            end = float(heals.get((kind, event["worker"]), start))  # type: ignore[arg-type]
            back = next((t for t in served[str(event["worker"])] if t > end), None)
        elif kind == "kill_worker":
            end = start
            back = next((t for t in served[str(event["replacement"])] if t > end), None)
        else:  # the output grows again once the rerun is up, or a replica is promoted
            end = start
            back = progress.grew_after(next(
                float(e["t"]) for e in events  # type: ignore[arg-type]
                if float(e["t"]) >= start  # type: ignore[arg-type]
                and e["event"] == ("manager_started" if kind == "kill_manager" else "promoted")))
        found.append({"kind": kind, "worker": event.get("worker"), "end": end,
                      "recovery": None if back is None else round(back - end, 2)})
    return found


def check_output(out: Path, reference: Path, table_ids: set[str], horizon: int) -> list[str]:
    """What is wrong with ``out``: lost, doubled or changed series, failures."""
    problems = []
    got, want = pd.read_parquet(out), pd.read_parquet(reference)
    counts = got.groupby("unique_id").size()
    if set(counts.index) != table_ids:
        problems.append(f"{len(table_ids - set(counts.index))} series lost, "
                        f"{len(set(counts.index) - table_ids)} unknown")
    doubled = counts[counts != horizon]
    if len(doubled):
        problems.append(f"{len(doubled)} series with other than {horizon} rows, e.g. "
                        f"{doubled.index[0]}: {doubled.iloc[0]}")
    key = ["unique_id", "ds"]
    merged = got.merge(want, on=key, how="outer", suffixes=("", "_ref"), indicator=True)
    changed = merged[merged["_merge"] != "both"]
    for column in (c for c in want.columns if c not in key):
        differs = merged[column].ne(merged[f"{column}_ref"]) & merged["_merge"].eq("both")
        changed = pd.concat([changed, merged[differs]])
    if len(changed):
        problems.append(f"{changed['unique_id'].nunique()} series differ from the fault-free run")
    failures = out.with_name(out.name.removesuffix(".parquet") + ".failures.parquet")
    if failures.exists() and len(pd.read_parquet(failures)):
        problems.append(f"{len(pd.read_parquet(failures))} failures in {failures.name}")
    return problems
